//! The `--lambdas` / `--widths` grammar of `oats-calibrate`: a comma-separated list whose items
//! are values (`0.15`) or inclusive ranges `<start>:<step>:<end>` (`0:0.05:1` is the 21 values
//! 0, 0.05, …, 1), so that a fine grid need not be typed out.

use crate::error::{CalibrateError, Result};

/// Most values one list may expand to: a grid point costs an attack run of its own (tens of
/// seconds on a CPU), so a longer list is a typo, such as a step of 0.0001.
pub const MAX_GRID_POINTS: usize = 1000;

/// Grid values are rounded to this many decimals, so that `0:0.05:1` yields 0.15, not
/// 0.15000000000000002 (which would name its configuration `l0.15000000000000002-w1`).
const DECIMALS: i32 = 12;

/// Parses `text` (the value of `flag`, which names it in errors) into values in the order
/// given, duplicates kept (the caller drops repeated configurations).
pub fn parse_grid(flag: &str, text: &str) -> Result<Vec<f64>> {
    let bad = |item: &str, why: &str| {
        CalibrateError::Invalid(format!("{flag} {text:?}: item {item:?}: {why}"))
    };
    let num = |item: &str, s: &str| -> Result<f64> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| bad(item, &format!("{:?} is not a number", s.trim())))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(bad(item, "not a finite number"))
        }
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let parts: Vec<&str> = item.split(':').collect();
        match parts.as_slice() {
            [v] if v.trim().is_empty() => return Err(bad(item, "empty")),
            [v] => out.push(num(item, v)?),
            [start, step, end] => {
                let (start, step, end) = (num(item, start)?, num(item, step)?, num(item, end)?);
                if step <= 0.0 || end < start {
                    return Err(bad(item, "a range needs step > 0 and start ≤ end"));
                }
                // Counted, not accumulated: no drift, and the end is included despite rounding.
                let steps = ((end - start) / step + 1e-9).floor();
                if steps + 1.0 > (MAX_GRID_POINTS - out.len()) as f64 {
                    return Err(bad(
                        item,
                        &format!("more than {MAX_GRID_POINTS} values in all"),
                    ));
                }
                let scale = 10f64.powi(DECIMALS);
                for k in 0..=(steps as usize) {
                    out.push(((start + k as f64 * step) * scale).round() / scale);
                }
            }
            _ => return Err(bad(item, "expected a value or <start>:<step>:<end>")),
        }
        if out.len() > MAX_GRID_POINTS {
            return Err(bad(
                item,
                &format!("more than {MAX_GRID_POINTS} values in all"),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_to_round_values_with_the_end_included() {
        let g = parse_grid("--lambdas", "0:0.05:1").unwrap_or_default();
        assert_eq!(g.len(), 21);
        assert_eq!(g[3], 0.15);
        assert_eq!(g[7], 0.35);
        assert_eq!(g[20], 1.0);
        assert_eq!(
            parse_grid("--lambdas", "0, 0.15,0.2:0.1:0.4").unwrap_or_default(),
            vec![0.0, 0.15, 0.2, 0.3, 0.4]
        );
    }

    #[test]
    fn bad_items_are_named() {
        for (text, what) in [
            ("0,,1", "empty"),
            ("0,x", "not a number"),
            ("nan", "not a finite number"),
            ("0:0:1", "step > 0"),
            ("1:0.1:0", "start ≤ end"),
            ("0:1", "expected a value"),
            ("0:0.0001:1", "more than 1000"),
        ] {
            match parse_grid("--lambdas", text) {
                Err(CalibrateError::Invalid(m)) => {
                    assert!(m.contains(what) && m.contains("--lambdas"), "{text}: {m}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
