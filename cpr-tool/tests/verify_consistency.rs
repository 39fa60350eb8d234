//! verify's consistency checks (fd manifest against RAM blocks and devices, vCPU
//! sections against the vCPU count) on images edited through `json`/`encode`.

mod common;

use common::{run_in, samples, scratch};
use serde_json::{json, Value};

/// Export `sample` to JSON, apply `edit`, encode, and run `verify --json` on it.
fn verify_edited(test: &str, sample: &str, edit: impl FnOnce(&mut Value)) -> (i32, Value) {
    let dir = scratch(test);
    let src = samples().join(sample);
    let r = run_in(&dir, &["json", src.to_str().unwrap(), "-o", "a.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a.json")).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(dir.join("b.json"), serde_json::to_string(&doc).unwrap()).unwrap();
    let r = run_in(&dir, &["encode", "b.json", "-o", "b.cpr"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_in(&dir, &["--json", "verify", "b.cpr"]);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    (r.code, serde_json::from_str(&r.stdout).unwrap())
}

/// The status and detail of check `name`.
fn check<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}"));
    (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

#[test]
fn memfd_ram_needs_its_fd() {
    let (code, v) = verify_edited("verify-no-ram-fd", "vm-0.1.0.cpr", |d| {
        d["fds"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "ram.pc.ram");
    });
    assert_eq!(code, 1);
    assert_eq!(v["ok"], false);
    assert_eq!(
        check(&v, "ram blocks"),
        ("error", "pc.ram: no memfd in the fd manifest")
    );
}

#[test]
fn memfd_size_must_match_the_block() {
    let (code, v) = verify_edited("verify-ram-size", "vm-0.1.0.cpr", |d| {
        d["fds"][0]["identity"]["size"] = json!(4096);
    });
    assert_eq!(code, 1);
    assert_eq!(
        check(&v, "ram blocks"),
        (
            "error",
            "pc.ram: fd ram.pc.ram is 4096 bytes, the block is 268435456"
        )
    );
}

#[test]
fn anonymous_ram_cannot_be_inherited() {
    let (code, v) = verify_edited("verify-anon", "vm-0.1.0.cpr", |d| {
        d["header"]["machine"]["ram_blocks"][0]["backing"] = json!("anonymous");
    });
    assert_eq!(code, 1);
    let (status, detail) = check(&v, "ram blocks");
    assert_eq!(status, "error");
    assert!(
        detail.contains("anonymous RAM cannot be inherited"),
        "{detail}"
    );
    assert!(
        detail.contains("fd ram.pc.ram is guest RAM but matches no RAM block"),
        "{detail}"
    );
}

#[test]
fn reboot_needs_ram_in_regions_and_no_fds() {
    let (code, v) = verify_edited("verify-reboot", "vm-0.1.0.cpr", |d| {
        d["header"]["mode"] = json!("reboot");
    });
    assert_eq!(code, 1);
    let (status, detail) = check(&v, "ram blocks");
    assert_eq!(status, "error");
    assert!(
        detail.contains("memfd RAM does not survive a reboot and has no region ram.pc.ram"),
        "{detail}"
    );
    let (status, detail) = check(&v, "fd manifest");
    assert_eq!(status, "error");
    assert!(
        detail.contains("2 descriptors listed, but none survives a host reboot"),
        "{detail}"
    );
}

#[test]
fn fd_numbers_are_unique_and_back_ends_owned() {
    let (code, v) = verify_edited("verify-fd-numbers", "vm-0.1.0.cpr", |d| {
        d["fds"][1]["fd"] = json!(10);
        d["fds"][1]["name"] = json!("serial9.pty");
    });
    assert_eq!(code, 1);
    assert_eq!(
        check(&v, "fd manifest"),
        (
            "error",
            "ram.pc.ram and serial9.pty share fd 10; serial9.pty: no device serial9, chardev \
             or VFIO object owns this fd"
        )
    );
}

#[test]
fn chardev_and_vfio_fds_follow_the_vmm_naming() {
    let (code, v) = verify_edited("verify-fd-names", "vm-0.1.0.cpr", |d| {
        let fd = d["fds"][1].clone();
        let named = |name: &str| {
            let mut f = fd.clone();
            f["name"] = json!(name);
            f
        };
        let fds = d["fds"].as_array_mut().unwrap();
        fds.truncate(1);
        // Accepted: a chardev's listener, and a group fd of the right kind.
        let mut listener = named("chardev.mon.listener");
        listener["kind"] = json!("listening_socket");
        listener["fd"] = json!(20);
        let mut group = named("vfio-group-7");
        group["kind"] = json!("vfio_group");
        group["fd"] = json!(21);
        // Refused: a role the vmm does not write, a wrong kind, an unassigned device.
        let mut role = named("chardev.mon.reader");
        role["fd"] = json!(22);
        let mut kind = named("chardev.mon.client");
        kind["kind"] = json!("pty");
        kind["fd"] = json!(23);
        let mut dev = named("vfio-device-nic9");
        dev["kind"] = json!("vfio_device");
        dev["fd"] = json!(24);
        let mut container = named("vfio-container");
        container["kind"] = json!("vfio_container");
        container["fd"] = json!(25);
        let mut nic = named("vfio-device-nic0");
        nic["kind"] = json!("vfio_device");
        nic["fd"] = json!(26);
        let mut irq = named("vfio-irq-nic0-msix3");
        irq["kind"] = json!("event_fd");
        irq["fd"] = json!(27);
        let mut stray = named("vfio-irq-nic9-intx");
        stray["kind"] = json!("event_fd");
        stray["fd"] = json!(28);
        fds.extend([listener, group, role, kind, dev, container, nic, irq, stray]);
        d["header"]["machine"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "nic0", "kind": "vfio-pci,host=0000:00:04.0"}));
    });
    assert_eq!(code, 1);
    assert_eq!(
        check(&v, "fd manifest"),
        (
            "error",
            "chardev.mon.reader: chardev mon has no fd role reader; chardev.mon.client: \
             chardev mon's client but its kind is pty; vfio-device-nic9: no device nic9 is assigned; \
             vfio-irq-nic9-intx: no assigned device owns this interrupt"
        )
    );
}

#[test]
fn ram_regions_lie_inside_their_block() {
    let (code, v) = verify_edited("verify-regions", "reboot-0.2.0.cpr", |d| {
        d["regions"][0]["name"] = json!("ram.pc.ram.fffff000");
    });
    assert_eq!(code, 1);
    let (status, detail) = check(&v, "ram blocks");
    assert_eq!(status, "error");
    assert!(detail.contains("region ram.pc.ram.fffff000"), "{detail}");
    assert!(detail.contains("ends past the block's"), "{detail}");
}

#[test]
fn cpu_sections_match_the_vcpu_count() {
    let (code, v) = verify_edited("verify-vcpus", "vm-0.1.0.cpr", |d| {
        d["sections"][0]["instance"] = json!("5");
    });
    assert_eq!(code, 1);
    assert_eq!(
        check(&v, "vcpus"),
        (
            "error",
            "cpu.regs/5: instance is not a vCPU index below 2; cpu.regs: no instance for vCPU 0"
        )
    );
}

#[test]
fn a_device_without_state_is_a_warning() {
    let (code, v) = verify_edited("verify-device", "vm-0.1.0.cpr", |d| {
        d["header"]["machine"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": "rtc0", "kind": "mc146818"}));
    });
    assert_eq!(code, 0, "a warning does not fail verify");
    assert_eq!(v["ok"], true);
    assert_eq!(
        check(&v, "devices"),
        (
            "warning",
            "device rtc0 has no section: its state is not saved"
        )
    );
}

#[test]
fn unknown_target_is_an_error() {
    let r = common::run(&[
        "verify",
        "vm-0.1.0.cpr",
        "--target",
        "9.9.9",
        "--schemas-dir",
        "../../schemas/samples",
    ]);
    common::assert_error(&r, "unknown target");
    assert_eq!(
        r.stderr,
        "cpr-tool: No stored schema for version 9.9.9 in ../../schemas/samples (available: 0.1.0, 0.2.0)\n"
    );
    let r = common::run(&[
        "verify",
        "vm-0.1.0.cpr",
        "--target",
        "../0.1.0",
        "--schemas-dir",
        "../../schemas/samples",
    ]);
    common::assert_error(&r, "target outside the directory");
}

#[test]
fn target_schema_may_come_from_another_image() {
    let r = common::run(&[
        "--json",
        "verify",
        "vm-0.2.0.cpr",
        "--schema",
        "vm-0.1.0.cpr",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["target"]["reader"], "the writer of vm-0.1.0.cpr");
    assert_eq!(v["target"]["compatible"], false);
    assert_eq!(v["target"]["findings"][0]["section"], "cpu.xsave");
    assert_eq!(
        v["target"]["findings"][0]["kind"]["unknown_section"]["required"],
        true
    );
}

#[test]
fn a_missing_schema_file_is_not_an_unknown_version() {
    let r = common::run(&["schema", "check", "old.json", "vm-0.2.0.cpr"]);
    common::assert_error(&r, "missing schema file");
    assert!(
        r.stderr.starts_with("cpr-tool: Cannot read old.json: "),
        "{}",
        r.stderr
    );
}

#[test]
fn payloads_are_checked_against_their_schema() {
    let (code, v) = verify_edited("verify-payload", "vm-0.1.0.cpr", |d| {
        d["sections"][0]["payload"]["rip"] = json!("not a number");
    });
    assert_eq!(code, 1);
    let (status, detail) = check(&v, "payloads");
    assert_eq!(status, "error");
    assert!(detail.contains("section cpu.regs[0]"), "{detail}");
    assert!(detail.contains("rip"), "{detail}");
}
