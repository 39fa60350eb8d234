//! Output plumbing: one report value, printed as tables for people or JSON for machines.

use std::io::Write;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// A command's result, printable both ways.
pub trait Report: Serialize {
    /// The human rendering: tables and short lines, ending with a newline.
    fn human(&self) -> String;
}

/// Print `report` on stdout as JSON (`json == true`) or as text.
pub fn emit<R: Report>(report: &R, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")?;
    } else {
        out.write_all(report.human().as_bytes())?;
    }
    out.flush()
}

/// A table whose rendering does not depend on the terminal: no colours, no
/// wrapping to the terminal width, so snapshots and pipes see the same text.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .force_no_tty()
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Append a titled table (or "(none)" for an empty one) to `out`.
pub fn section(out: &mut String, title: &str, t: &Table) {
    out.push_str(title);
    out.push('\n');
    if t.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&t.to_string());
        out.push('\n');
    }
}

/// Classic 16-bytes-per-line hex dump with an ASCII column, offsets from `base`.
pub fn hex_dump(bytes: &[u8], base: u64) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let offset = base + (i as u64) * 16;
        out.push_str(&format!("{offset:08x}  "));
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        for &b in chunk {
            out.push(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            });
        }
        out.push_str("|\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hex_dump;

    #[test]
    fn hex_dump_layout() {
        let dump = hex_dump(b"CPR\x00abcdefghijklmnopq", 0x10);
        assert_eq!(
            dump,
            "00000010  43 50 52 00 61 62 63 64  65 66 67 68 69 6a 6b 6c  |CPR.abcdefghijkl|\n\
             00000020  6d 6e 6f 70 71                                    |mnopq|\n"
        );
    }
}
