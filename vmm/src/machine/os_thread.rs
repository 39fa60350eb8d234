//! Threads started with `pthread_create` directly, for vCPUs.
//!
//! A std thread sets up a signal stack for its stack-overflow report as it starts (a
//! mapping, a guard page, `sigaltstack`) and frees it as it ends. On the build machines
//! that made each of 8 threads started by a fresh process cost ~35 us of CPU against ~12
//! for a bare pthread, and the new process of a restart-mode live update starts one per
//! vCPU inside the guest's pause. A vCPU thread that overflowed its stack would end the
//! process either way (it hits the guard page, SIGSEGV); it just does so without std's
//! message. A panic on the thread is caught and reported by [`OsThread::join`].

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Stack of a vCPU thread (as std's default).
const STACK_SIZE: usize = 2 << 20;

type Body = Box<dyn FnOnce() + Send + 'static>;

/// What the new thread gets: its name and its body.
struct Start {
    name: Option<CString>,
    body: Body,
}

/// A running thread; detached if dropped unjoined.
pub struct OsThread {
    id: libc::pthread_t,
    joined: bool,
}

/// The thread ended by panicking.
#[derive(Debug)]
pub struct Panicked;

impl OsThread {
    /// Starts `body` on a new thread named `name` (truncated to the kernel's 15 bytes; no
    /// name if it holds a NUL).
    pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<OsThread> {
        let mut short = name.as_bytes();
        short = &short[..short.len().min(15)];
        let start = Box::new(Start {
            name: CString::new(short).ok(),
            body: Box::new(body),
        });
        // SAFETY: attr is initialised before use and destroyed after; pthread_create gets a
        // valid start routine and a pointer it hands, once, to that routine, which takes
        // ownership of the box. If creation fails the box is reclaimed here instead.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            let rc = libc::pthread_attr_init(&mut attr);
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            libc::pthread_attr_setstacksize(&mut attr, STACK_SIZE);
            let arg = Box::into_raw(start);
            let mut id: libc::pthread_t = 0;
            let rc = libc::pthread_create(&mut id, &attr, run, arg.cast());
            libc::pthread_attr_destroy(&mut attr);
            if rc != 0 {
                drop(Box::from_raw(arg));
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(OsThread { id, joined: false })
        }
    }

    /// Waits for the thread to end.
    pub fn join(mut self) -> Result<(), Panicked> {
        self.joined = true;
        let mut ret: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: `id` is a thread this handle started and has neither joined nor detached.
        let rc = unsafe { libc::pthread_join(self.id, &mut ret) };
        match rc == 0 && ret.is_null() {
            true => Ok(()),
            false => Err(Panicked),
        }
    }
}

impl Drop for OsThread {
    fn drop(&mut self) {
        if !self.joined {
            // SAFETY: as in `join`; a detached thread frees itself when it ends.
            unsafe { libc::pthread_detach(self.id) };
        }
    }
}

/// The thread's start routine: names the thread, runs the body, returns null if it
/// returned and non-null if it panicked (a panic must not unwind out of this function).
extern "C" fn run(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the box `spawn` leaked for this thread alone.
    let start = unsafe { Box::from_raw(arg.cast::<Start>()) };
    if let Some(name) = &start.name {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let body = start.body;
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => std::ptr::null_mut(),
        Err(_) => std::ptr::NonNull::<libc::c_void>::dangling().as_ptr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_body_under_its_name_and_reports_a_panic_at_join() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = OsThread::spawn("vcpu-test-name-too-long", move || {
            let mut name = [0u8; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes.
            unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
            let _ = tx.send(name);
        })
        .unwrap();
        t.join().unwrap();
        let name = rx.recv().unwrap();
        assert_eq!(&name[..15], b"vcpu-test-name-");
        let t = OsThread::spawn("panics", || panic!("on purpose")).unwrap();
        assert!(t.join().is_err(), "a panic is reported, not propagated");
    }
}
