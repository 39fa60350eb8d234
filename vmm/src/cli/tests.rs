use super::*;

fn kernel() -> String {
    // Any readable file stands in for the kernel at parse time.
    env!("CARGO_MANIFEST_PATH").to_string()
}

fn parse(args: &[&str]) -> Result<Action, CliError> {
    parse_args(args.iter().map(|s| s.to_string()))
}

fn run(args: &[&str]) -> VmmConfig {
    let k = kernel();
    let mut v = vec!["-kernel", k.as_str()];
    v.extend_from_slice(args);
    match parse(&v) {
        Ok(Action::Run(c)) => *c,
        other => panic!("unexpected {other:?}"),
    }
}

fn error(args: &[&str]) -> String {
    let k = kernel();
    let mut v = vec!["-kernel", k.as_str()];
    v.extend_from_slice(args);
    match parse(&v) {
        Err(e) => e.0,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn defaults_and_basic_options() {
    let c = run(&[
        "-m",
        "1G",
        "-smp",
        "2",
        "-name",
        "vm1",
        "-append",
        "console=ttyS0",
        "-S",
    ]);
    assert_eq!(c.mem_size, 1 << 30);
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.name.as_deref(), Some("vm1"));
    assert!(c.start_paused);
    assert_eq!(c.ram, RamSpec::Anonymous);
    // No -serial: the UART talks on stdio.
    assert_eq!(c.serial.as_deref(), Some("serial0"));
    let c = run(&["-m", "512"]);
    assert_eq!(c.mem_size, 512 << 20);
    assert_eq!(run(&[]).mem_size, 128 << 20);
    assert!(run(&["-only-cpr-capable"]).only_cpr_capable);
    assert_eq!(
        run(&["-enable-kvm", "-accel", "kvm", "-display", "none"]),
        run(&[])
    );
    assert_eq!(
        error(&["-accel", "tcg"]),
        "-accel tcg: accelerator 'tcg' is not supported (kvm only)"
    );
    assert_eq!(parse(&["-version"]), Ok(Action::Version));
    assert_eq!(parse(&["--help"]), Ok(Action::Help));
    assert_eq!(parse(&["--dump-schema"]), Ok(Action::DumpSchema));
    assert_eq!(parse(&["-dump-schema"]), Ok(Action::DumpSchema));
}

#[test]
fn memory_backends() {
    assert_eq!(
        run(&["-machine", "memfd-alloc=on"]).ram,
        RamSpec::Memfd {
            id: None,
            hugetlb: false
        }
    );
    let c = run(&[
        "-m",
        "256M",
        "-object",
        "memory-backend-memfd,id=ram0,size=256M,share=on,hugetlb=on",
        "-machine",
        "memory-backend=ram0",
    ]);
    assert_eq!(
        c.ram,
        RamSpec::Memfd {
            id: Some("ram0".into()),
            hugetlb: true
        }
    );
    assert_eq!(
        c.machine_config().ram,
        RamBackendConfig::Memfd { hugetlb: true }
    );
    // Without -m the backend's size is the RAM size.
    let c = run(&[
        "-object",
        "memory-backend-file,id=f,size=64M,mem-path=/dev/shm/x,share=on",
        "-M",
        "memory-backend=f",
    ]);
    assert_eq!(c.mem_size, 64 << 20);
    assert_eq!(
        c.machine_config().ram,
        RamBackendConfig::File {
            path: "/dev/shm/x".into()
        }
    );
    assert_eq!(
        error(&[
            "-m",
            "128M",
            "-object",
            "memory-backend-memfd,id=r,size=64M,share=on",
            "-machine",
            "memory-backend=r"
        ]),
        "Machine memory size does not match the size of the memory backend"
    );
    assert_eq!(
        error(&["-machine", "memory-backend=nope"]),
        "Memory backend 'nope' not found"
    );
}

#[test]
fn chardevs_and_frontends() {
    let c = run(&[
        "-chardev",
        "socket,id=mon,path=/tmp/m.sock,server=on,wait=off",
        "-monitor",
        "chardev:mon",
        "-qmp",
        "unix:/tmp/q.sock,server=on,wait=off",
        "-serial",
        "null",
    ]);
    assert_eq!(c.monitors.len(), 2);
    assert_eq!(
        c.monitors[0],
        MonitorSpec {
            chardev: "mon".into(),
            mode: MonitorMode::Hmp
        }
    );
    assert_eq!(c.monitors[1].mode, MonitorMode::Qmp);
    assert_eq!(c.chardevs.len(), 3);
    // The config round-trips through serde (a live update compares it).
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<VmmConfig>(&json).unwrap(), c);
    assert_eq!(
        error(&["-serial", "chardev:nope"]),
        "chardev 'nope' not found"
    );
    assert_eq!(
        error(&[
            "-chardev",
            "null,id=a",
            "-serial",
            "chardev:a",
            "-monitor",
            "chardev:a"
        ]),
        "Device 'a' is in use"
    );
    assert_eq!(
        error(&["-monitor", "stdio", "-serial", "stdio"]),
        "cannot use stdio by multiple character devices"
    );
}

#[test]
fn nographic_and_mon_stdio_share_stdio_between_serial_and_monitor() {
    for args in [&["-nographic"][..], &["-serial", "mon:stdio"][..]] {
        let c = run(args);
        assert_eq!(
            c.chardevs,
            [ChardevSpec {
                id: "serial0".into(),
                backend: ChardevBackendSpec::Stdio,
                mux: true
            }]
        );
        assert_eq!(c.serial.as_deref(), Some("serial0"));
        assert_eq!(
            c.monitors,
            [MonitorSpec {
                chardev: "serial0".into(),
                mode: MonitorMode::Hmp
            }]
        );
    }
    // -nographic with an explicit monitor elsewhere leaves stdio to the serial port alone.
    let c = run(&["-nographic", "-monitor", "null"]);
    assert!(!c.chardevs.iter().any(|c| c.mux));
    let c = run(&[
        "-chardev",
        "null,id=n,mux=on",
        "-serial",
        "chardev:n",
        "-monitor",
        "chardev:n",
    ]);
    assert_eq!(c.monitors.len(), 1);
    assert_eq!(
        error(&[
            "-chardev",
            "null,id=n,mux=on",
            "-serial",
            "chardev:n",
            "-qmp",
            "chardev:n"
        ]),
        "Device 'n' is in use"
    );
}

#[test]
fn bad_options_give_one_line_errors() {
    assert_eq!(error(&["-foo"]), "-foo: invalid option");
    assert_eq!(error(&["-m"]), "-m: requires an argument");
    assert_eq!(
        error(&["-m", "lots"]),
        "-m lots: Parameter 'size' expects a non-negative number below 2^64"
    );
    assert_eq!(
        error(&["-smp", "x"]),
        "-smp x: Parameter 'cpus' expects a number"
    );
    assert_eq!(
        error(&["-chardev", "bogus,id=x"]),
        "-chardev bogus,id=x: 'bogus' is not a valid char driver name"
    );
    assert_eq!(
        parse(&["-kernel", "/nonexistent/k"]),
        Err(CliError(
            "could not load kernel '/nonexistent/k': No such file or directory".into()
        ))
    );
    assert_eq!(
        parse(&[]),
        Err(CliError("no kernel given: use -kernel FILE".into()))
    );
}

#[test]
fn vfio_pci_devices_get_full_addresses_and_ids() {
    let c = run(&[
        "-device",
        "vfio-pci,host=00:03.0,id=edu0",
        "-device",
        "vfio-pci,host=0000:00:1F.7",
    ]);
    assert_eq!(
        c.vfio,
        vec![
            crate::vfio::VfioDeviceConfig {
                host: "0000:00:03.0".into(),
                id: "edu0".into(),
                iommufd: None,
            },
            crate::vfio::VfioDeviceConfig {
                host: "0000:00:1f.7".into(),
                id: "vfio1".into(),
                iommufd: None,
            },
        ]
    );
}

#[test]
fn vfio_pci_takes_qemus_iommufd_spelling_and_one_back_end_for_all() {
    let c = run(&[
        "-object",
        "iommufd,id=iommufd0",
        "-device",
        "vfio-pci,host=00:03.0,iommufd=iommufd0,id=edu0",
        "-device",
        "vfio-pci,host=00:04.0,iommufd=iommufd0",
    ]);
    assert_eq!(
        c.vfio
            .iter()
            .map(|d| (d.id.as_str(), d.iommufd.as_deref()))
            .collect::<Vec<_>>(),
        vec![("edu0", Some("iommufd0")), ("vfio1", Some("iommufd0"))]
    );
    assert_eq!(
        error(&["-device", "vfio-pci,host=00:03.0,iommufd=nope"]),
        "Property 'vfio-pci.iommufd' can't find value 'nope'"
    );
    assert_eq!(
        error(&[
            "-object",
            "iommufd,id=i0",
            "-device",
            "vfio-pci,host=00:03.0,id=a,iommufd=i0",
            "-device",
            "vfio-pci,host=00:04.0,id=b",
        ]),
        "vfio-pci devices 'a' (iommufd 'i0') and 'b' (the type1 container) must use the same \
         IOMMU back-end"
    );
    assert!(error(&["-object", "iommufd,id=i0,fd=3"]).contains("Property 'iommufd.fd' not found"));
    assert!(
        error(&["-object", "iommufd,id=i0", "-object", "iommufd,id=i0"])
            .contains("duplicate property 'i0'")
    );
}

#[test]
fn vfio_pci_errors_name_the_problem() {
    assert_eq!(
        error(&["-device", "e1000,netdev=n"]),
        "-device e1000,netdev=n: 'e1000' is not a valid device model name (only vfio-pci)"
    );
    assert_eq!(
        error(&["-device", "vfio-pci,id=x"]),
        "-device vfio-pci,id=x: Parameter 'host' is missing"
    );
    assert!(error(&["-device", "vfio-pci,host=00:20.0"]).contains("expects a PCI address"));
    assert!(error(&["-device", "vfio-pci,host=00:03.0,rombar=0"])
        .contains("Invalid parameter 'rombar'"));
    assert!(error(&[
        "-device",
        "vfio-pci,host=00:03.0",
        "-device",
        "vfio-pci,host=0:3.0"
    ])
    .contains("already assigned"));
}
