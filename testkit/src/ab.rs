//! The figures of an alternated A/B benchmark: the median of the per-pair
//! ratios (B over A), and its order-balanced form, the median of the
//! geometric means of consecutive pairs (whose orders alternate, so a
//! position effect cancels out within each couple).

/// What [`summarize`] finds in a list of per-pair ratios.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Median, smallest and largest of the ratios.
    pub median: f64,
    /// The smallest ratio.
    pub min: f64,
    /// The largest ratio.
    pub max: f64,
    /// How many couples of consecutive pairs were balanced.
    pub couples: usize,
    /// Median, smallest and largest of the couples' geometric means
    /// (`NaN` when there is no couple).
    pub balanced_median: f64,
    /// The smallest couple's geometric mean.
    pub balanced_min: f64,
    /// The largest couple's geometric mean.
    pub balanced_max: f64,
}

/// The median of `values` (`NaN` for none).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2] + sorted[(sorted.len() - 1) / 2]) / 2.0
}

/// The figures of `ratios`, one per pair, in the order the pairs ran.
pub fn summarize(ratios: &[f64]) -> Summary {
    let balanced: Vec<f64> = ratios
        .chunks_exact(2)
        .map(|couple| (couple[0] * couple[1]).sqrt())
        .collect();
    let low = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
    let high = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    Summary {
        median: median(ratios),
        min: low(ratios),
        max: high(ratios),
        couples: balanced.len(),
        balanced_median: median(&balanced),
        balanced_min: low(&balanced),
        balanced_max: high(&balanced),
    }
}

impl std::fmt::Display for Summary {
    /// Two lines: the median ratio, and the order-balanced median.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "median B/A {:.3} (min {:.3}, max {:.3})",
            self.median, self.min, self.max
        )?;
        write!(
            f,
            "order-balanced median B/A {:.3} over {} couples of pairs (min {:.3}, max {:.3})",
            self.balanced_median, self.couples, self.balanced_min, self.balanced_max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alternating_position_effect_cancels_in_the_balanced_median() {
        // B wins by 25 % in one order and loses by 20 % in the other.
        let s = summarize(&[1.25, 0.8, 1.25, 0.8, 1.25]);
        assert_eq!(s.median, 1.25);
        assert_eq!((s.min, s.max), (0.8, 1.25));
        assert_eq!(s.couples, 2);
        assert!((s.balanced_median - 1.0).abs() < 1e-12);
        assert!(summarize(&[]).median.is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0, 4.0]), 2.5);
    }
}
