//! Lab probe: does this kernel's iommufd do what live update needs? Maps a memfd with
//! IOMMU_IOAS_MAP_FILE into a fresh IOAS, binds and attaches each PCI function given
//! (bound to vfio-pci) through its cdev, then execs itself with the iommufd kept open and
//! calls IOMMU_IOAS_CHANGE_PROCESS in the new process image; the file mapping must still be
//! there afterwards (unmapping it returns its whole length).
//!
//! Usage: iommufd_probe [BDF...]   prints "RESULT: PASS" or "RESULT: FAIL ...".
//! Build statically for the lab:
//!   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p vmm \
//!     --example iommufd_probe --target x86_64-unknown-linux-gnu

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::process::ExitCode;

use vmm::vfio::iommufd::{attach, bind, open_cdev, Iommufd};

const SIZE: u64 = 2 << 20;
const IOVA: u64 = 0x100_0000;

fn fail(what: String) -> ExitCode {
    println!("RESULT: FAIL {what}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--after-exec") {
        return after_exec(&args[2..]);
    }
    let fd = match Iommufd::open() {
        Ok(fd) => fd,
        Err(e) => return fail(format!("{e}")),
    };
    let ioas = match fd.ioas_alloc() {
        Ok(i) => i,
        Err(e) => return fail(format!("{e}: {:?}", std::error::Error::source(&e))),
    };
    let name = c"probe-ram";
    // SAFETY: memfd_create reads the NUL-terminated name; returns a new fd or -1.
    let mfd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if mfd < 0 {
        return fail(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: mfd is a fresh fd nothing else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(mfd) };
    // SAFETY: ftruncate on our own memfd.
    if unsafe { libc::ftruncate(memfd.as_raw_fd(), SIZE as i64) } < 0 {
        return fail(format!("ftruncate: {}", std::io::Error::last_os_error()));
    }
    for bdf in &args[1..] {
        let r = open_cdev(bdf).and_then(|(path, dev)| {
            let id = bind(dev.as_raw_fd(), &fd, bdf)?;
            attach(dev.as_raw_fd(), ioas, bdf)?;
            println!(
                "probe: {bdf}: {} bound as device {id}, attached to IOAS {ioas}",
                path.display()
            );
            // Kept open across exec: the binding lives as long as the fd.
            Ok(dev.into_raw_fd())
        });
        if let Err(e) = r {
            return fail(format!("{bdf}: {e}: {:?}", std::error::Error::source(&e)));
        }
    }
    match fd.map_file(ioas, memfd.as_raw_fd(), 0, SIZE, IOVA) {
        Ok(()) => println!(
            "probe: IOMMU_IOAS_MAP_FILE accepted (IOAS {ioas}, {SIZE:#x} bytes at {IOVA:#x})"
        ),
        Err(e) => return fail(format!("{e}: {:?}", std::error::Error::source(&e))),
    }
    match fd.change_process() {
        Ok(()) => println!("probe: IOMMU_IOAS_CHANGE_PROCESS accepted in the mapping process"),
        Err(e) => return fail(format!("{e}: {:?}", std::error::Error::source(&e))),
    }
    // Keep the iommufd across exec.
    let raw = fd.fd();
    // SAFETY: F_SETFD on our own fd.
    unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
    std::mem::forget(fd);
    let exe = std::env::current_exe().unwrap_or_else(|_| args[0].clone().into());
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(exe).args([
        "--after-exec",
        &raw.to_string(),
        &ioas.to_string(),
    ]));
    fail(format!("exec: {err}"))
}

fn after_exec(args: &[String]) -> ExitCode {
    let (Some(fd), Some(ioas)) = (
        args.first().and_then(|a| a.parse::<i32>().ok()),
        args.get(1).and_then(|a| a.parse::<u32>().ok()),
    ) else {
        return fail("--after-exec FD IOAS".into());
    };
    // SAFETY: the fd number was passed by the process image before exec, which kept it open.
    let fd = Iommufd::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
    match fd.change_process() {
        Ok(()) => println!("probe: IOMMU_IOAS_CHANGE_PROCESS accepted after exec"),
        Err(e) => {
            return fail(format!(
                "after exec: {e}: {:?}",
                std::error::Error::source(&e)
            ))
        }
    }
    match fd.unmap(ioas, IOVA, SIZE) {
        Ok(n) if n == SIZE => {
            println!("probe: the file mapping survived exec ({n:#x} bytes unmapped)")
        }
        Ok(n) => return fail(format!("unmapped {n:#x} bytes, expected {SIZE:#x}")),
        Err(e) => return fail(format!("{e}: {:?}", std::error::Error::source(&e))),
    }
    println!("RESULT: PASS");
    ExitCode::SUCCESS
}
