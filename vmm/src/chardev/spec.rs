//! `-chardev` options: what each character device is, as serialisable data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cli::{parse_bool, Opts};

/// A character device's backend as the command line describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChardevBackendSpec {
    Stdio,
    Null,
    File {
        path: PathBuf,
    },
    Pty,
    Socket {
        addr: SocketAddrSpec,
        server: bool,
        wait: bool,
    },
}

/// Where a socket chardev listens or connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketAddrSpec {
    Unix { path: PathBuf },
    Tcp { host: String, port: u16 },
}

/// One `-chardev` (or one implied by `-serial stdio`, `-qmp unix:...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChardevSpec {
    pub id: String,
    pub backend: ChardevBackendSpec,
    /// `mux=on`: the serial port and an HMP monitor share it, switched with Ctrl-A c.
    #[serde(default)]
    pub mux: bool,
}

impl ChardevSpec {
    /// Parses the argument of `-chardev`: `BACKEND,id=ID[,options]`.
    pub fn parse(v: &str) -> Result<ChardevSpec, String> {
        let o = Opts::parse(v, Some("backend"));
        let backend = o
            .implied
            .clone()
            .or_else(|| o.get("backend").map(str::to_string))
            .ok_or("Parameter 'backend' is missing")?;
        let id = o.get("id").ok_or("Parameter 'id' is missing")?.to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(format!("Parameter 'id' expects an identifier, got '{id}'"));
        }
        let backend = parse_backend(&backend, &o, &["id", "backend"])?;
        let mux = parse_bool("mux", o.get("mux").unwrap_or("off"))?;
        Ok(ChardevSpec { id, backend, mux })
    }

    /// Parses the shorthand of `-serial`/`-monitor`/`-qmp`: `stdio`, `null`, `pty`,
    /// `file:PATH`, `unix:PATH[,server=on,wait=off]`, `tcp:HOST:PORT[,server=on,wait=off]`.
    pub fn parse_shorthand(v: &str) -> Result<ChardevBackendSpec, String> {
        match v {
            "stdio" => return Ok(ChardevBackendSpec::Stdio),
            "null" => return Ok(ChardevBackendSpec::Null),
            "pty" => return Ok(ChardevBackendSpec::Pty),
            _ => {}
        }
        if let Some(path) = v.strip_prefix("file:") {
            return Ok(ChardevBackendSpec::File {
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = v.strip_prefix("unix:") {
            let o = Opts::parse(rest, Some("path"));
            let path = o.implied.clone().ok_or("unix: socket path is missing")?;
            let mut o = o;
            o.pairs.push(("path".into(), path));
            return parse_backend("socket", &o, &[]);
        }
        if let Some(rest) = v.strip_prefix("tcp:") {
            let o = Opts::parse(rest, Some("addr"));
            let addr = o.implied.clone().unwrap_or_default();
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("tcp: expected HOST:PORT, got '{addr}'"))?;
            let mut o = o;
            o.pairs.push(("host".into(), host.to_string()));
            o.pairs.push(("port".into(), port.to_string()));
            return parse_backend("socket", &o, &[]);
        }
        Err(format!("'{v}' is not a valid char driver"))
    }
}

fn parse_backend(kind: &str, o: &Opts, common: &[&str]) -> Result<ChardevBackendSpec, String> {
    let allowed: Vec<&str> = match kind {
        "stdio" => vec!["signal", "mux"],
        "null" | "pty" => vec!["mux"],
        "file" => vec!["path", "mux"],
        "socket" => vec!["path", "host", "port", "server", "wait", "mux"],
        _ => return Err(format!("'{kind}' is not a valid char driver name")),
    };
    let allowed: Vec<&str> = allowed.into_iter().chain(common.iter().copied()).collect();
    if let Some(k) = o.unknown_key(&allowed) {
        return Err(format!("Invalid parameter '{k}'"));
    }
    Ok(match kind {
        "stdio" => ChardevBackendSpec::Stdio,
        "null" => ChardevBackendSpec::Null,
        "pty" => ChardevBackendSpec::Pty,
        "file" => ChardevBackendSpec::File {
            path: PathBuf::from(o.get("path").ok_or("chardev: file: no filename given")?),
        },
        _ => {
            let addr = match (o.get("path"), o.get("host"), o.get("port")) {
                (Some(path), None, None) => SocketAddrSpec::Unix {
                    path: PathBuf::from(path),
                },
                (None, host, Some(port)) => SocketAddrSpec::Tcp {
                    host: host.unwrap_or("0.0.0.0").to_string(),
                    port: port.parse().map_err(|_| {
                        format!("Parameter 'port' expects a port number, got '{port}'")
                    })?,
                },
                (Some(_), _, _) => {
                    return Err("chardev: socket: 'path' excludes 'host' and 'port'".into())
                }
                (None, _, None) => return Err("chardev: socket: no host given".into()),
            };
            let server = parse_bool("server", o.get("server").unwrap_or("off"))?;
            // QEMU waits for a client by default when it is the server.
            let wait = parse_bool(
                "wait",
                o.get("wait").unwrap_or(if server { "on" } else { "off" }),
            )?;
            if wait && !server {
                return Err(
                    "chardev: socket: 'wait' option is incompatible with 'server=off'".into(),
                );
            }
            ChardevBackendSpec::Socket { addr, server, wait }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_unix_server() {
        let s = ChardevSpec::parse("socket,path=/tmp/m.sock,server=on,wait=off,id=mon").unwrap();
        assert_eq!(s.id, "mon");
        assert_eq!(
            s.backend,
            ChardevBackendSpec::Socket {
                addr: SocketAddrSpec::Unix {
                    path: "/tmp/m.sock".into()
                },
                server: true,
                wait: false
            }
        );
    }

    #[test]
    fn socket_tcp_and_shorthands() {
        let s =
            ChardevSpec::parse("socket,host=127.0.0.1,port=4444,server=on,wait=off,id=s").unwrap();
        assert!(matches!(
            s.backend,
            ChardevBackendSpec::Socket { addr: SocketAddrSpec::Tcp { ref host, port: 4444 }, .. } if host == "127.0.0.1"
        ));
        let q = ChardevSpec::parse_shorthand("unix:/tmp/q.sock,server=on,wait=off").unwrap();
        assert_eq!(
            q,
            ChardevBackendSpec::Socket {
                addr: SocketAddrSpec::Unix {
                    path: "/tmp/q.sock".into()
                },
                server: true,
                wait: false
            }
        );
        assert_eq!(
            ChardevSpec::parse_shorthand("stdio").unwrap(),
            ChardevBackendSpec::Stdio
        );
    }

    #[test]
    fn bad_chardevs_name_the_problem() {
        assert_eq!(
            ChardevSpec::parse("bogus,id=x").unwrap_err(),
            "'bogus' is not a valid char driver name"
        );
        assert_eq!(
            ChardevSpec::parse("stdio").unwrap_err(),
            "Parameter 'id' is missing"
        );
        assert_eq!(
            ChardevSpec::parse("file,id=f").unwrap_err(),
            "chardev: file: no filename given"
        );
        assert_eq!(
            ChardevSpec::parse("socket,id=s").unwrap_err(),
            "chardev: socket: no host given"
        );
        assert_eq!(
            ChardevSpec::parse("socket,id=s,port=x").unwrap_err(),
            "Parameter 'port' expects a port number, got 'x'"
        );
        assert_eq!(
            ChardevSpec::parse("null,id=n,foo=1").unwrap_err(),
            "Invalid parameter 'foo'"
        );
    }
}
