//! Timestamps as the database and the logs spell them: UTC, RFC 3339, whole seconds, `Z`.
//!
//! One fixed width keeps every timestamp column sortable and comparable as text in `sqlite3`
//! (`2026-11-30T01:30:00Z` < `2026-11-30T01:30:01Z`); sub-second digits would break that.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// Formats an instant the way every timestamp column stores it.
pub fn to_db(at: DateTime<Utc>) -> String {
    at.trunc_subsecs(0)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses a timestamp column back; accepts any RFC 3339 spelling.
pub fn from_db(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// The current instant, truncated to whole seconds like every stored timestamp.
pub fn now_db() -> String {
    to_db(Utc::now())
}

/// The first instant of `date` in `zone`. Where midnight falls into a daylight-saving gap
/// (America/Santiago, say), the day starts at the end of the gap.
pub fn start_of_day(date: chrono::NaiveDate, zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::TimeZone;
    (0..24)
        .find_map(|hour| {
            zone.from_local_datetime(&date.and_hms_opt(hour, 0, 0)?)
                .earliest()
        })
        .map(|at| at.with_timezone(&Utc))
}

/// The longest duration [`parse_duration`] accepts: a hundred years.
const MAX_DURATION_SECONDS: i64 = 100 * 366 * 86_400;

/// Parses a duration written as numbers with units: `90s`, `10m`, `2h`, `7d`, `2w`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<chrono::Duration, String> {
    let invalid = || format!("\"{text}\" is not a duration; write e.g. 90s, 10m, 2h, 7d or 1h30m");
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    let mut parts = 0;
    // Units in descending order, each at most once: `1h30m`, not `1h1h` or `30m1h`.
    let mut previous_unit = i64::MAX;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        if unit >= previous_unit {
            return Err(format!(
                "\"{text}\" repeats a unit or puts a smaller one first; write each unit once, largest first, e.g. 1h30m"
            ));
        }
        previous_unit = unit;
        let n: i64 = digits.parse().map_err(|_| invalid())?;
        // A hundred years is more than any schedule or retention needs, and keeps date
        // arithmetic with the result far from overflowing.
        let part = n
            .checked_mul(unit)
            .filter(|s| *s <= MAX_DURATION_SECONDS)
            .and_then(chrono::Duration::try_seconds)
            .ok_or_else(invalid)?;
        total = total.checked_add(&part).ok_or_else(invalid)?;
        digits.clear();
        parts += 1;
    }
    if parts == 0 || !digits.is_empty() || total.num_seconds() > MAX_DURATION_SECONDS {
        return Err(invalid());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn db_timestamps_have_fixed_width_and_a_z() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap();
        assert_eq!(to_db(at), "2026-11-30T01:30:00Z");
        let later = at + chrono::Duration::milliseconds(1500);
        assert_eq!(to_db(later), "2026-11-30T01:30:01Z");
        assert_eq!(from_db("2026-11-30T01:30:00Z"), Some(at));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(chrono::Duration::seconds(90)));
        assert_eq!(parse_duration("1h30m"), Ok(chrono::Duration::seconds(5400)));
        assert_eq!(parse_duration("400d"), Ok(chrono::Duration::days(400)));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1.5h",
            "-5m",
            "10000000000000000s",
            "99999999999999999999d",
            "1h1h",
            "30m1h",
            "1s1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
