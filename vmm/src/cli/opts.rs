//! QEMU's option-value syntax ("QemuOpts"): `implied,key=value,key2=value2`, where `,,` is a
//! literal comma and a bare `key` means `key=on`.

/// One parsed option value: an optional implied first value plus ordered key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opts {
    pub implied: Option<String>,
    pub pairs: Vec<(String, String)>,
}

/// Splits on single commas; `,,` stands for one literal comma (QEMU's escape).
fn split_commas(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

impl Opts {
    /// Parses `s`; when `implied_key` is given, a first element without `=` is the value of
    /// that key (e.g. the backend of `-chardev socket,...`).
    pub fn parse(s: &str, implied_key: Option<&str>) -> Opts {
        let mut opts = Opts::default();
        for (i, part) in split_commas(s).into_iter().enumerate() {
            match part.split_once('=') {
                Some((k, v)) => opts.pairs.push((k.to_string(), v.to_string())),
                None if i == 0 && implied_key.is_some() => opts.implied = Some(part),
                None => opts.pairs.push((part, "on".to_string())),
            }
        }
        opts
    }

    /// The value of `key` (the last one wins, as in QEMU), or the implied value for it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Keys present that are not in `allowed` (the first one found), to report as invalid.
    pub fn unknown_key(&self, allowed: &[&str]) -> Option<&str> {
        self.pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !allowed.contains(k))
    }
}

/// QEMU's boolean spelling: on/off, yes/no, true/false.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// QEMU's size syntax: a number with an optional k/K, M, G, T, P or E suffix (powers of 1024).
/// `default_unit` is the multiplier when no suffix is given (MiB for `-m`, bytes elsewhere).
pub fn parse_size(value: &str, default_unit: u64) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (num, suffix) = value.split_at(split);
    let unit: u64 = match suffix {
        "" => default_unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Some((int, frac)) = num.split_once('.') {
        // Fractions (e.g. 1.5G) as QEMU accepts them; computed in integers to stay exact.
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return None;
        }
        let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let frac_digits = frac.len().min(18) as u32;
        let frac_val: u64 = if frac.is_empty() {
            0
        } else {
            frac[..frac_digits as usize].parse().ok()?
        };
        let whole = int.checked_mul(unit)?;
        let part = (frac_val as u128 * unit as u128) / 10u128.pow(frac_digits);
        return whole.checked_add(u64::try_from(part).ok()?);
    }
    num.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_escape_and_implied_key() {
        let o = Opts::parse("socket,path=/tmp/a,,b,server=on,wait", Some("backend"));
        assert_eq!(o.implied.as_deref(), Some("socket"));
        assert_eq!(o.get("path"), Some("/tmp/a,b"));
        assert_eq!(o.get("server"), Some("on"));
        assert_eq!(o.get("wait"), Some("on"));
        assert_eq!(o.unknown_key(&["path", "server"]), Some("wait"));
    }

    #[test]
    fn sizes_follow_qemu_suffixes() {
        assert_eq!(parse_size("512", 1 << 20), Some(512 << 20));
        assert_eq!(parse_size("1G", 1 << 20), Some(1 << 30));
        assert_eq!(parse_size("64k", 1), Some(64 << 10));
        assert_eq!(parse_size("1.5G", 1), Some(3 << 29));
        assert_eq!(parse_size("4096", 1), Some(4096));
        assert_eq!(parse_size("", 1), None);
        assert_eq!(parse_size("12Q", 1), None);
        assert_eq!(parse_size("foo", 1), None);
        assert_eq!(parse_size("99999999999E", 1), None);
    }
}
