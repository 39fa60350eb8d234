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

pub(super) fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on an fd we own; no pointers involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
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

/// Queued output past which the event loop stops reading the client's input (so a client
/// that never reads cannot grow the queue without bound) and serial output is dropped.
pub const HIGH_WATER: usize = 16 << 20;

struct SinkState {
    sink: Sink,
    /// Monitor output the peer could not take yet (EAGAIN), flushed when it becomes writable.
    pending: Vec<u8>,
}

/// A clonable writer to a chardev.
///
/// The guest's serial output (`Write`, from vCPU threads) never waits: what a peer cannot take
/// is dropped, as from a UART without flow control. Monitor replies ([`ChardevOutput::send`],
/// from the event loop) are queued instead, so a client that sends many commands before
/// reading still gets every reply, in order (QEMU buffers monitor output the same way).
#[derive(Clone)]
pub struct ChardevOutput {
    state: Arc<Mutex<SinkState>>,
}

impl ChardevOutput {
    pub(super) fn new(sink: Sink) -> ChardevOutput {
        ChardevOutput {
            state: Arc::new(Mutex::new(SinkState {
                sink,
                pending: Vec::new(),
            })),
        }
    }

    /// A writer that discards everything (no serial configured).
    pub fn discard() -> ChardevOutput {
        ChardevOutput::new(Sink::Discard)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new peer (or none): what was queued for the old one is dropped.
    pub(super) fn set_sink(&self, sink: Sink) {
        let mut st = self.lock();
        st.sink = sink;
        st.pending.clear();
    }

    /// Monitor output: written now, or queued until the peer can take it.
    pub fn send(&self, bytes: &[u8]) {
        let mut st = self.lock();
        let st = &mut *st;
        if st.pending.is_empty() {
            let done = st.sink.write(bytes);
            st.queue(&bytes[done..], usize::MAX);
        } else {
            st.queue(bytes, usize::MAX);
        }
    }

    /// How much output waits for the peer (poll for POLLOUT while non-zero).
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// The queued output (a live update hands it to the new process, which sends it first).
    pub fn pending_bytes(&self) -> Vec<u8> {
        self.lock().pending.clone()
    }

    /// Writes what the peer can take now of the queued output.
    pub fn flush_pending(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        let done = st.sink.write(&st.pending);
        st.pending.drain(..done);
    }
}

impl SinkState {
    /// Queues bytes for a socket or pty peer unless that would pass `limit`.
    fn queue(&mut self, bytes: &[u8], limit: usize) {
        if matches!(self.sink, Sink::Fd(_))
            && self.pending.len().saturating_add(bytes.len()) <= limit
        {
            self.pending.extend_from_slice(bytes);
        }
    }
}

impl Sink {
    /// Writes as much as the peer takes without blocking; returns how much that was. A
    /// discarded or failed write counts as done (nothing more can be done with it).
    fn write(&self, buf: &[u8]) -> usize {
        match self {
            Sink::Discard => buf.len(),
            Sink::Stdout => write_fd(libc::STDOUT_FILENO, buf).unwrap_or(buf.len()),
            Sink::Fd(fd) => write_fd(fd.as_raw_fd(), buf).unwrap_or(buf.len()),
        }
    }
}

/// Writes until done or EAGAIN; Some(bytes written) unless the fd failed for good.
fn write_fd(fd: RawFd, buf: &[u8]) -> Option<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: rest is a valid readable slice; write() reads within it.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Some(done),
            // EPIPE (peer gone) or another error: the read side will see the hang-up.
            _ => return None,
        }
    }
    Some(done)
}

impl Write for ChardevOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.lock();
        let st = &mut *st;
        // Behind queued monitor output the bytes wait their turn; otherwise never wait.
        if st.pending.is_empty() {
            let _ = st.sink.write(buf);
        } else {
            st.queue(buf, HIGH_WATER);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
