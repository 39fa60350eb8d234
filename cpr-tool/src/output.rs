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

/// A two-column key/value table without a header row.
pub fn kv_table(rows: &[(&str, String)]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .force_no_tty()
        .set_content_arrangement(ContentArrangement::Disabled);
    for (k, v) in rows {
        t.add_row(vec![(*k).to_owned(), v.clone()]);
    }
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

/// Nanoseconds since the Unix epoch as RFC 3339 UTC (`2026-11-27T06:00:00Z`, with
/// fractional seconds only when present).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod time_tests {
    use super::rfc3339;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_795_759_200 * 1_000_000_000),
            "2026-11-27T06:00:00Z"
        );
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000 + 500_000_000),
            "2000-02-29T00:00:00.5Z"
        );
    }
}

/// A byte count with its binary unit when it is a whole number of them: `256 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (n, 0);
    while unit + 1 < UNITS.len() && v != 0 && v % 1024 == 0 {
        v /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v} {}", UNITS[unit])
    }
}
