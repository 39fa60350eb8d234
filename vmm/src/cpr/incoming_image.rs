//! `vmm -incoming FILE`: start a VMM for a reboot-mode image and load it at once.
//!
//! Without machine options the machine (RAM size and backing, vCPUs, kernel, initrd,
//! command line) is the one the image recorded ([`RebootConfigState`]); chardevs and
//! monitors always come from the new command line. With machine options, they must
//! describe the same machine: cpr-load lists every mismatch and loads nothing.

use std::path::{Path, PathBuf};

use super::image::ImageError;
use super::reboot::RebootConfigState;
use super::CprError;
use crate::cli::{RamSpec, VmmConfig};

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("the image {0} does not record the machine's options (reboot.config): give them on the command line")]
    NoConfig(String),
    #[error("the image {path} records an unknown RAM backing '{ram}'")]
    BadRam { path: String, ram: String },
}

impl From<IncomingError> for CprError {
    fn from(e: IncomingError) -> CprError {
        CprError::IncomingImage(Box::new(e))
    }
}

fn ram_spec(path: &Path, s: &RebootConfigState) -> Result<RamSpec, IncomingError> {
    let id = s.ram_id.clone();
    Ok(match (s.ram.as_str(), &s.ram_path) {
        ("anonymous", _) => RamSpec::Anonymous,
        ("memfd", _) => RamSpec::Memfd { id, hugetlb: false },
        ("memfd-hugetlb", _) => RamSpec::Memfd { id, hugetlb: true },
        ("file", Some(p)) => RamSpec::File {
            id: id.unwrap_or_else(|| "ram0".into()),
            path: PathBuf::from(p),
        },
        _ => {
            return Err(IncomingError::BadRam {
                path: path.display().to_string(),
                ram: s.ram.clone(),
            })
        }
    })
}

/// The configuration to build the machine from: the command line's, completed (or, without
/// machine options, replaced) by the image's record of the machine.
pub fn effective_config(config: &VmmConfig, image: &Path) -> Result<VmmConfig, CprError> {
    let p = image.display().to_string();
    let img = cpr_format::Image::open(image).map_err(|source| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    })?;
    let saved: Option<RebootConfigState> = img.section("0").map_err(|source| ImageError::Read {
        path: p.clone(),
        source: Box::new(source),
    })?;
    let mut c = config.clone();
    let needs_image = c.machine_from_image || c.kernel.as_os_str().is_empty();
    if !needs_image {
        return Ok(c);
    }
    let s = saved.ok_or_else(|| IncomingError::NoConfig(p.clone()))?;
    c.kernel = PathBuf::from(&s.kernel);
    if c.machine_from_image {
        c.name = c.name.or(s.name.clone());
        c.mem_size = s.mem_size;
        c.vcpus = u8::try_from(s.vcpus).unwrap_or(u8::MAX);
        c.initrd = s.initrd.as_ref().map(PathBuf::from);
        c.append = s.append.clone();
        c.ram = ram_spec(image, &s)?;
    }
    Ok(c)
}
