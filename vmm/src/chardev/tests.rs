use super::*;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

fn unix_spec(path: &std::path::Path) -> ChardevSpec {
    ChardevSpec {
        id: "s".into(),
        backend: ChardevBackendSpec::Socket {
            addr: SocketAddrSpec::Unix {
                path: path.to_path_buf(),
            },
            server: true,
            wait: false,
        },
        mux: false,
    }
}

#[test]
fn socket_chardev_accepts_reconnects_and_reports_fds() {
    let dir = std::env::temp_dir().join(format!("vmm-chardev-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let mut c = Chardev::open(&unix_spec(&path)).unwrap();
    assert_eq!(
        c.fds().iter().map(|f| f.0).collect::<Vec<_>>(),
        [FdRole::Listener]
    );
    // Output with no client is dropped, not blocked on.
    c.output().write_all(b"lost").unwrap();
    for round in 0..2 {
        let mut client = UnixStream::connect(&path).unwrap();
        assert_eq!(c.on_readable(), ChardevEvent::Connected, "round {round}");
        assert_eq!(
            c.fds().iter().map(|f| f.0).collect::<Vec<_>>(),
            [FdRole::Listener, FdRole::Client]
        );
        client.write_all(b"hi").unwrap();
        assert_eq!(c.on_readable(), ChardevEvent::Data(b"hi".to_vec()));
        c.output().write_all(b"out").unwrap();
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"out");
        drop(client);
        assert_eq!(c.on_readable(), ChardevEvent::Disconnected);
        assert_eq!(c.fds().len(), 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_chardev_rebuilds_from_inherited_fds() {
    let dir = std::env::temp_dir().join(format!("vmm-chardev-inherit-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let spec = unix_spec(&path);
    let mut c = Chardev::open(&spec).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    assert_eq!(c.on_readable(), ChardevEvent::Connected);
    // Duplicate the fds as exec would hand them over, then drop the original chardev.
    let fds: Vec<(FdRole, OwnedFd)> = c
        .fds()
        .into_iter()
        // SAFETY: dup() returns a fresh fd that we own exclusively.
        .map(|(r, fd)| (r, unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) }))
        .collect();
    drop(c);
    let mut c = Chardev::from_inherited(&spec, fds).unwrap();
    client.write_all(b"still here").unwrap();
    assert_eq!(c.on_readable(), ChardevEvent::Data(b"still here".to_vec()));
    assert!(matches!(
        Chardev::from_inherited(&spec, Vec::new()),
        Err(ChardevError::MissingFd {
            role: FdRole::Listener,
            ..
        })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pty_chardev_carries_bytes_both_ways() {
    let spec = ChardevSpec {
        id: "p".into(),
        backend: ChardevBackendSpec::Pty,
        mux: false,
    };
    let mut c = Chardev::open(&spec).unwrap();
    let path = c.pty_path().unwrap().clone();
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    c.output().write_all(b"to-tty").unwrap();
    let mut buf = [0u8; 6];
    tty.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to-tty");
    tty.write_all(b"k").unwrap();
    assert_eq!(c.on_readable(), ChardevEvent::Data(b"k".to_vec()));
    assert_eq!(c.fds()[0].0, FdRole::PtyMaster);
    // SAFETY: F_GETFD on an open fd; no pointers.
    let flags = unsafe { libc::fcntl(c.fds()[0].1, libc::F_GETFD) };
    assert_eq!(
        flags & libc::FD_CLOEXEC,
        libc::FD_CLOEXEC,
        "pty master must be close-on-exec"
    );
}

#[test]
fn bind_failure_names_the_chardev_and_address() {
    let spec = unix_spec(std::path::Path::new("/nonexistent-dir/x.sock"));
    let e = Chardev::open(&spec).err().unwrap();
    assert_eq!(crate::error_chain(&e), "chardev 's': failed to bind socket to unix:/nonexistent-dir/x.sock: No such file or directory (os error 2)");
}

#[test]
fn monitor_output_is_queued_for_a_client_that_is_not_reading() {
    let dir = std::env::temp_dir().join(format!("vmm-chardev-queue-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let mut c = Chardev::open(&unix_spec(&path)).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    assert_eq!(c.on_readable(), ChardevEvent::Connected);
    // Far more than a socket buffer holds, in numbered chunks.
    let chunks: Vec<String> = (0..4000)
        .map(|i| format!("{i:0>8} reply of a monitor command\n"))
        .collect();
    for ch in &chunks {
        c.output().send(ch.as_bytes());
    }
    assert!(c.output().pending_len() > 0);
    let want = chunks.concat();
    let mut got = Vec::new();
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    while got.len() < want.len() {
        c.output().flush_pending();
        match client.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(String::from_utf8(got).unwrap(), want);
    assert_eq!(c.output().pending_len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
