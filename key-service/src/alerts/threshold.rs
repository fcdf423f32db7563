//! Which budget thresholds a spend crossed. Pure arithmetic, so its edges (49 → 50, a
//! jump over several at once, the ends of i64) are unit tests; the store calls it from
//! the one place a spend is billed (`store::alerts::budget_crossed`).

use std::fmt;
use std::str::FromStr;

/// The highest threshold accepted, in percent: a budget can be overdrawn (a request costs
/// more than its estimate), so 150 % may be worth a warning; past 1,000 % is a typo.
pub const MAX_PERCENT: u16 = 1000;

/// Percentages of a budget to alert at, ascending and without duplicates, each from 1 to
/// [`MAX_PERCENT`] (`KEYGATE_ALERT_THRESHOLDS`, default `50,80,100`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds(Vec<u16>);

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds(vec![50, 80, 100])
    }
}

impl Thresholds {
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }

    /// The thresholds that the used amount passed going from `before` to `after` of
    /// `budget`: each `t` with `before < t % of budget <= after`, in ascending order.
    /// Exact for any i64 (the products are taken in i128); a budget of 0 or less has
    /// nothing to cross.
    pub fn crossed(&self, budget: i64, before: i64, after: i64) -> Vec<u16> {
        if budget <= 0 || after <= before {
            return Vec::new();
        }
        let (budget, before, after) = (i128::from(budget), i128::from(before), i128::from(after));
        self.0
            .iter()
            .copied()
            .filter(|&t| {
                let mark = i128::from(t) * budget;
                before * 100 < mark && mark <= after * 100
            })
            .collect()
    }
}

/// Whether a spend from `before` to `after` used the whole `budget` up (crossed 100 %).
pub fn exhausted(budget: i64, before: i64, after: i64) -> bool {
    budget > 0 && before < budget && after >= budget
}

impl FromStr for Thresholds {
    type Err = String;

    /// `"50,80,100"`: whole percentages, in any order; duplicates are dropped.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let t: u16 = part
                .parse()
                .ok()
                .filter(|t| (1..=MAX_PERCENT).contains(t))
                .ok_or_else(|| {
                    format!("{part:?} is not a whole percentage from 1 to {MAX_PERCENT}")
                })?;
            out.push(t);
        }
        out.sort_unstable();
        out.dedup();
        Ok(Thresholds(out))
    }
}

impl fmt::Display for Thresholds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(text: &str) -> Thresholds {
        text.parse().unwrap()
    }

    #[test]
    fn reaching_a_threshold_exactly_crosses_it_and_one_short_does_not() {
        let d = Thresholds::default();
        assert_eq!(d.crossed(100, 48, 49), Vec::<u16>::new());
        assert_eq!(d.crossed(100, 49, 50), [50]);
        // Already at 50: a later spend does not cross it again.
        assert_eq!(d.crossed(100, 50, 51), Vec::<u16>::new());
        assert_eq!(d.crossed(100, 79, 80), [80]);
        assert_eq!(d.crossed(100, 99, 100), [100]);
        // Odd budgets: 50 % of 3 is 1.5, crossed at 2.
        assert_eq!(d.crossed(3, 1, 2), [50]);
    }

    #[test]
    fn a_jump_over_several_thresholds_crosses_each_once() {
        let d = Thresholds::default();
        assert_eq!(d.crossed(100, 10, 100), [50, 80, 100]);
        assert_eq!(d.crossed(100, 10, 5_000), [50, 80, 100]);
        assert_eq!(d.crossed(100, 60, 90), [80]);
    }

    #[test]
    fn no_budget_or_no_spend_crosses_nothing() {
        let d = Thresholds::default();
        assert!(d.crossed(0, 0, 10).is_empty());
        assert!(d.crossed(-5, 0, 10).is_empty());
        assert!(d.crossed(100, 90, 90).is_empty());
        assert!(
            d.crossed(100, 90, 10).is_empty(),
            "a refund is not a crossing"
        );
    }

    #[test]
    fn the_ends_of_i64_neither_overflow_nor_miss() {
        let d = Thresholds::default();
        let max = i64::MAX;
        assert_eq!(d.crossed(max, 0, max), [50, 80, 100]);
        assert_eq!(d.crossed(max, max / 2, max / 2 + 1), [50]);
        assert_eq!(d.crossed(max, max - 1, max), [100]);
        assert!(d.crossed(max, max, max).is_empty());
        assert_eq!(d.crossed(1, i64::MIN, max), [50, 80, 100]);
        assert_eq!(t("1000").crossed(max, 0, max), Vec::<u16>::new());
        assert_eq!(t("1000").crossed(1, 0, max), [1000]);
        assert!(exhausted(max, max - 1, max));
        assert!(!exhausted(max, max, max));
        assert!(!exhausted(0, 0, max));
    }

    #[test]
    fn thresholds_parse_sorted_and_refuse_nonsense() {
        assert_eq!(t("100, 50,80,50").as_slice(), [50, 80, 100]);
        assert_eq!(t("").as_slice(), [] as [u16; 0]);
        assert_eq!(t("90").to_string(), "90");
        for bad in ["0", "1001", "-5", "x", "50%", "1.5"] {
            assert!(bad.parse::<Thresholds>().is_err(), "{bad}");
        }
    }

    proptest! {
        /// However a budget is spent, in however many steps, each threshold is crossed
        /// exactly once by the time the spend reaches it, and never before.
        #[test]
        fn spending_in_steps_crosses_each_threshold_once(
            budget in 1i64..1_000_000,
            steps in proptest::collection::vec(0i64..400_000, 1..40),
        ) {
            let d = Thresholds::default();
            let mut used = 0i64;
            let mut seen = Vec::new();
            for step in steps {
                let after = used.saturating_add(step);
                seen.extend(d.crossed(budget, used, after));
                used = after;
            }
            let want: Vec<u16> = d
                .as_slice()
                .iter()
                .copied()
                .filter(|&t| i128::from(t) * i128::from(budget) <= i128::from(used) * 100)
                .collect();
            prop_assert_eq!(seen, want);
        }
    }
}
