//! `cpr-tool json` and `cpr-tool encode`: a lossless JSON form of an image.
//!
//! The JSON holds everything the writer needs to produce the same bytes: header,
//! sections (payloads through [`crate::cborjson`]), fd manifest, schema and region
//! data. `json` re-encodes its own output before printing and refuses to print
//! JSON that would not give back the image byte for byte.

use std::path::Path;

use cpr_format::{FdEntry, Header, Image, ImageWriter, Schema, SectionInfo};
use serde::{Deserialize, Serialize};

use crate::cborjson::{self, from_json, hex_decode, hex_encode};
use crate::cli::{EncodeArgs, JsonArgs};
use crate::error::{Outcome, ToolError};
use crate::load;
use crate::ojson::Json;
use crate::output::{emit, Report};

/// Version of this JSON shape (not of the image format).
const SHAPE: u64 = 1;

#[derive(Serialize, Deserialize)]
struct ImageJson {
    cpr_image_json: u64,
    format_version: String,
    header: Header,
    sections: Vec<SectionJson>,
    fds: Vec<FdEntry>,
    schema: Schema,
    regions: Vec<RegionJson>,
}

#[derive(Serialize, Deserialize)]
struct SectionJson {
    name: String,
    instance: String,
    version: u32,
    min_version: u32,
    required: bool,
    payload: Json,
}

#[derive(Serialize, Deserialize)]
struct RegionJson {
    name: String,
    /// Hex.
    data: String,
}

fn bad_image(path: &Path) -> impl Fn(cpr_format::Error) -> ToolError + '_ {
    move |e| ToolError::BadImage {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

fn export(path: &Path, img: &Image) -> Result<ImageJson, ToolError> {
    let mut sections = Vec::new();
    for s in img.sections() {
        let v = s.value().map_err(bad_image(path))?;
        sections.push(SectionJson {
            name: s.name.clone(),
            instance: s.instance.clone(),
            version: s.version,
            min_version: s.min_version,
            required: s.required,
            payload: cborjson::to_json(&v),
        });
    }
    let mut regions = Vec::new();
    for r in img.regions() {
        let data = img.read_region(&r.name).map_err(bad_image(path))?;
        regions.push(RegionJson {
            name: r.name.clone(),
            data: hex_encode(&data),
        });
    }
    Ok(ImageJson {
        cpr_image_json: SHAPE,
        format_version: img.format_version().to_string(),
        header: img.header().clone(),
        sections,
        fds: img.fd_manifest().to_vec(),
        schema: img.schema().clone(),
        regions,
    })
}

fn bad_json(path: &Path, pointer: String, reason: String) -> ToolError {
    ToolError::BadJson {
        path: path.to_owned(),
        pointer,
        reason,
    }
}

/// The image bytes for a parsed JSON document.
fn build(path: &Path, doc: ImageJson) -> Result<Vec<u8>, ToolError> {
    if doc.cpr_image_json != SHAPE {
        return Err(bad_json(
            path,
            "/cpr_image_json".into(),
            format!("shape version {} is not {SHAPE}", doc.cpr_image_json),
        ));
    }
    let current = cpr_format::FormatVersion::CURRENT.to_string();
    if doc.format_version != current {
        return Err(bad_json(
            path,
            "/format_version".into(),
            format!(
                "this tool writes format {current}, not {}",
                doc.format_version
            ),
        ));
    }
    let encode = |e: cpr_format::Error| ToolError::Encode {
        source: Box::new(e),
    };
    let mut w = ImageWriter::new(doc.header);
    for (i, s) in doc.sections.into_iter().enumerate() {
        let pointer = format!("/sections/{i}/payload");
        let value =
            from_json(&s.payload, &pointer).map_err(|e| bad_json(path, e.pointer, e.reason))?;
        let Some(schema) = doc.schema.get(&s.name).cloned() else {
            return Err(bad_json(
                path,
                format!("/sections/{i}/name"),
                format!("no schema for section {}", s.name),
            ));
        };
        let info = SectionInfo {
            name: s.name,
            instance: s.instance,
            version: s.version,
            min_version: s.min_version,
            required: s.required,
        };
        w.add_value_section(info, schema, &value).map_err(encode)?;
    }
    // The writer embeds the schemas of the sections it was given; anything else in
    // the document's schema would be silently dropped.
    if *w.schema() != doc.schema {
        return Err(bad_json(
            path,
            "/schema".into(),
            "the schema has entries no section uses".into(),
        ));
    }
    for f in doc.fds {
        w.add_fd(f).map_err(encode)?;
    }
    for (i, r) in doc.regions.into_iter().enumerate() {
        let data =
            hex_decode(&r.data).map_err(|e| bad_json(path, format!("/regions/{i}/data"), e))?;
        w.add_region(&r.name, data).map_err(encode)?;
    }
    w.to_bytes().map_err(encode)
}

pub fn json(args: &JsonArgs) -> Result<Outcome, ToolError> {
    let img = load::image(&args.image)?;
    let doc = export(&args.image, &img)?;
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| ToolError::Encode {
        source: Box::new(e),
    })?;
    text.push('\n');
    // Prove the promise before making it: the JSON must encode back to these bytes.
    let original = img.to_bytes().map_err(bad_image(&args.image))?;
    let reparsed: ImageJson = serde_json::from_str(&text).map_err(|e| ToolError::Encode {
        source: Box::new(e),
    })?;
    if build(&args.image, reparsed)? != original {
        return Err(ToolError::NotLossless {
            path: args.image.clone(),
        });
    }
    match &args.output {
        Some(out) => std::fs::write(out, text).map_err(|source| ToolError::Write {
            path: out.clone(),
            source,
        })?,
        None => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(ToolError::Stdout)?;
        }
    }
    Ok(Outcome::Fine)
}

#[derive(Serialize)]
struct Encoded {
    output: String,
    bytes: u64,
    sections: usize,
    fds: usize,
    regions: usize,
}

impl Report for Encoded {
    fn human(&self) -> String {
        format!(
            "Wrote {}: {} bytes, {} sections, {} fds, {} regions\n",
            self.output, self.bytes, self.sections, self.fds, self.regions
        )
    }
}

pub fn encode(args: &EncodeArgs, json: bool) -> Result<Outcome, ToolError> {
    let path = &args.json_file;
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| {
            ToolError::Read {
                path: path.clone(),
                source,
            }
        })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| ToolError::Read {
            path: path.clone(),
            source,
        })?
    };
    let doc: ImageJson = serde_json::from_str(&text).map_err(|e| {
        bad_json(
            path,
            format!("line {} column {}", e.line(), e.column()),
            e.to_string(),
        )
    })?;
    let counts = (doc.sections.len(), doc.fds.len(), doc.regions.len());
    let bytes = build(path, doc)?;
    // Check with the reader before writing: never leave an unreadable image behind.
    Image::from_bytes(&bytes).map_err(|e| ToolError::Encode {
        source: Box::new(e),
    })?;
    std::fs::write(&args.output, &bytes).map_err(|source| ToolError::Write {
        path: args.output.clone(),
        source,
    })?;
    let report = Encoded {
        output: super::shown(&args.output),
        bytes: bytes.len() as u64,
        sections: counts.0,
        fds: counts.1,
        regions: counts.2,
    };
    emit(&report, json).map_err(ToolError::Stdout)?;
    Ok(Outcome::Fine)
}
