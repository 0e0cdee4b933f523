//! Time bounds as people write them for reports: `7d`, `24h`, `30m`, `2w` (ago), a UTC
//! date `2026-11-01`, or unix milliseconds.

/// Parse a bound into unix milliseconds, relative to `now_ms`.
pub fn parse(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("\"{s}\" is not a time: use 7d, 24h, 30m, 2w, a date like 2026-11-01, or unix milliseconds");
    if let Some((y, rest)) = t.split_once('-') {
        let (m, d) = rest.split_once('-').ok_or_else(bad)?;
        let (y, m, d): (i64, i64, i64) =
            (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        return Ok(days_from_civil(y, m, d) * 86_400_000);
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds now (the one clock for ledger rows, ids and timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix seconds now, from the same clock (OpenAI's `created`, the models list).
pub fn now_secs() -> u64 {
    (now_ms() / 1000) as u64
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
        assert!(parse("2026-13-01", 0).is_err());
    }
}
