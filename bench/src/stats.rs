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

/// What each extra vCPU adds to the median: (median(`many`) - median(`one`)) / (`n_many` -
/// `n_one`) over two sample sets, with a 90% bootstrap interval (2000 resamples of each
/// set, seeded: the same samples always give the same interval). `None` without samples or
/// with `n_many <= n_one`.
pub fn per_extra(one: &[f64], n_one: u8, many: &[f64], n_many: u8) -> Option<PerExtra> {
    if n_many <= n_one {
        return None;
    }
    let span = f64::from(n_many - n_one);
    let slope = |a: &[f64], b: &[f64]| Some((summarize(b)?.median - summarize(a)?.median) / span);
    let estimate = slope(one, many)?;
    // xorshift64*: a fixed, dependency-free generator is enough to pick resample indices.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |len: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % len as u64) as usize
    };
    let mut resampled: Vec<f64> = (0..2000)
        .filter_map(|_| {
            let a: Vec<f64> = (0..one.len()).map(|_| one[next(one.len())]).collect();
            let b: Vec<f64> = (0..many.len()).map(|_| many[next(many.len())]).collect();
            slope(&a, &b)
        })
        .collect();
    resampled.sort_by(|a, b| a.total_cmp(b));
    Some(PerExtra {
        estimate,
        low: rank(&resampled, 0.05),
        high: rank(&resampled, 0.95),
    })
}

/// [`per_extra`]'s result, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerExtra {
    pub estimate: f64,
    /// The 90% bootstrap interval.
    pub low: f64,
    pub high: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_extra_is_the_median_difference_per_unit_with_an_interval_around_it() {
        let one = [3.0, 3.1, 2.9, 3.0, 3.2];
        let eight = [4.4, 4.3, 4.5, 4.4, 4.6];
        let p = per_extra(&one, 1, &eight, 8).unwrap();
        assert!((p.estimate - 0.2).abs() < 1e-9, "{p:?}");
        assert!(p.low <= p.estimate && p.estimate <= p.high, "{p:?}");
        assert!(p.high - p.low < 0.1, "tight samples, tight interval: {p:?}");
        assert_eq!(
            per_extra(&one, 1, &eight, 8),
            Some(p),
            "seeded: reproducible"
        );
        assert!(per_extra(&one, 8, &eight, 1).is_none());
        assert!(per_extra(&[], 1, &eight, 8).is_none());
    }

    #[test]
    fn median_p90_max() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!((s.median, s.p90, s.max, s.n), (5.5, 9.0, 10.0, 10));
        let one = summarize(&[2.5]).unwrap();
        assert_eq!((one.median, one.p90, one.max), (2.5, 2.5, 2.5));
        assert!(summarize(&[]).is_none());
    }
}
