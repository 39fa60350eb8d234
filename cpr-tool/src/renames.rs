//! The renames table: sections and fields renamed between VMM versions, kept as
//! data (fixtures/renames.toml) so a rename never needs a tool change.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ToolError;

/// A section renamed between versions: images of older versions call it `from`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SectionRename {
    pub from: String,
    pub to: String,
    /// The first VMM version that uses the new name (informative).
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A field renamed inside a section (named by its newer name).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FieldRename {
    pub section: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Renames {
    #[serde(default, rename = "section")]
    pub sections: Vec<SectionRename>,
    #[serde(default, rename = "field")]
    pub fields: Vec<FieldRename>,
}

impl Renames {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ToolError> {
        let table: Renames = toml::from_str(text).map_err(|e| ToolError::BadRenames {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        for f in &table.fields {
            if f.from == f.to {
                return Err(ToolError::BadRenames {
                    path: path.to_owned(),
                    reason: format!("field {}.{} renamed to itself", f.section, f.from),
                });
            }
        }
        Ok(table)
    }

    pub fn load(path: &Path) -> Result<Self, ToolError> {
        let text = std::fs::read_to_string(path).map_err(|source| ToolError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The table named on the command line, else `$CPR_TOOL_RENAMES`, else
    /// fixtures/renames.toml found upwards from the current directory, else empty.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, ToolError> {
        if let Some(p) = explicit {
            return Self::load(p);
        }
        if let Some(p) = std::env::var_os("CPR_TOOL_RENAMES") {
            return Self::load(Path::new(&p));
        }
        match find_upwards("fixtures/renames.toml") {
            Some(p) => Self::load(&p),
            None => Ok(Self::default()),
        }
    }

    /// The newer name of section `name`, if it was renamed.
    pub fn section_new_name<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.sections
            .iter()
            .find(|r| r.from == name)
            .map(|r| r.to.as_str())
    }

    /// Field renames that apply inside section `section` (its newer name).
    pub fn fields_of<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a FieldRename> + 'a {
        self.fields.iter().filter(move |r| r.section == section)
    }
}

/// `rel` under the current directory or its nearest ancestor that has it.
pub fn find_upwards(rel: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join(rel);
        if candidate.exists() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_and_fields() {
        let t = Renames::parse(
            r#"
            [[section]]
            from = "uart"
            to = "serial"

            [[field]]
            section = "serial"
            from = "scratch"
            to = "scr"
            since = "0.2.0"
            reason = "Match the 16550 register name"
            "#,
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(t.section_new_name("uart"), Some("serial"));
        assert_eq!(t.fields_of("serial").count(), 1);
    }

    #[test]
    fn rejects_unknown_keys_and_self_renames() {
        let e = Renames::parse(
            "[[field]]\nsection='a'\nfrom='x'\nto='x'\n",
            Path::new("r.toml"),
        );
        assert!(matches!(e, Err(ToolError::BadRenames { .. })));
        let e = Renames::parse("[[fields]]\nsection='a'\n", Path::new("r.toml"));
        assert!(matches!(e, Err(ToolError::BadRenames { .. })));
    }
}
