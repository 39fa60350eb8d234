//! The floor's copy of the vmm's deferred teardown (vmm/src/cpr/teardown.rs, which lives in
//! the vmm binary and is not exported): a CLONE_VM helper holds the old mm across execve and
//! exits when the new image closes the inherited pipe, so execve does not free the old
//! mappings inside the measured interval. Used by `cpr-floor --defer-teardown` to show the
//! floor the vmm is compared with once that cost is moved out of the pause.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const STACK_SIZE: usize = 64 << 10;

/// One raw x86_64 syscall with three arguments, usable in a CLONE_VM child that must not
/// touch libc's per-thread state (errno), which it shares with its parent.
///
/// # Safety
/// The caller must pass a syscall number and arguments that are valid for it: pointers must
/// point to memory the syscall may read or write for the given lengths.
unsafe fn raw3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: (the caller's) one syscall instruction; it clobbers rcx and r11.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a,
            in("rsi") b, in("rdx") c, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

extern "C" fn helper(arg: *mut libc::c_void) -> libc::c_int {
    let v = arg as usize;
    let mut b = 0u8;
    // SAFETY: raw syscalls on the helper's own fd-table copy and a byte on its own stack.
    unsafe {
        raw3(libc::SYS_close, v >> 32, 0, 0);
        loop {
            let r = raw3(
                libc::SYS_read,
                v & 0xffff_ffff,
                &mut b as *mut u8 as usize,
                1,
            );
            if r <= 0 && r != -(libc::EINTR as isize) {
                break;
            }
        }
        raw3(libc::SYS_exit, 0, 0, 0);
    }
    0
}

/// Clones the helper; returns (pid, write end with FD_CLOEXEC cleared) to pass to the child.
pub fn spawn() -> Result<(i32, RawFd), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: a fresh private anonymous mapping, checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(format!("helper stack: {}", std::io::Error::last_os_error()));
    }
    let arg = (r.as_raw_fd() as usize) | ((w.as_raw_fd() as usize) << 32);
    // SAFETY: the child runs `helper` on its own stack and makes raw syscalls only.
    let pid = unsafe {
        libc::clone(
            helper,
            stack.cast::<u8>().add(STACK_SIZE).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            arg as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    drop(r);
    nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("clear FD_CLOEXEC: {e}"))?;
    let raw = w.as_raw_fd();
    std::mem::forget(w); // inherited across execve on purpose
    Ok((pid, raw))
}

/// In the new image, after the measured interval: let the helper exit and reap it.
pub fn release(pid: i32, fd: RawFd) {
    if fd > 2 && pid > 0 {
        // SAFETY: the previous image left this write end open for us to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}
