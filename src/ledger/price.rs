//! Micro-credit arithmetic. Balances and charges are whole micro-credits (`i64`); prices are
//! fractional micro-credits per token, kept as exact fixed-point integers so that no float
//! ever touches the ledger.

use std::fmt;

/// Fixed-point scale of a price: one unit is 10⁻⁹ micro-credit per token.
pub const PRICE_SCALE: i64 = 1_000_000_000;
const DECIMALS: u32 = 9;
/// No real model costs a full credit per token; the bound keeps every product inside i128
/// with room to spare and catches a price typed in the wrong unit.
const MAX_PRICE: i64 = 1_000_000 * PRICE_SCALE;
/// The largest fixed price of one tool unit (a web search, a fetched URL): one credit, the
/// same bound as a price per token.
pub const MAX_UNIT_MICRO_CREDITS: i64 = MAX_PRICE / PRICE_SCALE;

/// Micro-credits per token, in units of 10⁻⁹ (so `0.0016` is stored as `1_600_000`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(i64);

impl Price {
    pub const ZERO: Price = Price(0);

    pub fn from_units(units: i64) -> Option<Price> {
        (0..=MAX_PRICE).contains(&units).then_some(Price(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }

    /// Parses a non-negative decimal such as `0.0016`, `2`, `1.5e-3` exactly. More than nine
    /// decimal places would need rounding, so they are refused rather than silently changed.
    pub fn parse(text: &str) -> Result<Price, String> {
        let text = text.trim();
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(at) => {
                let exp: i32 =
                    text[at + 1..].parse().map_err(|_| "not a decimal number".to_string())?;
                (&text[..at], exp)
            }
            None => (text, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err("must be a non-negative decimal number".into());
        }
        let digits: String = format!("{whole}{fraction}").trim_start_matches('0').to_string();
        // value = digits × 10^(exponent - fraction.len()); we want value × 10^9.
        let shift = exponent - fraction.len() as i32 + DECIMALS as i32;
        let too_large = || "is too large".to_string();
        if digits.is_empty() {
            return Ok(Price::ZERO);
        }
        if digits.len() > 30 {
            return Err(too_large());
        }
        let mut units: i128 = digits.parse().map_err(|_| too_large())?;
        if shift >= 0 {
            for _ in 0..shift {
                units = units.checked_mul(10).ok_or_else(too_large)?;
                if units > MAX_PRICE as i128 {
                    return Err(too_large());
                }
            }
        } else {
            for _ in 0..(-shift) {
                if units % 10 != 0 {
                    return Err(format!("must have at most {DECIMALS} decimal places"));
                }
                units /= 10;
            }
        }
        i64::try_from(units).ok().and_then(Price::from_units).ok_or_else(too_large)
    }

    /// Reads a price from admin JSON: a number or a decimal string. serde_json keeps numbers
    /// as f64, whose shortest representation gives back the decimal that was written.
    pub fn from_json(value: &serde_json::Value) -> Result<Price, String> {
        match value {
            serde_json::Value::Number(n) => Price::parse(&n.to_string()),
            serde_json::Value::String(s) => Price::parse(s),
            _ => Err("must be a number".into()),
        }
    }

    /// For display in `/v1/models`; never used for arithmetic.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / PRICE_SCALE as f64
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / PRICE_SCALE;
        let fraction = self.0 % PRICE_SCALE;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let fraction = format!("{fraction:09}");
        write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// A model's two prices as they apply to one license.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: Price,
    pub output: Price,
}

impl Prices {
    /// Exact cost in price units (10⁻⁹ µcr); i128 because tokens × price can pass i64.
    fn units(self, prompt_tokens: u64, completion_tokens: u64) -> i128 {
        prompt_tokens as i128 * self.input.0 as i128
            + completion_tokens as i128 * self.output.0 as i128
    }

    /// `ceil(prompt × input + completion × output)` in whole micro-credits.
    pub fn cost(self, prompt_tokens: u64, completion_tokens: u64) -> i64 {
        ceil_div(self.units(prompt_tokens, completion_tokens))
    }

    /// The most output tokens that `budget` micro-credits pay for after the prompt, or
    /// `None` when the prompt alone does not fit. A free output side has no limit.
    pub fn affordable_output(self, budget: i64, prompt_tokens: u64) -> Option<u64> {
        let left = budget as i128 * PRICE_SCALE as i128 - self.units(prompt_tokens, 0);
        if left < 0 {
            return None;
        }
        if self.output.0 == 0 {
            return Some(u64::MAX);
        }
        Some(u64::try_from(left / self.output.0 as i128).unwrap_or(u64::MAX))
    }
}

fn ceil_div(units: i128) -> i64 {
    let scale = PRICE_SCALE as i128;
    let micro = (units + scale - 1) / scale;
    i64::try_from(micro).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(text: &str) -> Price {
        Price::parse(text).unwrap()
    }

    #[test]
    fn parses_documented_prices_exactly() {
        assert_eq!(price("0.0016").units(), 1_600_000);
        assert_eq!(price("0.24").units(), 240_000_000);
        assert_eq!(price("2").units(), 2 * PRICE_SCALE);
        assert_eq!(price("0.000000001").units(), 1);
        assert_eq!(price("1.5e-3").units(), 1_500_000);
        assert_eq!(price("16e-4").units(), 1_600_000);
        assert_eq!(price(".5").units(), 500_000_000);
        assert_eq!(price("0").units(), 0);
        assert_eq!(price("0.1000000000").units(), 100_000_000);
    }

    #[test]
    fn refuses_what_it_cannot_store_exactly() {
        assert!(Price::parse("0.0000000001").unwrap_err().contains("9 decimal places"));
        assert!(Price::parse("-1").is_err());
        assert!(Price::parse("abc").is_err());
        assert!(Price::parse("").is_err());
        assert!(Price::parse(".").is_err());
        assert!(Price::parse("1e400").is_err());
        assert!(Price::parse("10000000").is_err());
        assert!(Price::parse("1.2.3").is_err());
    }

    #[test]
    fn json_numbers_keep_their_written_decimal() {
        let v: serde_json::Value = serde_json::from_str("0.0064").unwrap();
        assert_eq!(Price::from_json(&v).unwrap().units(), 6_400_000);
        let v: serde_json::Value = serde_json::from_str("0.00001").unwrap();
        assert_eq!(Price::from_json(&v).unwrap().units(), 10_000);
        assert_eq!(Price::from_json(&serde_json::json!("0.048")).unwrap().units(), 48_000_000);
        assert!(Price::from_json(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn displays_the_shortest_exact_decimal() {
        assert_eq!(price("0.0016").to_string(), "0.0016");
        assert_eq!(price("12").to_string(), "12");
        assert_eq!(price("0.000000001").to_string(), "0.000000001");
        assert_eq!(price("0.0016").as_f64(), 0.0016);
    }

    #[test]
    fn cost_rounds_up_to_whole_micro_credits() {
        let p = Prices { input: price("0.0016"), output: price("0.0064") };
        // 25 × 0.0016 + 50 × 0.0064 = 0.36 → 1
        assert_eq!(p.cost(25, 50), 1);
        assert_eq!(p.cost(0, 0), 0);
        // 1000 × 0.0016 + 1000 × 0.0064 = 8 exactly: no rounding up of an exact value
        assert_eq!(p.cost(1000, 1000), 8);
        assert_eq!(p.cost(1001, 1000), 9);
        let claude = Prices { input: price("0.048"), output: price("0.24") };
        // 14 × 0.048 + 12 × 0.24 = 0.672 + 2.88 = 3.552 → 4
        assert_eq!(claude.cost(14, 12), 4);
    }

    #[test]
    fn cost_does_not_overflow_on_huge_counts() {
        let p = Prices { input: Price::from_units(MAX_PRICE).unwrap(), output: Price::ZERO };
        assert_eq!(p.cost(u64::MAX, 0), i64::MAX);
    }

    #[test]
    fn affordable_output_leaves_the_prompt_paid() {
        let p = Prices { input: price("0.5"), output: price("2") };
        // 100 µcr, prompt 10 tokens = 5 µcr, 95 µcr left → 47 output tokens
        assert_eq!(p.affordable_output(100, 10), Some(47));
        assert_eq!(p.affordable_output(4, 10), None);
        assert_eq!(p.affordable_output(5, 10), Some(0));
        let free_output = Prices { input: price("1"), output: Price::ZERO };
        assert_eq!(free_output.affordable_output(10, 1), Some(u64::MAX));
    }
}
