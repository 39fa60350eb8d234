//! Raw fd reads and the shared output writer.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

pub(super) enum ReadOutcome {
    Data(usize),
    WouldBlock,
    Closed,
}

/// One read(2); EOF and hard errors both mean the peer is gone.
pub(super) fn read_fd(fd: RawFd, buf: &mut [u8]) -> ReadOutcome {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes; read() writes within it.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return ReadOutcome::Data(n as usize);
        }
        if n == 0 {
            return ReadOutcome::Closed;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return ReadOutcome::WouldBlock,
            _ => return ReadOutcome::Closed,
        }
    }
}

pub(super) fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where a chardev's output goes right now.
pub(super) enum Sink {
    Discard,
    Stdout,
    Fd(Arc<OwnedFd>),
}

/// A clonable writer to a chardev. Output to a peer that is absent or not reading is dropped
/// rather than blocking the writer (a vCPU thread must never stall on a slow console).
#[derive(Clone)]
pub struct ChardevOutput {
    sink: Arc<Mutex<Sink>>,
}

impl ChardevOutput {
    pub(super) fn new(sink: Sink) -> ChardevOutput {
        ChardevOutput {
            sink: Arc::new(Mutex::new(sink)),
        }
    }

    /// A writer that discards everything (no serial configured).
    pub fn discard() -> ChardevOutput {
        ChardevOutput::new(Sink::Discard)
    }

    pub(super) fn set_sink(&self, sink: Sink) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }
}

fn write_all_fd(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice; write() reads within it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
            continue;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // EAGAIN (peer not reading), EPIPE (peer gone) or another error: drop the rest.
        return;
    }
}

impl Write for ChardevOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        match &*sink {
            Sink::Discard => {}
            Sink::Stdout => write_all_fd(libc::STDOUT_FILENO, buf),
            Sink::Fd(fd) => write_all_fd(fd.as_raw_fd(), buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
