#!/bin/bash
# Builds the lab host kernel with iommufd: Debian's kernel packages all have
# "# CONFIG_IOMMUFD is not set", so this builds one from Debian's own kernel source package
# (linux-source-7.3 from trixie-backports) with tests/lab/kernel.config applied on top of
# `make allnoconfig`: everything the lab needs built in (no modules), nothing else.
#
# Cached: the bzImage is kept as OUT/bzImage-<key>, key = hash of the fragment, this script
# and the source package version; a second run with the same key only prints its path.
# The first run downloads ~170 MB and compiles for ~15-20 min on 2 shared cores.
#
# Usage: tests/lab/build-kernel.sh OUT     prints the bzImage path on stdout (last line)
# Env: LAB_KERNEL_SOURCE  source package (default linux-source-7.3)
#      LAB_KERNEL_SUITE   Debian suite that has it (default trixie-backports)
#      LAB_KERNEL_WORK    where the source is unpacked and built (default OUT/kbuild; the
#                         build tree is kept so a changed fragment rebuilds incrementally)
#      LAB_KERNEL_JOBS    make -j (default: number of CPUs)
# Needs (Debian): apt, dpkg-deb, xz-utils, make, gcc, flex, bison, bc, libelf-dev,
# libssl-dev, cpio, debian-archive-keyring. Exit status 2 when something is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build-kernel.sh OUT}
FRAG=$HERE/kernel.config
PKG=${LAB_KERNEL_SOURCE:-linux-source-7.3}
SUITE=${LAB_KERNEL_SUITE:-trixie-backports}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
KW=${LAB_KERNEL_WORK:-$OUT/kbuild}
mkdir -p "$KW"

missing() { echo "build-kernel.sh: $*" >&2; exit 2; }
for tool in apt-get dpkg-deb xz make gcc flex bison bc sha256sum; do
    command -v "$tool" >/dev/null || missing "$tool not found (see tests/lab/REQUIREMENTS)"
done
[ -f /usr/include/libelf.h ] || missing "libelf-dev is not installed (objtool needs it)"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || missing "$KEYRING missing: install debian-archive-keyring"

# A private apt state for $SUITE, so the host's sources stay as they are.
A=$KW/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $SUITE main" > "$A/sources.list"
APTO=(-o "Dir::Etc::sourcelist=$A/sources.list" -o Dir::Etc::sourceparts=- \
      -o "Dir::State::lists=$A/lists" -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1)
ver() { apt-cache "${APTO[@]}" show "$PKG" 2>/dev/null | awk '/^Version:/ {print $2; exit}' || true; }
VER=$(ver)
if [ -z "$VER" ]; then
    apt-get "${APTO[@]}" update >&2 || missing "apt-get update for $SUITE failed"
    VER=$(ver)
fi
# Backports keep only the newest kernel series: when the default one has gone, follow the
# suite's linux-source metapackage (the fragment only names options, so it carries over).
if [ -z "$VER" ] && [ -z "${LAB_KERNEL_SOURCE:-}" ]; then
    NEWER=$(apt-cache "${APTO[@]}" depends linux-source 2>/dev/null \
        | awk '/Depends: linux-source-[0-9]/ {print $2; exit}' || true)
    if [ -n "$NEWER" ]; then
        echo "build-kernel.sh: $SUITE no longer has $PKG; using $NEWER" >&2
        PKG=$NEWER
        VER=$(ver)
    fi
fi
[ -n "$VER" ] || missing "$SUITE has no package $PKG"

KEY=$( (cat "$FRAG" "$0"; echo "$PKG $VER") | sha256sum | cut -c1-16)
IMAGE=$OUT/bzImage-$KEY
if [ -f "$IMAGE" ]; then
    echo "build-kernel.sh: cached $IMAGE ($PKG $VER)" >&2
    echo "$IMAGE"
    exit 0
fi

SRC=$KW/${PKG}
if [ ! -f "$SRC/Makefile" ] || [ "$(cat "$KW/source-version" 2>/dev/null)" != "$VER" ]; then
    DEB=$(ls "$KW"/"${PKG}"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$DEB" ] || [ "$(cat "$KW/source-version" 2>/dev/null)" != "$VER" ]; then
        rm -f "$KW"/"${PKG}"_*.deb
        (cd "$KW" && apt-get "${APTO[@]}" download "$PKG" >&2) || missing "apt-get download $PKG failed"
        DEB=$(ls "$KW"/"${PKG}"_*.deb | head -n 1)
    fi
    echo "build-kernel.sh: unpacking $DEB" >&2
    rm -rf "$SRC" "$KW/out"
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO "./usr/src/$PKG.tar.xz" | tar -xJ -C "$KW"
    echo "$VER" > "$KW/source-version"
fi

B=$KW/out
mkdir -p "$B"
make -s -C "$SRC" O="$B" KCONFIG_ALLCONFIG="$FRAG" allnoconfig >&2
# Kconfig drops a symbol whose dependencies are not met without a word: check each line.
bad=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    k=${line%%=*}; v=${line#*=}
    if [ "$v" = n ]; then
        grep -q "^$k=" "$B/.config" && { echo "build-kernel.sh: $k is set, fragment wants n" >&2; bad=1; }
    else
        grep -qxF "$line" "$B/.config" ||
            { echo "build-kernel.sh: $line did not survive Kconfig: $(grep -E "^$k=|^# $k is not set" "$B/.config")" >&2; bad=1; }
    fi
done < "$FRAG"
[ "$bad" = 0 ] || { echo "build-kernel.sh: fix $FRAG" >&2; exit 1; }

JOBS=${LAB_KERNEL_JOBS:-$(nproc)}
echo "build-kernel.sh: building $PKG $VER with -j$JOBS (first time: 15-20 min on 2 cores)" >&2
t0=$(date +%s)
nice make -s -C "$SRC" O="$B" -j"$JOBS" bzImage >&2
echo "build-kernel.sh: built in $(( $(date +%s) - t0 )) s" >&2
cp "$B/arch/x86/boot/bzImage" "$IMAGE.tmp"
mv "$IMAGE.tmp" "$IMAGE"
echo "$IMAGE"
