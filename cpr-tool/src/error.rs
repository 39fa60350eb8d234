//! The tool's errors and its exit-code policy.

use std::path::PathBuf;

/// Exit status: all fine.
pub const EXIT_OK: u8 = 0;
/// Exit status: images differ, or an image or schema is incompatible.
pub const EXIT_DIFFERENT: u8 = 1;
/// Exit status: an error stopped the command (bad input, unreadable file, bad arguments).
pub const EXIT_ERROR: u8 = 2;

/// What a command found, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report: identical, valid, compatible.
    Fine,
    /// Differences or incompatibilities were found and printed.
    Differs,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Fine => EXIT_OK,
            Outcome::Differs => EXIT_DIFFERENT,
        }
    }

    pub fn from_ok(ok: bool) -> Self {
        if ok {
            Outcome::Fine
        } else {
            Outcome::Differs
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a cpr image: looks like {looks_like}", path.display())]
    NotAnImage {
        path: PathBuf,
        looks_like: &'static str,
    },
    #[error("{}: invalid cpr image", path.display())]
    BadImage {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{}: no section {wanted} (the image has: {available})", path.display())]
    NoSuchSection {
        path: PathBuf,
        wanted: String,
        available: String,
    },
    /// The format's own message already says "Not a cpr image".
    #[error("{}", path.display())]
    BadSignature {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "--raw shows one section, but {selector} matches {count} instances: give NAME/INSTANCE"
    )]
    Ambiguous { selector: String, count: usize },
    #[error("Bad section selector {0:?}: expected NAME or NAME/INSTANCE")]
    BadSelector(String),
    #[error("No stored schema for version {version} in {} (available: {available})", dir.display())]
    NoSchema {
        version: String,
        dir: PathBuf,
        available: String,
    },
    #[error("{}: invalid schema", path.display())]
    BadSchema {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{}: invalid renames table: {reason}", path.display())]
    BadRenames { path: PathBuf, reason: String },
    #[error("{}: invalid image JSON at {pointer}: {reason}", path.display())]
    BadJson {
        path: PathBuf,
        pointer: String,
        reason: String,
    },
    #[error("Cannot find {what}: pass {flag} or run inside the repository")]
    NotFound {
        what: &'static str,
        flag: &'static str,
    },
    #[error("{}: the image does not survive a JSON round trip byte for byte", path.display())]
    NotLossless { path: PathBuf },
    #[error("Cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("Cannot encode the image")]
    Encode {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The error and its causes on one line, for `cpr-tool: ...` on stderr.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    // Some sources (CBOR decoders) put newlines in their messages.
    line.replace('\n', " ")
}
