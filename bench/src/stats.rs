//! Median, p90 and max of a handful of samples.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub n: usize,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `None` for no samples.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Some(Summary {
        median,
        p90: rank(&s, 0.9),
        max: s[s.len() - 1],
        n: s.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_p90_max() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!((s.median, s.p90, s.max, s.n), (5.5, 9.0, 10.0, 10));
        let one = summarize(&[2.5]).unwrap();
        assert_eq!((one.median, one.p90, one.max), (2.5, 2.5, 2.5));
        assert!(summarize(&[]).is_none());
    }
}
