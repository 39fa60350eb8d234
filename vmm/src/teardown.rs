//! The old address space is freed after the guest runs again, not inside the pause.
//!
//! execve frees the old process's memory map before the new image starts: every page-table
//! entry of guest RAM is zapped (~37 ms per GiB of touched RAM on 4 KiB pages here), and the
//! old KVM VM is destroyed when its fds close. The pause profile showed this "exec" phase
//! as nearly all of restart mode's pause on small pages. The fix: just before execve, a
//! helper process is cloned with CLONE_VM (sharing the mm, but not a thread of ours, so
//! exec does not kill it) and a copy of our fd table (so it also holds the old VM's fds).
//! execve then only drops our reference to the old mm. The helper blocks on a pipe whose
//! write end the new process inherits and closes once the guest runs again
//! ([`release`]); the helper then exits, and its exit frees the old mm and VM while the
//! guest runs.
//!
//! The helper runs on its own small stack and makes raw system calls only: it shares our
//! memory, so it must not touch the allocator, errno (thread-local, still ours) or locks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// `PID:FD` of the helper and of the inherited write end, for the new process.
pub const TEARDOWN_ENV: &str = "VMM_CPR_TEARDOWN";

/// Set (to anything) to let execve free the old mm inside the pause, as before: the
/// benchmark's A/B comparison.
pub const IN_EXEC_ENV: &str = "VMM_CPR_TEARDOWN_IN_EXEC";

const STACK_SIZE: usize = 64 << 10;

/// A helper holding the old mm, cloned just before execve.
pub struct Helper {
    pid: libc::pid_t,
    /// Stays open across execve (its FD_CLOEXEC is cleared by the caller).
    write_end: OwnedFd,
    stack: *mut libc::c_void,
}

/// One raw x86_64 syscall with three arguments, usable in a CLONE_VM child that must not
/// touch libc's per-thread state (errno), which it shares with its parent.
///
/// # Safety
/// The caller must pass a syscall number and arguments that are valid for it: pointers must
/// point to memory the syscall may read or write for the given lengths.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: (the caller's) a plain syscall instruction; rcx and r11 are clobbered by it.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// The helper: close its copy of the write end, wait for EOF, exit.
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    let fds = arg as usize;
    let (read_fd, write_fd) = (fds & 0xffff_ffff, fds >> 32);
    let mut byte = 0u8;
    // SAFETY: raw syscalls on fds of our own fd table copy and a byte on our own stack;
    // nothing here touches memory shared with the parent besides that stack.
    unsafe {
        raw_syscall3(libc::SYS_close, write_fd, 0, 0);
        // Returns 0 at EOF: every write end closed (the new process released us). A read
        // interrupted by a signal returns -EINTR: wait again.
        loop {
            let r = raw_syscall3(libc::SYS_read, read_fd, &mut byte as *mut u8 as usize, 1);
            if r <= 0 && r != -(libc::EINTR as isize) {
                break;
            }
        }
        raw_syscall3(libc::SYS_exit, 0, 0, 0);
    }
    0
}

impl Helper {
    /// Clones the helper. Its write end is close-on-exec until the caller clears that flag.
    pub fn spawn() -> std::io::Result<Helper> {
        if std::env::var_os(IN_EXEC_ENV).is_some() {
            return Err(std::io::Error::other(
                "disabled by VMM_CPR_TEARDOWN_IN_EXEC",
            ));
        }
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
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
            return Err(std::io::Error::last_os_error());
        }
        let arg = (read_end.as_raw_fd() as usize) | ((write_end.as_raw_fd() as usize) << 32);
        // SAFETY: the stack is ours and 16-byte aligned at its top; the child runs
        // `helper_main`, which only makes raw syscalls (see the module comment). Without
        // CLONE_FILES it gets a copy of the fd table; SIGCHLD lets us (or the new image,
        // which inherits the child) reap it.
        let pid = unsafe {
            libc::clone(
                helper_main,
                stack.cast::<u8>().add(STACK_SIZE).cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                arg as *mut libc::c_void,
            )
        };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: the mapping made above, unused since clone failed.
            unsafe { libc::munmap(stack, STACK_SIZE) };
            return Err(e);
        }
        drop(read_end);
        Ok(Helper {
            pid,
            write_end,
            stack,
        })
    }

    pub fn write_fd(&self) -> RawFd {
        self.write_end.as_raw_fd()
    }

    /// The value of [`TEARDOWN_ENV`] for the new process.
    pub fn env_value(&self) -> String {
        format!("{}:{}", self.pid, self.write_end.as_raw_fd())
    }

    /// Keeps the helper across an execve that is not a cpr-exec (the floor benchmark): clears
    /// FD_CLOEXEC on the pipe's write end and returns (pid, write fd) for the new image to
    /// pass to [`adopt`]. The helper's stack mapping goes with this image at execve.
    pub fn into_inherited(self) -> std::io::Result<(libc::pid_t, RawFd)> {
        nix::fcntl::fcntl(
            &self.write_end,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        let fd = self.write_end.as_raw_fd();
        let pid = self.pid;
        std::mem::forget(self.write_end); // inherited across execve on purpose
        Ok((pid, fd))
    }

    /// execve failed: let the helper go and reap it.
    pub fn abandon(self) {
        drop(self.write_end);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        // SAFETY: the helper has exited, so nothing runs on its stack any more.
        unsafe { libc::munmap(self.stack, STACK_SIZE) };
    }
}

/// The helper inherited from the previous image: (pid, write end).
static INHERITED: Mutex<Option<(libc::pid_t, OwnedFd)>> = Mutex::new(None);

/// After a cpr-exec: takes the helper named by [`TEARDOWN_ENV`] (if any) and removes the
/// variable. A value that does not name an open pipe is ignored.
pub fn adopt_from_env() {
    let Some(value) = std::env::var_os(TEARDOWN_ENV) else {
        return;
    };
    std::env::remove_var(TEARDOWN_ENV);
    let text = value.to_string_lossy();
    if let Some((pid, fd)) = text
        .split_once(':')
        .and_then(|(p, f)| Some((p.parse::<libc::pid_t>().ok()?, f.parse::<RawFd>().ok()?)))
    {
        adopt(pid, fd);
    }
}

/// Takes the helper `pid` whose pipe write end `fd` the previous image left open, for
/// [`release`]. A value that does not name an open pipe is ignored.
pub fn adopt(pid: libc::pid_t, fd: RawFd) {
    if fd <= 2 || pid <= 0 {
        return;
    }
    let is_pipe = nix::sys::stat::fstat(
        // SAFETY: only borrowed for fstat; an fd that is not open makes fstat fail.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )
    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
    if is_pipe {
        // SAFETY: the previous image left this pipe's write end open for us to close;
        // nothing else in this process owns that number.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Ok(mut g) = INHERITED.lock() {
            *g = Some((pid, owned));
        }
    }
}

/// The guest runs again: let the helper exit (freeing the old mm and VM) and reap it on a
/// thread of its own, off the event loop.
pub fn release() {
    let taken = INHERITED.lock().ok().and_then(|mut g| g.take());
    if let Some((pid, fd)) = taken {
        drop(fd);
        let _ = std::thread::Builder::new()
            .name("cpr-teardown".into())
            .spawn(move || {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            });
    }
}
