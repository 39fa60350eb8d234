//! Opening inputs: images (with a useful message for non-images), stored schemas,
//! and the schemas directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use cpr_format::{Error as FormatError, Image, Schema};

use crate::error::ToolError;
use crate::renames::find_upwards;
use crate::sniff;

/// A signature mismatch at or after this offset (past the self-describe tag, the
/// array head, the byte-string head and the signature's first byte) is damage.
const DAMAGED_SIGNATURE_FROM: u64 = 6;

/// How much of a non-image to read to say what it looks like.
const SNIFF_LIMIT: u64 = 16 << 20;

/// Open and fully validate an image, region data included: a command never shows
/// an image whose bytes it has not checked.
pub fn image(path: &Path) -> Result<Image, ToolError> {
    let len = std::fs::metadata(path)
        .map_err(|source| ToolError::Read {
            path: path.to_owned(),
            source,
        })?
        .len();
    if len == 0 {
        return Err(ToolError::NotAnImage {
            path: path.to_owned(),
            looks_like: sniff::describe(&[]),
        });
    }
    let bad = |source: FormatError| ToolError::BadImage {
        path: path.to_owned(),
        source: Box::new(source),
    };
    match Image::open(path) {
        Ok(img) => {
            // Streams each region in 1 MiB chunks: constant memory for any RAM size.
            img.verify_regions().map_err(bad)?;
            Ok(img)
        }
        // A file that starts like an image (tag, array and signature heads) but whose
        // signature differs later, or was mangled in transfer, is a damaged image:
        // the format's message says where. Anything else is named by what it is.
        Err(
            e @ FormatError::BadSignature {
                offset,
                text_mode_mangled,
            },
        ) if text_mode_mangled || offset >= DAMAGED_SIGNATURE_FROM => {
            Err(ToolError::BadSignature {
                path: path.to_owned(),
                source: Box::new(e),
            })
        }
        Err(FormatError::BadSignature { .. }) => Err(ToolError::NotAnImage {
            path: path.to_owned(),
            looks_like: sniff::describe(&head(path)?),
        }),
        Err(FormatError::Io { source, .. }) => Err(ToolError::Read {
            path: path.to_owned(),
            source,
        }),
        Err(e) => Err(bad(e)),
    }
}

fn head(path: &Path) -> Result<Vec<u8>, ToolError> {
    let read = |source| ToolError::Read {
        path: path.to_owned(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(SNIFF_LIMIT)
        .read_to_end(&mut buf)
        .map_err(read)?;
    Ok(buf)
}

/// The schemas directory: `--schemas-dir`, `$CPR_TOOL_SCHEMAS_DIR`, or
/// fixtures/schemas found upwards from the current directory.
pub fn schemas_dir(explicit: Option<&Path>) -> Result<PathBuf, ToolError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("CPR_TOOL_SCHEMAS_DIR") {
        return Ok(PathBuf::from(p));
    }
    find_upwards("fixtures/schemas").ok_or(ToolError::NotFound {
        what: "the schemas directory (fixtures/schemas)",
        flag: "--schemas-dir",
    })
}

/// A schema stored as JSON (as `fixtures/schemas/VERSION.json`).
pub fn schema_file(path: &Path) -> Result<Schema, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|source| ToolError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ToolError::BadSchema {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// The stored schema of VMM `version`.
pub fn schema_version(version: &str, dir: &Path) -> Result<(Schema, PathBuf), ToolError> {
    // A version is a name in the directory, never a path out of it.
    if version.is_empty() || version.contains(['/', '\\']) || version.starts_with('.') {
        return Err(ToolError::NoSchema {
            version: version.to_owned(),
            dir: dir.to_owned(),
            available: stored_versions(dir),
        });
    }
    let path = dir.join(format!("{version}.json"));
    if !path.exists() {
        return Err(ToolError::NoSchema {
            version: version.to_owned(),
            dir: dir.to_owned(),
            available: stored_versions(dir),
        });
    }
    Ok((schema_file(&path)?, path))
}

/// The newest version stored in `dir`, comparing dotted numbers numerically
/// (`0.10.0` after `0.9.1`).
pub fn newest_version(dir: &Path) -> Option<String> {
    let key = |v: &str| -> Vec<(u64, String)> {
        v.split('.')
            .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_owned()))
            .collect()
    };
    versions(dir).into_iter().max_by_key(|v| key(v))
}

/// The versions stored in `dir`, for error messages.
fn stored_versions(dir: &Path) -> String {
    let v = versions(dir);
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn versions(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

/// Where a schema for `schema check` came from.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum SchemaSource {
    File(String),
    Version(String),
    Image(String),
}

/// The schema in a file: a schema JSON document, or an image's embedded schema.
pub fn schema_in_file(p: &Path) -> Result<(Schema, SchemaSource), ToolError> {
    let shown = p.display().to_string();
    let mut prefix = Vec::new();
    std::io::Read::read_to_end(
        &mut std::fs::File::open(p)
            .map_err(|source| ToolError::Read {
                path: p.to_owned(),
                source,
            })?
            .take(4096),
        &mut prefix,
    )
    .map_err(|source| ToolError::Read {
        path: p.to_owned(),
        source,
    })?;
    let looks_json = prefix
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if looks_json {
        return Ok((schema_file(p)?, SchemaSource::File(shown)));
    }
    let img = image(p)?;
    Ok((img.schema().clone(), SchemaSource::Image(shown)))
}

/// A schema named on the command line: an existing file (JSON schema or image), else
/// a version in the schemas directory.
pub fn schema_any(arg: &str, dir: Option<&Path>) -> Result<(Schema, SchemaSource), ToolError> {
    let p = Path::new(arg);
    let looks_like_path = arg.contains('/') || arg.ends_with(".json") || arg.ends_with(".cpr");
    if p.is_file() || looks_like_path {
        // A missing file is reported as such, not as an unknown version.
        return schema_in_file(p);
    }
    let dir = schemas_dir(dir)?;
    let (s, _) = schema_version(arg, &dir)?;
    Ok((s, SchemaSource::Version(arg.to_owned())))
}
