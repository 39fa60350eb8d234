//! Field globs for `diff --ignore`: `*` matches any run of characters
//! (including `/` and `.`, so `*.tsc` reaches every section), `?` one character.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("cpu.regs/*.rip", "cpu.regs/1.rip"));
        assert!(!matches("cpu.regs/*.rip", "cpu.regs/1.rax"));
        assert!(matches("*tsc*", "cpu.msrs/0.tsc_offset"));
        assert!(matches("serial/0.l?r", "serial/0.lcr"));
        assert!(matches("*", ""));
        assert!(!matches("a", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }
}
