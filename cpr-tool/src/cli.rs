//! Command-line interface: every command, its arguments and its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Inspect, diff and verify live-update (CPR) images of any format version.
///
/// Exit status: 0 when all is well, 1 when images differ or are incompatible,
/// 2 on any error (the reason is printed on one line on stderr).
#[derive(Debug, Parser)]
#[command(name = "cpr-tool", version)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of tables (every command).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an image: header, machine, sections, fd manifest and devices.
    Inspect(InspectArgs),
    /// Field-level semantic diff of two images, also across format and VMM versions.
    Diff(DiffArgs),
    /// Check an image's integrity and, optionally, whether a VMM version can load it.
    Verify(VerifyArgs),
    /// Print or compare state schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Export an image to JSON, losslessly (`encode` turns it back into the same bytes).
    Json(JsonArgs),
    /// Build an image from the JSON written by `cpr-tool json`.
    Encode(EncodeArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image file.
    pub image: PathBuf,
    /// Show one section's fields, as NAME or NAME/INSTANCE (e.g. cpu.regs/1).
    #[arg(long, value_name = "NAME[/INSTANCE]")]
    pub section: Option<String>,
    /// Hex dump of the whole image, or of the section given with --section.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first (older) image.
    pub a: PathBuf,
    /// The second (newer) image.
    pub b: PathBuf,
    /// Ignore creation times and other wall-clock fields.
    #[arg(long)]
    pub ignore_timestamps: bool,
    /// Ignore TSC values and offsets, which always move between saves.
    #[arg(long)]
    pub ignore_tsc: bool,
    /// Ignore fields (and whole sections) whose path matches this glob (`*` and `?`;
    /// repeatable). Paths are SECTION/INSTANCE/FIELD, e.g. `cpu.regs/*/rip`, `*tsc*`,
    /// `fd/*`.
    #[arg(long = "ignore", value_name = "FIELD_GLOB")]
    pub ignore: Vec<String>,
    /// The renames table (default: $CPR_TOOL_RENAMES, else fixtures/renames.toml found
    /// from the current directory upwards, else none).
    #[arg(long, value_name = "FILE")]
    pub renames: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image file.
    pub image: PathBuf,
    /// Check that this VMM version can load the image (reads SCHEMAS_DIR/VERSION.json).
    #[arg(long, value_name = "VERSION", conflicts_with = "schema")]
    pub target: Option<String>,
    /// Check that the VMM described by this schema can load the image: a schema JSON
    /// file (as `schema dump --json` writes), or an image whose writer to ask about.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    #[command(flatten)]
    pub schemas: SchemasDir,
    /// The renames table, as for `diff`.
    #[arg(long, value_name = "FILE")]
    pub renames: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SchemasDir {
    /// Where stored schemas live (default: $CPR_TOOL_SCHEMAS_DIR, else fixtures/schemas
    /// found from the current directory upwards).
    #[arg(long, value_name = "DIR")]
    pub schemas_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print a stored schema (--version, default the newest) or an image's embedded schema (--image).
    Dump(SchemaDumpArgs),
    /// Compare two schemas both ways: can NEW load OLD's images, can OLD load NEW's?
    Check(SchemaCheckArgs),
}

#[derive(Debug, Args)]
pub struct SchemaDumpArgs {
    /// A VMM version whose schema is stored in the schemas directory (default: the
    /// newest stored version).
    #[arg(long, value_name = "V", conflicts_with = "image")]
    pub version: Option<String>,
    /// An image whose embedded schema to print.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub schemas: SchemasDir,
}

#[derive(Debug, Args)]
pub struct SchemaCheckArgs {
    /// The older schema: a file, a version in the schemas directory, or an image.
    pub old: String,
    /// The newer schema: a file, a version in the schemas directory, or an image.
    pub new: String,
    #[command(flatten)]
    pub schemas: SchemasDir,
    /// The renames table, as for `diff`.
    #[arg(long, value_name = "FILE")]
    pub renames: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// The image file.
    pub image: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The JSON file written by `cpr-tool json` (`-` for stdin).
    pub json_file: PathBuf,
    /// The image file to write.
    #[arg(short, long, value_name = "IMAGE")]
    pub output: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
