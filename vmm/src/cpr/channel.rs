//! The cpr-transfer channel: framed messages over a UNIX stream socket, each optionally
//! carrying descriptors (SCM_RIGHTS).
//!
//! A frame is `"CPRT"`, the kind (u32 LE), the payload length (u32 LE), then the payload.
//! Descriptors ride on the frame's first bytes, so they arrive with the header. Every receive
//! is bounded by the socket's timeout: a peer that dies or stalls ends the transfer with a
//! clear error on both sides instead of a hang.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};

const MAGIC: &[u8; 4] = b"CPRT";
const HEADER: usize = 12;
/// The largest payload accepted (a hand-over or state image is kilobytes).
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// Message kinds, in protocol order (see `transfer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// old → new: protocol version, hand-over image and RAM/chardev descriptors.
    Hello = 1,
    /// new → old: VM, memslots and vCPUs are built; send the state.
    Ready = 2,
    /// old → new: the vCPU/device state image (the guest is paused now).
    State = 3,
    /// new → old: state set in the new VM; waiting for "go".
    Restored = 4,
    /// old → new: ownership passes; the new process runs the guest.
    Go = 5,
    /// new → old: the guest runs in the new process (payload: timestamps).
    Running = 6,
    /// either way: the sender refuses to go on (payload: why, UTF-8).
    Refuse = 7,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::State,
            4 => Kind::Restored,
            5 => Kind::Go,
            6 => Kind::Running,
            7 => Kind::Refuse,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Ready => "ready",
            Kind::State => "state",
            Kind::Restored => "restored",
            Kind::Go => "go",
            Kind::Running => "running",
            Kind::Refuse => "refuse",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the peer closed the cpr channel while this side waited for '{0}'")]
    Closed(&'static str),
    #[error("the peer closed the cpr channel before this side could send '{0}'")]
    ClosedBeforeSend(&'static str),
    #[error("no '{what}' from the peer within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
    #[error("cannot receive '{what}' on the cpr channel")]
    Recv {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send '{what}' on the cpr channel")]
    Send {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the cpr channel carried a frame without the CPRT magic (at byte 0 of a header)")]
    BadMagic,
    #[error("the cpr channel carried an unknown message kind {0}")]
    UnknownKind(u32),
    #[error("expected '{expected}' on the cpr channel, got '{got}'")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("a '{what}' payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge { what: &'static str, len: usize },
    #[error("'{what}' carries {n} descriptors; at most {MAX_FDS} fit in one message")]
    TooManyFds { what: &'static str, n: usize },
    #[error("cannot read the peer's credentials (SO_PEERCRED)")]
    PeerCred(#[source] nix::Error),
    #[error("the peer runs as uid {peer}, this process as uid {mine}: refused")]
    PeerUid { peer: u32, mine: u32 },
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A connected cpr channel.
pub struct Channel {
    stream: UnixStream,
    timeout: Duration,
}

fn io_of(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl Channel {
    /// Wraps a connected stream; every receive waits at most `timeout`.
    pub fn new(stream: UnixStream, timeout: Duration) -> std::io::Result<Channel> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Channel { stream, timeout })
    }

    /// Changes the receive timeout (e.g. a long one while the peer builds its VM).
    pub fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// The peer's pid, checked to run as this process's uid (SO_PEERCRED).
    pub fn check_peer_uid(&self) -> Result<i32, ChannelError> {
        let cred =
            getsockopt(&self.stream, sockopt::PeerCredentials).map_err(ChannelError::PeerCred)?;
        // SAFETY: getuid has no arguments and cannot fail.
        let mine = unsafe { libc::getuid() };
        if cred.uid() != mine {
            return Err(ChannelError::PeerUid {
                peer: cred.uid(),
                mine,
            });
        }
        Ok(cred.pid())
    }

    /// Sends one message with `fds` attached.
    pub fn send(&mut self, kind: Kind, payload: &[u8], fds: &[RawFd]) -> Result<(), ChannelError> {
        let what = kind.name();
        if payload.len() > MAX_PAYLOAD as usize {
            return Err(ChannelError::TooLarge {
                what,
                len: payload.len(),
            });
        }
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds { what, n: fds.len() });
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
        header[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let err = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                ChannelError::ClosedBeforeSend(what)
            }
            _ => ChannelError::Send { what, source },
        };
        let iov = [IoSlice::new(&header)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| err(io_of(e)))?;
        // The descriptors went with the first byte; the rest is plain stream data.
        self.stream.write_all(&header[sent..]).map_err(err)?;
        self.stream.write_all(payload).map_err(err)?;
        Ok(())
    }

    fn recv_error(&self, what: &'static str, e: std::io::Error) -> ChannelError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ChannelError::Timeout {
                    what,
                    secs: self.timeout.as_secs(),
                }
            }
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => ChannelError::Closed(what),
            _ => ChannelError::Recv { what, source: e },
        }
    }

    /// Receives the next message, whatever its kind (`what` names it in errors).
    pub fn recv_any(&mut self, what: &'static str) -> Result<Message, ChannelError> {
        let mut header = [0u8; HEADER];
        let mut fds = Vec::new();
        let got = loop {
            let mut iov = [IoSliceMut::new(&mut header)];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                for fd in raw {
                                    // SAFETY: the kernel just installed this descriptor in
                                    // our table for us; nothing else refers to it.
                                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                        }
                    }
                    break msg.bytes;
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(self.recv_error(what, io_of(e))),
            }
        };
        if got == 0 {
            return Err(ChannelError::Closed(what));
        }
        self.stream
            .read_exact(&mut header[got..])
            .map_err(|e| self.recv_error(what, e))?;
        if &header[..4] != MAGIC {
            return Err(ChannelError::BadMagic);
        }
        let kind_raw = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let kind = Kind::from_u32(kind_raw).ok_or(ChannelError::UnknownKind(kind_raw))?;
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if len > MAX_PAYLOAD {
            return Err(ChannelError::TooLarge {
                what: kind.name(),
                len: len as usize,
            });
        }
        let mut payload = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| self.recv_error(what, e))?;
        if kind == Kind::Refuse {
            return Err(ChannelError::Refused(
                String::from_utf8_lossy(&payload).into_owned(),
            ));
        }
        Ok(Message { kind, payload, fds })
    }

    /// Receives a message of kind `want` (a refusal or another kind is an error).
    pub fn recv(&mut self, want: Kind) -> Result<Message, ChannelError> {
        let m = self.recv_any(want.name())?;
        if m.kind != want {
            return Err(ChannelError::Unexpected {
                expected: want.name(),
                got: m.kind.name(),
            });
        }
        Ok(m)
    }

    /// [`Channel::recv`], spinning for up to `spin` until the message's first byte is there
    /// before blocking. For the short waits inside a transfer's pause: a blocked receiver's
    /// wake-up took tens of microseconds per message here, three times per pause, while
    /// the peer's work being waited for takes well under a millisecond.
    pub fn recv_spinning(&mut self, want: Kind, spin: Duration) -> Result<Message, ChannelError> {
        let start = std::time::Instant::now();
        let mut byte = 0u8;
        while start.elapsed() < spin {
            // SAFETY: a non-blocking peek of at most one byte into `byte`, which we own; it
            // consumes nothing, so `recv` below reads the whole frame as usual.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            // Data, end of stream or an error: `recv` reports which.
            if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                break;
            }
            std::hint::spin_loop();
        }
        self.recv(want)
    }

    /// Tells the peer why this side stops (best effort: the peer may be gone).
    pub fn refuse(&mut self, why: &str) {
        let _ = self.send(Kind::Refuse, why.as_bytes(), &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = Duration::from_secs(5);
        (Channel::new(a, t).unwrap(), Channel::new(b, t).unwrap())
    }

    #[test]
    fn frames_carry_payload_and_descriptors() {
        let (mut a, mut b) = pair();
        let f = super::super::fds::handover_memfd(b"ram").unwrap();
        a.send(Kind::Hello, b"payload", &[f.as_raw_fd(), f.as_raw_fd()])
            .unwrap();
        let m = b.recv(Kind::Hello).unwrap();
        assert_eq!(m.payload, b"payload");
        assert_eq!(m.fds.len(), 2);
        let mut got = String::new();
        let mut file = std::fs::File::from(m.fds.into_iter().next().unwrap());
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ram");
        assert_eq!(b.check_peer_uid().unwrap(), std::process::id() as i32);
    }

    #[test]
    fn refusal_closure_and_timeout_are_errors() {
        let (mut a, mut b) = pair();
        a.refuse("other machine");
        let e = b.recv(Kind::Ready).unwrap_err();
        assert_eq!(e.to_string(), "the peer refused: other machine");
        a.send(Kind::Go, &[], &[]).unwrap();
        let e = b.recv(Kind::Ready).unwrap_err();
        assert!(matches!(e, ChannelError::Unexpected { .. }), "{e}");
        b.set_timeout(Duration::from_millis(50)).unwrap();
        let e = b.recv(Kind::Ready).unwrap_err();
        assert!(matches!(e, ChannelError::Timeout { .. }), "{e}");
        drop(a);
        let e = b.recv(Kind::Ready).unwrap_err();
        assert!(matches!(e, ChannelError::Closed("ready")), "{e}");
    }

    #[test]
    fn spinning_receive_gets_messages_sent_before_during_and_after_the_spin() {
        let (mut a, mut b) = pair();
        a.send(Kind::State, b"early", &[]).unwrap();
        let m = b
            .recv_spinning(Kind::State, Duration::from_millis(5))
            .unwrap();
        assert_eq!(m.payload, b"early");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            a.send(Kind::Go, b"", &[]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            a.send(Kind::Restored, b"late", &[]).unwrap();
            a
        });
        b.recv_spinning(Kind::Go, Duration::from_millis(20))
            .unwrap();
        let m = b
            .recv_spinning(Kind::Restored, Duration::from_millis(1))
            .unwrap();
        assert_eq!(m.payload, b"late");
        drop(t.join().unwrap());
        let e = b
            .recv_spinning(Kind::Go, Duration::from_millis(5))
            .unwrap_err();
        assert!(matches!(e, ChannelError::Closed("go")), "{e}");
    }
}
