//! Cross-version tests: the current vmm against what released versions left behind.
//!
//! - Every release in `fixtures/releases.toml` has its schema and fixture images.
//! - The current vmm loads every self-contained fixture (reboot mode, RAM in the image) of
//!   every release, and the guest carries on where it was saved (counters continue by one,
//!   memcheck finds its pattern, a suspended guest stays suspended until system_wakeup);
//!   the counter fixtures also through `vmm -incoming FILE`.
//!   A restart-mode fixture cannot be loaded by a fresh process (its RAM was in memfds that
//!   only a cpr-exec hands over): the current vmm must refuse it with its reason, and the
//!   compatibility matrix (compat_matrix.rs) answers whether its state would load; the real
//!   restart-mode path across versions is the live update below.
//! - A live update from the previous release's binary (the newest two releases, each built
//!   from its recorded commit, cached in target/releases/) to the current one, guest running
//!   throughout; and back when the old binary can read the new state (the schemas,
//!   less device sections this machine's image does not hold), or the exact refusal.
//!
//! The same load checks also run on fixtures the current binary writes now, so they (and
//! scripts/release.sh's generator) are exercised before the first release exists.

use std::path::{Path, PathBuf};

use cpr_format::{compat, Schema};
use cpr_tests::release::{
    all_fixture_specs, assert_resumes, dump_schema, fixture_set, guest_args, images_dir,
    make_fixture, numbered, release_vmm, releases, stored_schema_json, Fixture, GuestRun,
    GuestState, Release,
};
use cpr_tests::{vmm_bin, Scratch};

/// Loads fixture `f` (in `dir`) into a new current vmm and checks the guest resumes.
fn load_fixture(dir: &Path, f: &Fixture, label: &str) {
    let scratch = Scratch::new(&format!("xv-{label}-{}", f.name));
    let img = dir.join(f.image_file());
    let before = std::fs::read_to_string(dir.join(f.serial_file()))
        .unwrap_or_else(|e| panic!("{label}/{}: serial output: {e}", f.name));
    let mut g = GuestRun::start(
        &vmm_bin(),
        &scratch,
        guest_args(&scratch, &f.guest, &f.machine),
        true,
    );
    let reply = g.hmp.cmd(&format!("cpr-load {}", img.display()));
    if !f.self_contained {
        assert!(
            // Its RAM fds are gone: refused, naming the mode (the guest never starts).
            reply.starts_with("Error: ") && reply.contains("restart mode"),
            "{label}/{}: a fresh vmm must refuse a restart-mode image: {reply:?}",
            f.name
        );
        assert_eq!(g.hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
        g.quit();
        return;
    }
    assert!(
        reply.starts_with("reboot mode: loaded"),
        "{label}/{}: cpr-load answered {reply:?}",
        f.name
    );
    if f.state == GuestState::Running {
        assert_eq!(
            g.hmp.cmd("info status"),
            "VM status: running\n",
            "{label}/{}",
            f.name
        );
    }
    assert_resumes(&mut g, &f.guest, f.state, &before);
    if f.guest == "suspend" {
        // After "resumed" the guest powers off (S5): the vmm ends by itself.
        let GuestRun { vmm, .. } = g;
        let (status, _, stderr) = vmm.wait();
        assert_eq!(status.code(), Some(0), "{label}/{}: {stderr}", f.name);
    } else {
        g.quit();
    }
    if f.guest == "counter" {
        // The same image through `vmm -incoming FILE` (load at start-up, no monitor step).
        let mut args = guest_args(&scratch, &f.guest, &f.machine);
        args.extend(["-incoming".to_string(), img.display().to_string()]);
        let mut g = GuestRun::start(&vmm_bin(), &scratch, args, false);
        assert_eq!(
            g.hmp.cmd("info status"),
            "VM status: running\n",
            "{label}/{} via -incoming",
            f.name
        );
        assert_resumes(&mut g, &f.guest, f.state, &before);
        g.quit();
    }
}

#[test]
fn every_listed_release_has_its_schema_and_fixtures() {
    let releases = releases();
    println!("releases in fixtures/releases.toml: {}", releases.len());
    for r in &releases {
        let schema: Schema = serde_json::from_str(&stored_schema_json(&r.version))
            .unwrap_or_else(|e| panic!("fixtures/schemas/{}.json: {e}", r.version));
        assert!(!schema.sections.is_empty(), "{}: empty schema", r.version);
        let set = fixture_set(&r.version);
        // The release stored what it writes: each image's embedded sections are in it.
        for f in &set.fixtures {
            let path = images_dir(&r.version).join(f.image_file());
            let img = cpr_format::Image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for s in &img.schema().sections {
                assert_eq!(
                    schema.get(&s.name),
                    Some(s),
                    "{}: section {} differs from fixtures/schemas/{}.json",
                    path.display(),
                    s.name,
                    r.version
                );
            }
        }
        // Both modes, 1 and 4 vCPUs, a suspended guest, every fixture guest.
        let want: Vec<String> = all_fixture_specs().into_iter().map(|f| f.name).collect();
        for name in &want {
            assert!(
                set.fixtures.iter().any(|f| &f.name == name),
                "release {} lacks fixture {name}",
                r.version
            );
        }
    }
}

#[test]
fn current_vmm_loads_every_released_fixture() {
    let releases = releases();
    if releases.is_empty() {
        println!("no release in fixtures/releases.toml yet: nothing released to load");
    }
    for r in &releases {
        let set = fixture_set(&r.version);
        for f in &set.fixtures {
            println!("loading {}/{}", r.version, f.name);
            load_fixture(&images_dir(&r.version), f, &r.version);
        }
    }
}

/// What scripts/release.sh will store, made by the current binary and loaded by it: the
/// generator and the load checks work before a release exists.
#[test]
fn current_vmm_loads_fixtures_it_writes_now() {
    let dir = Scratch::new("xv-fresh");
    for f in all_fixture_specs() {
        make_fixture(&vmm_bin(), &dir.0, &f)
            .unwrap_or_else(|e| panic!("making fixture {}: {e}", f.name));
        load_fixture(&dir.0, &f, "current");
    }
}

fn exe_of(g: &GuestRun) -> PathBuf {
    std::fs::read_link(format!("/proc/{}/exe", g.vmm.child.id())).expect("read /proc/PID/exe")
}

/// cpr-save restart, cpr-exec `to` with the same arguments and -S, cpr-load; the guest
/// (counter) keeps counting, now under `to`.
fn live_update(g: &mut GuestRun, img: &str, to: &Path) {
    let last = *numbered(&g.out.seen, "count ").last().expect("counted");
    assert_eq!(g.hmp.cmd(&format!("cpr-save {img} restart")), "");
    let exec = format!("cpr-exec {} -S {}", to.display(), g.args.join(" "));
    assert_eq!(g.hmp.cmd(&exec), "", "cpr-exec {}", to.display());
    assert_eq!(
        exe_of(g),
        std::fs::canonicalize(to).expect("canonical path"),
        "the process runs the new binary"
    );
    assert_eq!(g.hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
    assert_eq!(g.hmp.cmd(&format!("cpr-load {img}")), "");
    assert_eq!(g.hmp.cmd("info status"), "VM status: running\n");
    g.out.wait_for(&format!("count {}\n", last + 3));
    let all = numbered(&g.out.seen, "count ");
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "counter broken: {:?}", g.out.seen);
    }
}

/// The version a binary reports (`vmm version X` on its first line).
fn version_of(bin: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("-version")
        .output()
        .expect("run vmm -version");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("vmm version "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{} -version: {out:?}", bin.display()))
}

/// The newest two releases: the newest is the one the current tree most often updates
/// from; right after a release is cut, the tree *is* the newest one, and the one before
/// it is the real previous version (4.2.0 → 4.2.1 in the seed's example). Each costs one
/// cached build.
#[test]
fn live_update_from_the_previous_releases_and_back() {
    let releases = releases();
    if releases.is_empty() {
        println!("no release in fixtures/releases.toml yet: no previous binary to update from");
    }
    for prev in releases.iter().rev().take(2) {
        live_update_from(prev);
    }
}

fn live_update_from(prev: &Release) {
    let old = release_vmm(prev);
    let new = vmm_bin();
    assert_eq!(version_of(&old), prev.version, "{}", old.display());
    let old_schema: Schema =
        serde_json::from_str(&stored_schema_json(&prev.version)).expect("stored schema parses");
    let new_schema: Schema =
        serde_json::from_str(&dump_schema(&new)).expect("current schema parses");
    assert_eq!(
        serde_json::from_str::<Schema>(&dump_schema(&old)).expect("old binary's schema"),
        old_schema,
        "the binary built from {} does not dump the schema stored for {}",
        prev.commit,
        prev.version
    );
    let (upgrade, whole_rollback) = compat::check_both(&old_schema, &new_schema);
    assert!(
        upgrade.is_compatible(),
        "the current vmm cannot read {}'s state: {:?}",
        prev.version,
        upgrade.errors().map(|f| f.to_string()).collect::<Vec<_>>()
    );
    // A required section the old binary does not know refuses only images that hold it
    // (device sections are written only for machines with the device): judge the rollback
    // by the sections an image of this very machine holds.
    let written = Scratch::new(&format!("xv-sections-{}", prev.version));
    let spec = all_fixture_specs()
        .into_iter()
        .find(|f| f.name == "restart-counter-1cpu")
        .expect("restart-counter-1cpu is a fixture spec");
    make_fixture(&new, &written.0, &spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
    let held = cpr_format::Image::open(written.0.join(spec.image_file()))
        .expect("a fixture the current vmm wrote opens")
        .schema()
        .clone();
    let rollback: Vec<compat::Finding> = whole_rollback
        .errors()
        .filter(|f| {
            !matches!(
                f.kind,
                compat::FindingKind::UnknownSection { required: true }
            ) || held.get(&f.section).is_some()
        })
        .cloned()
        .collect();
    println!(
        "live update {} -> current ({}), rollback {}",
        prev.version,
        version_of(&new),
        if rollback.is_empty() {
            "compatible"
        } else {
            "refused"
        }
    );

    let dir = Scratch::new(&format!("xv-live-{}", prev.version));
    let img = dir.str("vm.cpr");
    let machine: Vec<String> = ["-m", "32M", "-machine", "memfd-alloc=on"]
        .map(String::from)
        .to_vec();
    let mut g = GuestRun::start(&old, &dir, guest_args(&dir, "counter", &machine), false);
    assert_eq!(g.hmp.cmd("info version"), format!("{}\n", prev.version));
    g.out.wait_for("count 3\n");
    live_update(&mut g, &img, &new);
    assert_eq!(g.hmp.cmd("info version"), format!("{}\n", version_of(&new)));

    if rollback.is_empty() {
        // The one-command form into a release that predates it: the old binary answers
        // cpr-exec before loading and waits; cpr-load completes the update (LIVE-UPDATE.md).
        let last = *numbered(&g.out.seen, "count ").last().expect("counted");
        let exec = format!(
            "cpr-exec {} {} -incoming {img}",
            old.display(),
            g.args.join(" ")
        );
        assert_eq!(g.hmp.cmd(&exec), "");
        assert_eq!(g.hmp.cmd("info status"), "VM status: paused (prelaunch)\n");
        assert_eq!(g.hmp.cmd(&format!("cpr-load {img}")), "");
        assert_eq!(g.hmp.cmd("info status"), "VM status: running\n");
        assert_eq!(g.hmp.cmd("info version"), format!("{}\n", prev.version));
        g.out.wait_for(&format!("count {}\n", last + 3));
        // And the classic rollback, after going forward again.
        live_update(&mut g, &img, &new);
        live_update(&mut g, &img, &old);
        assert_eq!(g.hmp.cmd("info version"), format!("{}\n", prev.version));
    } else {
        // The old binary must refuse the new state, naming every reason, and keep the
        // guest's RAM for a corrected load.
        let last = *numbered(&g.out.seen, "count ").last().expect("counted");
        assert_eq!(g.hmp.cmd(&format!("cpr-save {img} restart")), "");
        let exec = format!("cpr-exec {} -S {}", old.display(), g.args.join(" "));
        assert_eq!(g.hmp.cmd(&exec), "");
        let reply = g.hmp.cmd(&format!("cpr-load {img}"));
        assert!(reply.contains("is incompatible with this vmm"), "{reply}");
        for e in &rollback {
            let e = e.to_string();
            if img_has_section(&img, &e) {
                assert!(reply.contains(&e), "refusal lacks {e:?}: {reply}");
            }
        }
        assert!(!numbered(&g.out.seen, "count ").contains(&(last + 2)));
    }
    g.quit();
}

/// Whether a finding line is about a section the image holds (hand-over sections are not in
/// the image, so cpr-load does not report them).
fn img_has_section(img: &str, finding: &str) -> bool {
    cpr_format::Image::open(img).is_ok_and(|i| {
        i.schema().sections.iter().any(|s| {
            finding.contains(&format!("section {} ", s.name))
                || finding.contains(&format!("section {}:", s.name))
        })
    })
}

/// A corrupted self-contained fixture (bit flips in the header, metadata, RAM regions and
/// trailer; truncations) is refused by `cpr-load` with one error line, the vmm stays alive
/// in prelaunch, and the intact image still loads afterwards in the same process.
#[test]
fn current_vmm_refuses_corrupted_fixtures_and_loads_the_intact_one() {
    let releases = releases();
    let dir = Scratch::new("xv-corrupt");
    // The newest release's fixture if there is one, else one written now.
    let (src_dir, f) = match releases.last() {
        Some(r) => {
            let set = fixture_set(&r.version);
            let f = set
                .fixtures
                .into_iter()
                .find(|f| f.name == "reboot-counter-1cpu")
                .expect("release has reboot-counter-1cpu");
            (images_dir(&r.version), f)
        }
        None => {
            let f = all_fixture_specs()
                .into_iter()
                .find(|f| f.name == "reboot-counter-1cpu")
                .expect("spec");
            make_fixture(&vmm_bin(), &dir.0, &f).expect("make fixture");
            (dir.0.clone(), f)
        }
    };
    let good = std::fs::read(src_dir.join(f.image_file())).expect("read fixture");
    let n = good.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for off in [
        0,
        9,
        20,
        40,
        200,
        n / 8,
        n / 3,
        n / 2,
        n - 4096,
        n - 8,
        n - 1,
    ] {
        let mut b = good.clone();
        b[off] ^= 0x10;
        cases.push((format!("byte {off} flipped"), b));
    }
    for len in [0, 10, 100, n / 2, n - 1] {
        cases.push((format!("truncated to {len}"), good[..len].to_vec()));
    }
    let bad = dir.path("bad.cpr");
    let mut g = GuestRun::start(
        &vmm_bin(),
        &dir,
        guest_args(&dir, &f.guest, &f.machine),
        true,
    );
    for (what, bytes) in &cases {
        std::fs::write(&bad, bytes).expect("write corrupted copy");
        let reply = g.hmp.cmd(&format!("cpr-load {}", bad.display()));
        assert!(
            reply.starts_with("Error: ") && !reply.contains("panicked"),
            "{what}: cpr-load answered {reply:?}"
        );
        assert_eq!(
            g.hmp.cmd("info status"),
            "VM status: paused (prelaunch)\n",
            "{what}"
        );
    }
    let good_path = dir.path("good.cpr");
    std::fs::write(&good_path, &good).expect("write intact copy");
    let reply = g.hmp.cmd(&format!("cpr-load {}", good_path.display()));
    assert!(reply.starts_with("reboot mode: loaded"), "{reply}");
    let before = std::fs::read_to_string(src_dir.join(f.serial_file())).expect("serial");
    assert_resumes(&mut g, &f.guest, f.state, &before);
    g.quit();
}
