//! Character devices: the byte pipes that the UART and the monitors talk through.
//!
//! Each chardev owns a few fds (a listening socket and its connected client, a pty master, an
//! output file). [`Chardev::fds`] names them by [`FdRole`] and [`Chardev::from_inherited`]
//! rebuilds the chardev around fds inherited across exec, so a live update keeps a monitor or
//! console connection open.

// fds(), from_inherited() and pty_path() serve the live-update step, which lands later.
#![cfg_attr(not(test), allow(dead_code))]

mod io;
mod spec;
mod tty;

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use io::{read_fd, set_cloexec, set_nonblocking, ReadOutcome, Sink};
pub use io::{ChardevOutput, HIGH_WATER};
pub use spec::{ChardevBackendSpec, ChardevSpec, SocketAddrSpec};

/// What one of a chardev's fds is, so it can be handed to the rebuilt chardev after exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdRole {
    /// The listening socket of a server socket chardev.
    Listener,
    /// The connected client of a socket chardev.
    Client,
    /// The master side of a pty chardev.
    PtyMaster,
    /// The output file of a file chardev.
    File,
}

#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    #[error("chardev '{id}': failed to bind socket to {addr}")]
    Bind {
        id: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chardev '{id}': failed to connect to {addr}")]
    Connect {
        id: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chardev '{id}': could not open '{}'", path.display())]
    OpenFile {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chardev '{id}': could not create a pty")]
    Pty {
        id: String,
        #[source]
        source: nix::Error,
    },
    #[error("chardev '{id}': inherited fds do not match the backend (missing {role:?})")]
    MissingFd { id: String, role: FdRole },
    #[error("chardev '{id}': could not set up fd")]
    Setup {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

cpr_format::state! {
    /// A chardev as a live update hands it over; its fds travel in the fd manifest.
    #[section(name = "chardev", version = 1, min_version = 1, required = true)]
    #[derive(Eq)]
    pub struct ChardevState {
        /// Backend kind (`stdio`, `null`, `file`, `pty`, `socket`): fds are adopted only by
        /// a chardev of the same id and kind.
        pub backend: String,
        /// A socket client was attached.
        pub connected: bool,
        /// Monitor output queued for a peer that was not reading.
        pub pending_output: cpr_format::Bytes,
    }
}

/// The backend kind's name, as [`ChardevState::backend`] records it.
pub fn backend_name(spec: &ChardevBackendSpec) -> &'static str {
    match spec {
        ChardevBackendSpec::Stdio => "stdio",
        ChardevBackendSpec::Null => "null",
        ChardevBackendSpec::File { .. } => "file",
        ChardevBackendSpec::Pty => "pty",
        ChardevBackendSpec::Socket { .. } => "socket",
    }
}

/// What happened on a chardev when its fd became readable.
#[derive(Debug, PartialEq, Eq)]
pub enum ChardevEvent {
    /// A client connected (sockets); front ends greet it.
    Connected,
    /// Bytes arrived from the outside.
    Data(Vec<u8>),
    /// The peer went away (socket client closed, stdin at EOF).
    Disconnected,
    /// Spurious wakeup (EAGAIN); nothing to do.
    Nothing,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
    fn accept(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s.into()),
            Listener::Tcp(l) => l.accept().map(|(s, _)| s.into()),
        }
    }
}

enum Kind {
    Stdio {
        stdin_open: bool,
        tty: Option<tty::RawTty>,
    },
    Null,
    File {
        _file: Arc<OwnedFd>,
    },
    Pty {
        master: Arc<OwnedFd>,
        _slave: OwnedFd,
        path: PathBuf,
    },
    Socket {
        listener: Option<Listener>,
        client: Option<Arc<OwnedFd>>,
    },
}

/// A running character device.
pub struct Chardev {
    pub spec: ChardevSpec,
    kind: Kind,
    out: ChardevOutput,
}

impl Chardev {
    /// Opens the chardev described by `spec` (binds sockets, creates ptys, opens files).
    pub fn open(spec: &ChardevSpec) -> Result<Chardev, ChardevError> {
        let id = spec.id.clone();
        let setup = |source| ChardevError::Setup {
            id: id.clone(),
            source,
        };
        let (kind, sink) = match &spec.backend {
            ChardevBackendSpec::Stdio => (
                Kind::Stdio {
                    stdin_open: true,
                    tty: tty::RawTty::enter(!spec.mux),
                },
                Sink::Stdout,
            ),
            ChardevBackendSpec::Null => (Kind::Null, Sink::Discard),
            ChardevBackendSpec::File { path } => {
                let file = File::create(path).map_err(|source| ChardevError::OpenFile {
                    id: id.clone(),
                    path: path.clone(),
                    source,
                })?;
                let fd = Arc::new(OwnedFd::from(file));
                (Kind::File { _file: fd.clone() }, Sink::Fd(fd))
            }
            ChardevBackendSpec::Pty => {
                let pty = nix::pty::openpty(None, None).map_err(|source| ChardevError::Pty {
                    id: id.clone(),
                    source,
                })?;
                make_raw(&pty.slave).map_err(|source| ChardevError::Pty {
                    id: id.clone(),
                    source,
                })?;
                set_nonblocking(pty.master.as_raw_fd()).map_err(setup)?;
                // openpty() leaves both ends inheritable; like every fd here they are
                // close-on-exec unless a live update chooses to preserve them.
                set_cloexec(pty.master.as_raw_fd()).map_err(setup)?;
                set_cloexec(pty.slave.as_raw_fd()).map_err(setup)?;
                let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
                    .map_err(setup)?;
                eprintln!("char device redirected to {} (label {id})", path.display());
                let master = Arc::new(pty.master);
                (
                    // The slave stays open so the master never reads EIO/HUP while no one has
                    // the terminal open (that would make poll() spin).
                    Kind::Pty {
                        master: master.clone(),
                        _slave: pty.slave,
                        path,
                    },
                    Sink::Fd(master),
                )
            }
            ChardevBackendSpec::Socket {
                addr,
                server: true,
                wait,
            } => {
                let listener = bind(&id, addr)?;
                let client = if *wait {
                    eprintln!(
                        "vmm: waiting for connection on: disconnected:{},server=on",
                        addr_label(addr)
                    );
                    Some(Arc::new(listener.accept().map_err(setup)?))
                } else {
                    None
                };
                match &listener {
                    Listener::Unix(l) => l.set_nonblocking(true).map_err(setup)?,
                    Listener::Tcp(l) => l.set_nonblocking(true).map_err(setup)?,
                }
                let sink = match &client {
                    Some(c) => {
                        set_nonblocking(c.as_raw_fd()).map_err(setup)?;
                        Sink::Fd(c.clone())
                    }
                    None => Sink::Discard,
                };
                (
                    Kind::Socket {
                        listener: Some(listener),
                        client,
                    },
                    sink,
                )
            }
            ChardevBackendSpec::Socket {
                addr,
                server: false,
                ..
            } => {
                let connect_err = |source| ChardevError::Connect {
                    id: id.clone(),
                    addr: addr_label(addr),
                    source,
                };
                let fd: OwnedFd = match addr {
                    SocketAddrSpec::Unix { path } => {
                        UnixStream::connect(path).map_err(connect_err)?.into()
                    }
                    SocketAddrSpec::Tcp { host, port } => {
                        std::net::TcpStream::connect((host.as_str(), *port))
                            .map_err(connect_err)?
                            .into()
                    }
                };
                set_nonblocking(fd.as_raw_fd()).map_err(setup)?;
                let fd = Arc::new(fd);
                (
                    Kind::Socket {
                        listener: None,
                        client: Some(fd.clone()),
                    },
                    Sink::Fd(fd),
                )
            }
        };
        Ok(Chardev {
            spec: spec.clone(),
            kind,
            out: ChardevOutput::new(sink),
        })
    }

    /// Rebuilds a chardev around fds inherited from the previous process (live update).
    /// `fds` must hold what [`Chardev::fds`] reported there; ownership passes to the chardev.
    pub fn from_inherited(
        spec: &ChardevSpec,
        fds: Vec<(FdRole, OwnedFd)>,
    ) -> Result<Chardev, ChardevError> {
        let id = spec.id.clone();
        let mut fds = fds;
        let mut take = |role: FdRole| -> Option<OwnedFd> {
            let i = fds.iter().position(|(r, _)| *r == role)?;
            Some(fds.swap_remove(i).1)
        };
        let missing = |role| ChardevError::MissingFd {
            id: id.clone(),
            role,
        };
        let setup = |source| ChardevError::Setup {
            id: id.clone(),
            source,
        };
        let (kind, sink) = match &spec.backend {
            ChardevBackendSpec::Stdio | ChardevBackendSpec::Null => return Chardev::open(spec),
            ChardevBackendSpec::File { .. } => {
                let fd = Arc::new(take(FdRole::File).ok_or_else(|| missing(FdRole::File))?);
                (Kind::File { _file: fd.clone() }, Sink::Fd(fd))
            }
            ChardevBackendSpec::Pty => {
                let master = take(FdRole::PtyMaster).ok_or_else(|| missing(FdRole::PtyMaster))?;
                let path = pty_slave_path(&master).map_err(setup)?;
                let slave: OwnedFd = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open(&path)
                    .map_err(setup)?
                    .into();
                let master = Arc::new(master);
                (
                    Kind::Pty {
                        master: master.clone(),
                        _slave: slave,
                        path,
                    },
                    Sink::Fd(master),
                )
            }
            ChardevBackendSpec::Socket { addr, server, .. } => {
                let listener = match (server, take(FdRole::Listener)) {
                    (false, _) => None,
                    (true, Some(fd)) => Some(match addr {
                        SocketAddrSpec::Unix { .. } => Listener::Unix(UnixListener::from(fd)),
                        SocketAddrSpec::Tcp { .. } => Listener::Tcp(TcpListener::from(fd)),
                    }),
                    (true, None) => return Err(missing(FdRole::Listener)),
                };
                let client = take(FdRole::Client).map(Arc::new);
                let sink = match &client {
                    Some(c) => Sink::Fd(c.clone()),
                    None => Sink::Discard,
                };
                (Kind::Socket { listener, client }, sink)
            }
        };
        Ok(Chardev {
            spec: spec.clone(),
            kind,
            out: ChardevOutput::new(sink),
        })
    }

    /// The chardev as a live update hands it over.
    pub fn save(&self) -> ChardevState {
        ChardevState {
            backend: backend_name(&self.spec.backend).to_string(),
            connected: matches!(
                &self.kind,
                Kind::Socket {
                    client: Some(_),
                    ..
                }
            ),
            pending_output: cpr_format::Bytes(self.out.pending_bytes()),
        }
    }

    /// The fds this chardev owns, by role (what a live update must preserve).
    pub fn fds(&self) -> Vec<(FdRole, RawFd)> {
        match &self.kind {
            Kind::Stdio { .. } | Kind::Null => Vec::new(),
            Kind::File { _file } => vec![(FdRole::File, _file.as_raw_fd())],
            Kind::Pty { master, .. } => vec![(FdRole::PtyMaster, master.as_raw_fd())],
            Kind::Socket { listener, client } => {
                let mut v = Vec::new();
                if let Some(l) = listener {
                    v.push((FdRole::Listener, l.fd()));
                }
                if let Some(c) = client {
                    v.push((FdRole::Client, c.as_raw_fd()));
                }
                v
            }
        }
    }

    /// A writer for this chardev (cheap clone; usable from the vCPU threads).
    pub fn output(&self) -> ChardevOutput {
        self.out.clone()
    }

    /// The pty's slave path, for `info chardev`-style reporting.
    pub fn pty_path(&self) -> Option<&PathBuf> {
        match &self.kind {
            Kind::Pty { path, .. } => Some(path),
            _ => None,
        }
    }

    /// QEMU's description of the backend (`info chardev`, query-chardev "filename").
    pub fn filename(&self) -> String {
        match (&self.spec.backend, &self.kind) {
            (_, Kind::Pty { path, .. }) => format!("pty:{}", path.display()),
            (ChardevBackendSpec::File { path }, _) => format!("file:{}", path.display()),
            (ChardevBackendSpec::Socket { addr, server, .. }, Kind::Socket { client, .. }) => {
                let state = if client.is_some() {
                    ""
                } else {
                    "disconnected:"
                };
                let server = if *server { ",server=on" } else { "" };
                format!("{state}{}{server}", addr_label(addr))
            }
            (ChardevBackendSpec::Stdio, _) => "stdio".into(),
            _ => "null".into(),
        }
    }

    /// Whether this is a terminal in raw mode: nothing echoes typed keys but us.
    pub fn is_raw_tty(&self) -> bool {
        matches!(&self.kind, Kind::Stdio { tty: Some(_), .. })
    }

    /// Whether a peer is attached now (front ends greet it on start-up when so).
    pub fn is_connected(&self) -> bool {
        match &self.kind {
            Kind::Socket { client, .. } => client.is_some(),
            Kind::Stdio { .. } | Kind::Pty { .. } => true,
            Kind::Null | Kind::File { .. } => false,
        }
    }

    /// The fd to poll for input, if any.
    pub fn poll_fd(&self) -> Option<RawFd> {
        match &self.kind {
            Kind::Stdio {
                stdin_open: true, ..
            } => Some(libc::STDIN_FILENO),
            Kind::Stdio {
                stdin_open: false, ..
            }
            | Kind::Null
            | Kind::File { .. } => None,
            Kind::Pty { master, .. } => Some(master.as_raw_fd()),
            Kind::Socket {
                client: Some(c), ..
            } => Some(c.as_raw_fd()),
            Kind::Socket {
                client: None,
                listener,
            } => listener.as_ref().map(Listener::fd),
        }
    }

    /// Services the fd from [`Chardev::poll_fd`] after poll() reported it readable or hung up.
    pub fn on_readable(&mut self) -> ChardevEvent {
        let mut buf = [0u8; 4096];
        match &mut self.kind {
            Kind::Stdio { stdin_open, .. } => match read_fd(libc::STDIN_FILENO, &mut buf) {
                ReadOutcome::Data(n) => ChardevEvent::Data(buf[..n].to_vec()),
                ReadOutcome::WouldBlock => ChardevEvent::Nothing,
                ReadOutcome::Closed => {
                    *stdin_open = false;
                    ChardevEvent::Disconnected
                }
            },
            Kind::Null | Kind::File { .. } => ChardevEvent::Nothing,
            Kind::Pty { master, .. } => match read_fd(master.as_raw_fd(), &mut buf) {
                ReadOutcome::Data(n) => ChardevEvent::Data(buf[..n].to_vec()),
                // With the slave held open a closed read is transient; report nothing.
                _ => ChardevEvent::Nothing,
            },
            Kind::Socket {
                client: Some(c), ..
            } => match read_fd(c.as_raw_fd(), &mut buf) {
                ReadOutcome::Data(n) => ChardevEvent::Data(buf[..n].to_vec()),
                ReadOutcome::WouldBlock => ChardevEvent::Nothing,
                ReadOutcome::Closed => {
                    if let Kind::Socket { client, .. } = &mut self.kind {
                        *client = None;
                    }
                    self.out.set_sink(Sink::Discard);
                    ChardevEvent::Disconnected
                }
            },
            Kind::Socket {
                client: None,
                listener: Some(l),
            } => match l.accept() {
                Ok(fd) => {
                    if set_nonblocking(fd.as_raw_fd()).is_err() {
                        return ChardevEvent::Nothing;
                    }
                    let fd = Arc::new(fd);
                    self.out.set_sink(Sink::Fd(fd.clone()));
                    if let Kind::Socket { client, .. } = &mut self.kind {
                        *client = Some(fd);
                    }
                    ChardevEvent::Connected
                }
                Err(_) => ChardevEvent::Nothing,
            },
            Kind::Socket {
                client: None,
                listener: None,
            } => ChardevEvent::Nothing,
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

fn addr_label(addr: &SocketAddrSpec) -> String {
    match addr {
        SocketAddrSpec::Unix { path } => format!("unix:{}", path.display()),
        SocketAddrSpec::Tcp { host, port } => format!("tcp:{host}:{port}"),
    }
}

fn bind(id: &str, addr: &SocketAddrSpec) -> Result<Listener, ChardevError> {
    let bind_err = |source| ChardevError::Bind {
        id: id.to_string(),
        addr: addr_label(addr),
        source,
    };
    match addr {
        SocketAddrSpec::Unix { path } => {
            // QEMU removes a stale socket file before binding; do the same.
            if std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(path);
            }
            UnixListener::bind(path)
                .map(Listener::Unix)
                .map_err(bind_err)
        }
        SocketAddrSpec::Tcp { host, port } => TcpListener::bind((host.as_str(), *port))
            .map(Listener::Tcp)
            .map_err(bind_err),
    }
}

fn make_raw(fd: &OwnedFd) -> Result<(), nix::Error> {
    use nix::sys::termios;
    let mut t = termios::tcgetattr(fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, termios::SetArg::TCSANOW, &t)
}

fn pty_slave_path(master: &OwnedFd) -> std::io::Result<PathBuf> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one c_uint through the valid pointer; the fd is owned and open.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PathBuf::from(format!("/dev/pts/{n}")))
}

#[cfg(test)]
mod tests;
