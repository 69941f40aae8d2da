//! Money: integer nano-USD (`u64`) everywhere inside tollgate.
//!
//! Decimal strings appear only at the edges (config, headers, JSON, metrics):
//! [`parse_usd`] turns one into nano-USD exactly, without floating point, and
//! [`format_usd`] turns nano-USD back into the shortest exact decimal string.
//! Providers that report a cost as a JSON float (OpenRouter `usage.cost`) go
//! through [`usd_f64_to_nusd`], which reads the float's shortest decimal form
//! so that `0.95` becomes exactly 950 000 000 nano-USD.

use std::fmt::Write as _;

/// Nano-USD in one US dollar.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

/// Decimal places of a nano-USD amount.
const NANO_DECIMALS: u32 = 9;

/// Why a decimal USD string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The string was empty.
    #[error("empty amount")]
    Empty,
    /// The amount was negative.
    #[error("negative amount: {0:?}")]
    Negative(String),
    /// The string was not a plain decimal number.
    #[error("not a decimal USD amount: {0:?}")]
    Invalid(String),
    /// More than nine decimals (finer than one nano-USD).
    #[error("more than 9 decimals (finer than one nano-USD): {0:?}")]
    TooPrecise(String),
    /// The amount does not fit in a `u64` of nano-USD.
    #[error("amount too large: {0:?}")]
    Overflow(String),
}

/// Parses a decimal USD amount (`"100"`, `"100.00"`, `"3.75"`,
/// `"0.000000001"`) into nano-USD, exactly.
///
/// Accepted: ASCII digits, optionally followed by `.` and one to nine more
/// digits. Rejected: an empty string, a sign (negative amounts in particular),
/// whitespace, exponents, more than nine decimals, and amounts above
/// `u64::MAX` nano-USD (about 18.4 billion USD).
pub fn parse_usd(s: &str) -> Result<u64, MoneyError> {
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    if s.starts_with('-') {
        return Err(MoneyError::Negative(s.to_owned()));
    }
    let invalid = || MoneyError::Invalid(s.to_owned());
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let frac = match frac {
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => return Err(invalid()),
        Some(f) => f,
        None => "",
    };
    if frac.len() > NANO_DECIMALS as usize {
        return Err(MoneyError::TooPrecise(s.to_owned()));
    }
    let overflow = || MoneyError::Overflow(s.to_owned());
    let mut nanos: u64 = 0;
    for b in int.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    nanos = nanos.checked_mul(NANOS_PER_USD).ok_or_else(overflow)?;
    let mut frac_nanos: u64 = 0;
    for b in frac.bytes() {
        frac_nanos = frac_nanos * 10 + u64::from(b - b'0');
    }
    // Pad the fraction to nine digits: "75" → 750_000_000.
    let missing = NANO_DECIMALS - frac.len() as u32;
    frac_nanos *= 10u64.pow(missing);
    nanos.checked_add(frac_nanos).ok_or_else(overflow)
}

/// Formats nano-USD as the shortest exact decimal string with at least two
/// decimals: `1_500_000_000` → `"1.50"`, `123` → `"0.000000123"`,
/// `0` → `"0.00"`, `1_234_500_000` → `"1.2345"`.
///
/// The result always parses back to the same value with [`parse_usd`].
pub fn format_usd(nusd: u64) -> String {
    let int = nusd / NANOS_PER_USD;
    let frac = nusd % NANOS_PER_USD;
    let mut out = String::with_capacity(24);
    // Writing to a String cannot fail.
    let _ = write!(out, "{int}.{frac:09}");
    // Trim trailing zeros, keeping at least two decimals.
    let keep = out.len() - (NANO_DECIMALS as usize - 2);
    while out.len() > keep && out.ends_with('0') {
        out.pop();
    }
    out
}

/// Converts a provider-reported USD amount (a JSON float, e.g. OpenRouter's
/// `usage.cost`) into nano-USD.
///
/// The float is read through its shortest decimal representation, not by
/// multiplying in floating point, so `0.95` is exactly 950 000 000. Digits
/// beyond the ninth decimal are rounded half up. Returns `None` for negative,
/// NaN or infinite values and for amounts that do not fit in a `u64`.
pub fn usd_f64_to_nusd(v: f64) -> Option<u64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    if v == 0.0 {
        // Also covers -0.0, whose text form carries a sign.
        return Some(0);
    }
    decimal_to_nanos_rounded(&format!("{v}"))
}

/// Reads a non-negative decimal with an optional exponent (`"0.95"`,
/// `"1e-7"`, `"2.5E3"`) into nano-USD, rounding half up past nine decimals.
fn decimal_to_nanos_rounded(s: &str) -> Option<u64> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    // value = digits × 10^(exp − frac.len()); nanos = digits × 10^(shift).
    let mut digits: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        digits = digits.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let shift = i64::from(exp) - frac.len() as i64 + i64::from(NANO_DECIMALS);
    let nanos = if shift >= 0 {
        if digits == 0 {
            0
        } else {
            let pow = 10u128.checked_pow(u32::try_from(shift).ok()?)?;
            digits.checked_mul(pow)?
        }
    } else {
        match 10u128.checked_pow(u32::try_from(-shift).ok()?) {
            Some(pow) => (digits + pow / 2) / pow,
            // Smaller than any representable fraction of a nano-USD.
            None => 0,
        }
    };
    u64::try_from(nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_amounts() {
        assert_eq!(parse_usd("100"), Ok(100 * NANOS_PER_USD));
        assert_eq!(parse_usd("100.00"), Ok(100 * NANOS_PER_USD));
        assert_eq!(parse_usd("3.75"), Ok(3_750_000_000));
        assert_eq!(parse_usd("0.000000001"), Ok(1));
        assert_eq!(parse_usd("0"), Ok(0));
        assert_eq!(parse_usd("0.075"), Ok(75_000_000));
        assert_eq!(parse_usd("007.5"), Ok(7_500_000_000));
        assert_eq!(parse_usd("18446744073.709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rejects_bad_amounts() {
        assert_eq!(parse_usd(""), Err(MoneyError::Empty));
        assert!(matches!(parse_usd("-1"), Err(MoneyError::Negative(_))));
        assert!(matches!(parse_usd("-0.5"), Err(MoneyError::Negative(_))));
        for bad in [
            "abc", "1.2.3", ".5", "5.", "+5", " 5", "5 ", "1e3", "1,5", "$5", ".",
        ] {
            assert!(
                matches!(parse_usd(bad), Err(MoneyError::Invalid(_))),
                "{bad:?} should be invalid"
            );
        }
        assert!(matches!(
            parse_usd("0.0000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_usd("18446744073.709551616"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            parse_usd("99999999999999999999999"),
            Err(MoneyError::Overflow(_))
        ));
    }

    #[test]
    fn error_messages_show_the_input() {
        let e = parse_usd("abc").unwrap_err();
        assert_eq!(e.to_string(), "not a decimal USD amount: \"abc\"");
    }

    #[test]
    fn formats_shortest_with_two_decimals() {
        assert_eq!(format_usd(1_500_000_000), "1.50");
        assert_eq!(format_usd(123), "0.000000123");
        assert_eq!(format_usd(0), "0.00");
        assert_eq!(format_usd(1_234_500_000), "1.2345");
        assert_eq!(format_usd(100 * NANOS_PER_USD), "100.00");
        assert_eq!(format_usd(10_000_000), "0.01");
        assert_eq!(format_usd(1_000_000), "0.001");
        assert_eq!(format_usd(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn format_round_trips() {
        for v in [
            0,
            1,
            9,
            10,
            999_999_999,
            1_000_000_000,
            3_750_000_000,
            u64::MAX,
        ] {
            assert_eq!(parse_usd(&format_usd(v)), Ok(v));
        }
    }

    #[test]
    fn floats_go_through_their_decimal_form() {
        assert_eq!(usd_f64_to_nusd(0.95), Some(950_000_000));
        assert_eq!(usd_f64_to_nusd(0.1 + 0.2), Some(300_000_000)); // 0.30000000000000004
        assert_eq!(usd_f64_to_nusd(1e-7), Some(100));
        assert_eq!(usd_f64_to_nusd(1.5e-9), Some(2)); // half up
        assert_eq!(usd_f64_to_nusd(1.4e-9), Some(1));
        assert_eq!(usd_f64_to_nusd(1e-30), Some(0));
        assert_eq!(usd_f64_to_nusd(0.0008), Some(800_000));
        assert_eq!(usd_f64_to_nusd(12.0), Some(12 * NANOS_PER_USD));
        assert_eq!(usd_f64_to_nusd(0.0), Some(0));
        assert_eq!(usd_f64_to_nusd(-0.0), Some(0));
    }

    #[test]
    fn floats_reject_negative_nan_inf_and_huge() {
        assert_eq!(usd_f64_to_nusd(-0.5), None);
        assert_eq!(usd_f64_to_nusd(f64::NAN), None);
        assert_eq!(usd_f64_to_nusd(f64::INFINITY), None);
        assert_eq!(usd_f64_to_nusd(f64::NEG_INFINITY), None);
        assert_eq!(usd_f64_to_nusd(1e300), None);
        assert_eq!(usd_f64_to_nusd(f64::MAX), None);
    }

    #[test]
    fn exponent_forms_are_read() {
        assert_eq!(decimal_to_nanos_rounded("1e-7"), Some(100));
        assert_eq!(
            decimal_to_nanos_rounded("2.5E3"),
            Some(2_500 * NANOS_PER_USD)
        );
        assert_eq!(decimal_to_nanos_rounded("9.5e-10"), Some(1));
        assert_eq!(decimal_to_nanos_rounded("e5"), None);
        assert_eq!(decimal_to_nanos_rounded("1e"), None);
        assert_eq!(decimal_to_nanos_rounded("x"), None);
    }
}
