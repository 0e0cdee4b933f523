//! Time bounds as people write them for reports: `7d`, `24h`, `30m`, `2w` (ago), a UTC
//! date `2026-11-01` (midnight; a day its month has), or unix milliseconds.

/// Parse a bound into unix milliseconds, relative to `now_ms`.
pub fn parse(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("\"{s}\" is not a time: use 7d, 24h, 30m, 2w, a date like 2026-11-01, or unix milliseconds");
    if let Some((y, rest)) = t.split_once('-') {
        let (m, d) = rest.split_once('-').ok_or_else(bad)?;
        let (y, m, d): (i32, u8, u8) =
            (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
        // Shaped like a date, so the error says what is wrong with it: someone who wrote
        // 2026-02-31 meant a date, and a list of the other forms would not tell them why.
        let not_a_date = |why: String| format!("\"{s}\" is not a date: {why}");
        let month = time::Month::try_from(m).map_err(|_| not_a_date("months run from 1 to 12".into()))?;
        let days = month.length(y);
        if !(1..=days).contains(&d) {
            return Err(not_a_date(format!("{month} {y} has days 1 to {days}")));
        }
        let date = time::Date::from_calendar_date(y, month, d).map_err(|_| {
            not_a_date(format!("years run from {} to {}", time::Date::MIN.year(), time::Date::MAX.year()))
        })?;
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: i64 = t[..unit_at].parse().map_err(|_| bad())?;
    let ms = match &t[unit_at..] {
        "" => return Ok(n),
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now_ms - n.saturating_mul(ms))
}

/// Unix milliseconds now (the one clock for ledger rows, ids and timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix seconds now, from the same clock (OpenAI's `created`, the models list).
pub fn now_secs() -> u64 {
    (now_ms() / 1000) as u64
}

/// Unix milliseconds as an RFC 3339 UTC time (`2026-01-02T03:04:05Z`, milliseconds shown
/// when not zero).
pub fn rfc3339(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if t.millisecond() != 0 {
        s.push_str(&format!(".{:03}", t.millisecond()));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_absolute_and_bad() {
        assert_eq!(parse("7d", 1_000_000_000_000).unwrap(), 1_000_000_000_000 - 7 * 86_400_000);
        assert_eq!(parse("2026-11-25", 0).unwrap(), 20_782 * 86_400_000);
        assert_eq!(parse("1970-01-01", 0).unwrap(), 0);
        assert_eq!(parse("12345", 0).unwrap(), 12345);
        assert!(parse("yesterday", 0).is_err());
        assert!(parse("2026-1x-01", 0).is_err());
    }

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert_eq!(parse("2024-02-29", 0).unwrap(), 19_782 * 86_400_000);
        assert_eq!(parse(" 2026-1-5 ", 0).unwrap(), 20_458 * 86_400_000);
        for (s, why) in [
            ("2026-02-31", "February 2026 has days 1 to 28"),
            ("2025-02-29", "February 2025 has days 1 to 28"),
            ("2026-04-31", "April 2026 has days 1 to 30"),
            ("1900-02-29", "February 1900 has days 1 to 28"),
            ("2026-01-00", "January 2026 has days 1 to 31"),
            ("2026-13-01", "months run from 1 to 12"),
            ("2026-00-10", "months run from 1 to 12"),
            ("12026-01-01", "years run from -9999 to 9999"),
        ] {
            assert_eq!(parse(s, 0).unwrap_err(), format!("\"{s}\" is not a date: {why}"));
        }
        // Not shaped like a date: the forms a bound may take.
        assert_eq!(
            parse("2026-02-3x", 0).unwrap_err(),
            "\"2026-02-3x\" is not a time: use 7d, 24h, 30m, 2w, a date like 2026-11-01, or unix milliseconds"
        );
    }
}
