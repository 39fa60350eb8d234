#!/usr/bin/env bash
# Cut a release: scripts/release.sh VERSION   (docs/RELEASING.md explains each step)
#
#  1. the tree must be clean, VERSION new and newer than every recorded release;
#  2. version bump in Cargo.toml (workspace.package.version), committed if it changed;
#  3. release build of vmm, cpr-tool and make-fixtures from that commit;
#  4. fixtures/schemas/VERSION.json from `vmm --dump-schema`;
#  5. fixtures/images/VERSION/ from make-fixtures (every test guest, restart and reboot
#     modes, 1 and 4 vCPUs, a suspended guest), each image checked by cpr-tool verify;
#  6. fixtures/releases.toml gains VERSION = the commit of step 2;
#  7. the release's insta snapshots (compatibility matrix, cpr-tool output on the new
#     fixtures) are written, then the cross-version tests run without updating anything;
#  8. one commit with all of it, and an annotated tag vVERSION.
#
# Environment: RELEASE_SKIP_TESTS=1 releases even if the tests of step 7 fail (snapshots
# are still written; say why in the release notes); RELEASE_NO_TAG=1 skips the tag.
set -euo pipefail

die() { echo "release.sh: $*" >&2; exit 1; }
step() { echo "release.sh: == $*" >&2; }

[ $# -eq 1 ] || die "usage: scripts/release.sh VERSION (e.g. 0.1.0)"
VERSION=$1
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$VERSION is not MAJOR.MINOR.PATCH"

cd "$(git rev-parse --show-toplevel)"
RELEASES=fixtures/releases.toml
TAG="v$VERSION"

step "1. checks"
[ -z "$(git status --porcelain)" ] || die "the tree is not clean (commit or stash first):
$(git status --short)"
! git rev-parse -q --verify "refs/tags/$TAG" >/dev/null || die "tag $TAG exists already"
[ ! -e "fixtures/images/$VERSION" ] || die "fixtures/images/$VERSION exists already"
[ ! -e "fixtures/schemas/$VERSION.json" ] || die "fixtures/schemas/$VERSION.json exists already"
if [ -f "$RELEASES" ]; then
    # Every recorded version must be older than the new one.
    while read -r v; do
        newest=$(printf '%s\n%s\n' "$v" "$VERSION" | sort -V | tail -1)
        [ "$v" != "$VERSION" ] && [ "$newest" = "$VERSION" ] \
            || die "$VERSION is not newer than released $v"
    done < <(sed -n 's/^version *= *"\(.*\)"/\1/p' "$RELEASES")
fi

step "2. version $VERSION in Cargo.toml"
current=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$current" ] || die "no version in [workspace.package] of Cargo.toml"
if [ "$current" != "$VERSION" ]; then
    sed -i "/^\[workspace.package\]/,/^\[/s/^version *= *\".*\"/version = \"$VERSION\"/" Cargo.toml
    cargo metadata --format-version 1 >/dev/null   # refreshes Cargo.lock's own versions
    git add Cargo.toml Cargo.lock
    git commit -q -m "release $VERSION: version bump"
fi
COMMIT=$(git rev-parse HEAD)

step "3. release build of $COMMIT"
cargo build --release --locked -p vmm --bin vmm -p cpr-tool --bin cpr-tool -p cpr-tests --bin make-fixtures
VMM=target/release/vmm
TOOL=target/release/cpr-tool
reported=$("$VMM" -version | sed -n 's/^vmm version //p')
[ "$reported" = "$VERSION" ] || die "the built vmm reports version '$reported', not $VERSION"

step "4. fixtures/schemas/$VERSION.json"
"$VMM" --dump-schema > "fixtures/schemas/$VERSION.json"

step "5. fixtures/images/$VERSION/"
target/release/make-fixtures --vmm "$VMM" "fixtures/images/$VERSION"
# Exit 2 (unreadable, damaged) stops the release; exit 1 (a consistency check or the
# compatibility verdict failed) is reported loudly and recorded in the release commit.
VERIFY_NOTES=""
for img in fixtures/images/"$VERSION"/*.cpr; do
    rc=0
    "$TOOL" verify --schemas-dir fixtures/schemas --target "$VERSION" "$img" >/tmp/release-verify.$$ || rc=$?
    case $rc in
        0) ;;
        1) echo "release.sh: WARNING: cpr-tool verify --target $VERSION $img found problems:" >&2
           grep -E 'FAILED|warning' /tmp/release-verify.$$ >&2 || true
           VERIFY_NOTES+="cpr-tool verify failed on $(basename "$img")"$'\n' ;;
        *) rm -f /tmp/release-verify.$$; die "cpr-tool verify --target $VERSION $img: exit $rc" ;;
    esac
done
rm -f /tmp/release-verify.$$

step "6. $RELEASES"
if [ ! -f "$RELEASES" ]; then
    cat > "$RELEASES" <<'HEAD'
# Every released version of vmm, oldest first, and the commit its binary is built from.
# Written by scripts/release.sh (docs/RELEASING.md); the cross-version tests build a past
# release from its commit and check fixtures/images/VERSION/ and fixtures/schemas/VERSION.json.
HEAD
fi
cat >> "$RELEASES" <<ENTRY

[[release]]
version = "$VERSION"
commit = "$COMMIT"
date = "$(date -u +%F)"
ENTRY

step "7. snapshots and cross-version tests"
RELEASE_TESTS=(--test compat_matrix --test cross_version --test fixture_tool)
# First run: write the new snapshots (snapshot mismatches pass, any other assertion fails).
if ! INSTA_UPDATE=always INSTA_FORCE_PASS=1 cargo test -q -p cpr-tests "${RELEASE_TESTS[@]}"; then
    [ "${RELEASE_SKIP_TESTS:-0}" = 1 ] || die "the release tests fail (above); nothing committed.
Clean up with: git checkout -- . && git clean -fd fixtures tests/tests/snapshots"
    echo "release.sh: WARNING: release tests failed; RELEASE_SKIP_TESTS=1 goes on" >&2
fi
# Second run: nothing may change any more.
if [ "${RELEASE_SKIP_TESTS:-0}" != 1 ]; then
    INSTA_UPDATE=no cargo test -q -p cpr-tests "${RELEASE_TESTS[@]}" \
        || die "the release tests fail on the second run; nothing committed"
fi

step "8. commit and tag"
git add "$RELEASES" "fixtures/schemas/$VERSION.json" "fixtures/images/$VERSION" tests/tests/snapshots
git commit -q -m "release $VERSION: schema, fixture images, compatibility matrix

Built from $COMMIT by scripts/release.sh.
${VERIFY_NOTES:+
cpr-tool verify findings (see the fixture_tool snapshots):
$VERIFY_NOTES}"
if [ "${RELEASE_NO_TAG:-0}" != 1 ]; then
    git tag -a "$TAG" -m "vmm $VERSION"
fi
echo "release.sh: released $VERSION (binary from $COMMIT, tag $TAG on $(git rev-parse --short HEAD))" >&2
