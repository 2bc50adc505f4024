//! Durations as people read and type them: the collector counts in
//! nanoseconds (`u64`), messages and reports print them with a unit, and the
//! command line parses them back.
//!
//! Two formats, because two kinds of output have settled on them:
//! [`fmt_ns_brief`] in finding messages (`12.3ms`), [`fmt_ns_precise`] in the
//! CI reports and trace notes (`12.345ms`). Both are deterministic, so
//! snapshots of either stay stable.

/// Appends `v` in decimal, as `{}` writes it, without the formatting
/// machinery (`itoa`): labels, keys and trace lines are made for every
/// finding, each with a few numbers in it.
pub fn push_decimal(s: &mut String, v: u64) {
    s.push_str(itoa::Buffer::new().format(v));
}

/// Appends `v` in decimal with at least `width` digits (zeros in front), as
/// `{:0width$}` writes it.
pub fn push_decimal_padded(s: &mut String, v: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v);
    s.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    s.push_str(digits);
}

/// Formats nanoseconds for a finding's message: two decimals in seconds,
/// one in milliseconds and microseconds, whole nanoseconds below
/// (`1.50s`, `12.3ms`, `4.5µs`, `12ns`).
pub fn fmt_ns_brief(ns: u64) -> String {
    fmt_ns_with(ns, 2, 1)
}

/// Appends [`fmt_ns_brief`]'s text of `ns` to `s`.
pub fn push_ns_brief(s: &mut String, ns: u64) {
    push_ns_with(s, ns, 2, 1);
}

/// Formats nanoseconds for the CI reports and timeline notes: three
/// decimals in seconds and milliseconds (microsecond resolution), one in
/// microseconds, whole nanoseconds below (`1.500s`, `1.234ms`, `4.5µs`,
/// `12ns`).
pub fn fmt_ns_precise(ns: u64) -> String {
    fmt_ns_with(ns, 3, 3)
}

/// Nanoseconds with a unit: `s_decimals` decimals in seconds, `ms_decimals`
/// in milliseconds, one in microseconds, whole nanoseconds below.
fn fmt_ns_with(ns: u64, s_decimals: usize, ms_decimals: usize) -> String {
    let mut s = String::with_capacity(24);
    push_ns_with(&mut s, ns, s_decimals, ms_decimals);
    s
}

/// Appends [`fmt_ns_with`]'s text of `ns` to `s`.
fn push_ns_with(s: &mut String, ns: u64, s_decimals: usize, ms_decimals: usize) {
    let (unit, decimals, suffix) = if ns >= 1_000_000_000 {
        (1_000_000_000, s_decimals, "s")
    } else if ns >= 1_000_000 {
        (1_000_000, ms_decimals, "ms")
    } else if ns >= 1_000 {
        (1_000, 1, "µs")
    } else {
        push_decimal(s, ns);
        s.push_str("ns");
        return;
    };
    if fixed(s, ns, unit, decimals, suffix) {
        return;
    }
    use std::fmt::Write;
    // Writing to a `String` does not fail.
    let _ = write!(s, "{:.*}{suffix}", decimals, ns as f64 / unit as f64);
}

/// Appends `ns / unit` with `decimals` decimals and `suffix` to `s`, by
/// integers, as `{:.*}` writes the `f64` quotient (a finding's message formats two
/// durations, and formatting a float to a precision costs about a thousand
/// instructions). False, `s` left as it was, where the two could differ: a quotient exactly
/// half a last digit from two roundings (the float's rounding of its own
/// value decides), a value too large for the float to be within an eighth
/// of a nanosecond of it, or a unit the decimals do not divide.
///
/// Exact otherwise: `ns` below 2^50 converts to `f64` exactly, and the
/// quotient the division rounds is within `ns / unit * 2^-53` (under an
/// eighth of a nanosecond, in the unit) of the true one, which is at least
/// half a nanosecond from any half of a last digit: both round alike.
fn fixed(s: &mut String, ns: u64, unit: u64, decimals: usize, suffix: &str) -> bool {
    let Some(scale) = u32::try_from(decimals)
        .ok()
        .and_then(|d| 10u64.checked_pow(d))
    else {
        return false;
    };
    if ns >= 1 << 50 || !unit.is_multiple_of(scale) {
        return false;
    }
    // Nanoseconds per last digit.
    let step = unit / scale;
    let (q, r) = (ns / step, ns % step);
    if r * 2 == step {
        return false;
    }
    let q = if r * 2 > step { q + 1 } else { q };
    push_decimal(s, q / scale);
    if decimals > 0 {
        s.push('.');
        push_decimal_padded(s, q % scale, decimals);
    }
    s.push_str(suffix);
    true
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in ns.
pub fn iso8601(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The unit of a number typed without one: each option that takes a
/// duration says which, since a bare `1000` means different things to
/// `report --from` (a timestamp in nanoseconds) and to `demo --duration`
/// (a run time in seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    /// A bare number is nanoseconds.
    Nanos,
    /// A bare number is seconds.
    Secs,
}

impl Bare {
    fn per_unit_ns(self) -> f64 {
        match self {
            Bare::Nanos => 1.0,
            Bare::Secs => 1e9,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bare::Nanos => "nanoseconds",
            Bare::Secs => "seconds",
        }
    }
}

/// Parses a duration into nanoseconds: a non-negative decimal number with a
/// unit (`ns`, `us` or `µs`, `ms`, `s`, `m` for minutes; `1.5s`, `200ms`,
/// `2m`) or without one, then in the unit `bare` says. Spaces around the
/// number are ignored; values too large for `u64` saturate.
pub fn parse_duration(s: &str, bare: Bare) -> Result<u64, String> {
    let s = s.trim();
    let (num, ns_per_unit) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e9)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e9)
    } else {
        (s, bare.per_unit_ns())
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!(
            "bad duration `{s}` (examples: 1.5s, 200ms, 30us, 2m; a bare number is {})",
            bare.name()
        )
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration `{s}`"));
    }
    Ok((v * ns_per_unit).round() as u64)
}

/// Parses a size in bytes: a non-negative number with a binary unit
/// (`KiB`, `MiB`, `GiB`, also written `K`, `M`, `G`, `KB`, `MB`, `GB`,
/// any case: all are powers of 1024) or without one (bytes).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("bad size `{t}` (examples: 128MiB, 1GiB, 512M)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad size `{t}` (examples: 128MiB, 1GiB, 512M)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad size `{t}`"));
    }
    Ok((v * mult).round().min(usize::MAX as f64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size(" 512 M ").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5TB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn parses_units_and_bare_numbers() {
        for bare in [Bare::Nanos, Bare::Secs] {
            assert_eq!(parse_duration("1.5s", bare).unwrap(), 1_500_000_000);
            assert_eq!(parse_duration("200ms", bare).unwrap(), 200_000_000);
            assert_eq!(parse_duration("30us", bare).unwrap(), 30_000);
            assert_eq!(parse_duration("30µs", bare).unwrap(), 30_000);
            assert_eq!(parse_duration("10ns", bare).unwrap(), 10);
            assert_eq!(parse_duration("2m", bare).unwrap(), 120_000_000_000);
            assert_eq!(parse_duration(" 5 s ", bare).unwrap(), 5_000_000_000);
            assert!(parse_duration("soon", bare).is_err());
            assert!(parse_duration("", bare).is_err());
            assert!(parse_duration("-1s", bare).is_err());
            assert!(parse_duration("5h", bare).is_err());
        }
        assert_eq!(parse_duration("1000", Bare::Nanos).unwrap(), 1000);
        assert_eq!(parse_duration("1.5", Bare::Secs).unwrap(), 1_500_000_000);
        let e = parse_duration("x", Bare::Secs).unwrap_err();
        assert!(e.contains("a bare number is seconds"), "{e}");
    }

    /// Integers are appended as `{}` and `{:0width$}` write them.
    #[test]
    fn decimals_are_written_as_format_writes_them() {
        let mut values: Vec<u64> = vec![0, 1, 9, 10, 99, 100, u64::MAX, u64::MAX - 1];
        values.extend((0..20).map(|k| 10u64.pow(k)));
        values.extend((1..20).map(|k| 10u64.pow(k) - 1));
        values.extend((0..64).map(|k| 1u64 << k));
        for v in values {
            let mut s = String::from("x");
            push_decimal(&mut s, v);
            assert_eq!(s, format!("x{v}"));
            for width in [0, 1, 2, 3, 5, 20, 25] {
                let mut s = String::new();
                push_decimal_padded(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$}"), "{v} at {width}");
            }
        }
    }

    #[test]
    fn formats_at_two_precisions() {
        assert_eq!(fmt_ns_precise(1_500_000), "1.500ms");
        assert_eq!(fmt_ns_precise(2_000_000_000), "2.000s");
        assert_eq!(fmt_ns_precise(12), "12ns");
        assert_eq!(fmt_ns_brief(1_500_000), "1.5ms");
        assert_eq!(fmt_ns_brief(2_000_000_000), "2.00s");
        assert_eq!(fmt_ns_brief(4_500), "4.5µs");
        assert_eq!(fmt_ns_brief(12), "12ns");
    }

    /// Durations written by integers are what formatting the float quotient
    /// writes: at each unit's boundaries, at and around every kind of tie,
    /// and at values spread over the range (a fixed pseudo-random walk).
    #[test]
    fn durations_are_written_as_the_float_quotient_would_be() {
        let float = |ns: u64, s_dec: usize, ms_dec: usize| {
            if ns >= 1_000_000_000 {
                format!("{:.*}s", s_dec, ns as f64 / 1e9)
            } else if ns >= 1_000_000 {
                format!("{:.*}ms", ms_dec, ns as f64 / 1e6)
            } else if ns >= 1_000 {
                format!("{:.1}µs", ns as f64 / 1e3)
            } else {
                format!("{ns}ns")
            }
        };
        let mut values = vec![0, 1, 999, 1_000, 999_949, 999_950, 999_999, u64::MAX];
        for base in [1_000u64, 1_000_000, 1_000_000_000] {
            for m in [1u64, 2, 7, 10, 99, 999, 1_000, 123_456] {
                for d in [0u64, 1, 49, 50, 51, 499, 500, 501, 4_999, 5_000, 5_001] {
                    for k in [1u64, 10, 100, 1_000, 10_000, 100_000, 1_000_000] {
                        values.push((base * m).saturating_add(d * k / 10));
                        values.push((base * m).saturating_add(d * k));
                        values.push((base * m).saturating_sub(d * k));
                    }
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for ns in values {
            assert_eq!(fmt_ns_brief(ns), float(ns, 2, 1), "{ns}");
            assert_eq!(fmt_ns_precise(ns), float(ns, 3, 3), "{ns}");
        }
    }
}
