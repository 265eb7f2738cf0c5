//! `history --since` and `--status`: what the flags accept.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

use super::{MAX_SINCE_DAYS, SINCE_FORMS, STATUSES};
use crate::store::history::Status;

/// `--status`: one of the `status` column's values.
pub fn parse_status(text: &str) -> Result<Status, String> {
    Status::parse(text).ok_or_else(|| {
        let names: Vec<&str> = STATUSES.iter().map(|s| s.as_str()).collect();
        format!("unknown status; use one of {}", names.join(", "))
    })
}

/// `--since`, before the config says which zone a date is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    Date(NaiveDate),
    At(DateTime<Utc>),
}

impl Since {
    pub fn parse(text: &str) -> Result<Since, String> {
        let text = text.trim();
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Since::Date(date));
        }
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Ok(Since::At(at.with_timezone(&Utc)));
        }
        match crate::time::parse_duration(text).ok() {
            Some(ago) if ago <= Duration::days(MAX_SINCE_DAYS) => Ok(Since::Ago(ago)),
            Some(_) => Err(format!("more than {MAX_SINCE_DAYS} days back")),
            None => Err(format!("expected {SINCE_FORMS}")),
        }
    }

    /// The instant meant, with a date's midnight read in `zone`.
    pub fn resolve(self, now: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        match self {
            Since::Ago(ago) => now - ago,
            Since::At(at) => at,
            Since::Date(date) => crate::time::start_of_day(date, zone)
                .unwrap_or_else(|| date.and_time(chrono::NaiveTime::MIN).and_utc()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn since_accepts_durations_dates_and_timestamps() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let shanghai: Tz = "Asia/Shanghai".parse().unwrap();
        let at = |text: &str| Since::parse(text).unwrap().resolve(now, shanghai);
        assert_eq!(at("30m"), now - Duration::minutes(30));
        assert_eq!(at("12h"), now - Duration::hours(12));
        assert_eq!(at("7d"), now - Duration::days(7));
        assert_eq!(at("2w"), now - Duration::weeks(2));
        assert_eq!(
            at("2026-11-30"),
            Utc.with_ymd_and_hms(2026, 11, 29, 16, 0, 0).unwrap()
        );
        assert_eq!(
            at("2026-11-30T09:30:00+08:00"),
            Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap()
        );
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "-7d",
            "1.5h",
            "2026-13-01",
            "99999999999w",
            "yesterday",
        ] {
            assert!(Since::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_date_whose_midnight_is_skipped_starts_when_the_day_does() {
        // Santiago springs forward at midnight: 2026-09-06 starts at 01:00 -03:00.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let since = Since::parse("2026-09-06")
            .unwrap()
            .resolve(Utc::now(), santiago);
        assert_eq!(since, Utc.with_ymd_and_hms(2026, 9, 6, 4, 0, 0).unwrap());
    }
}
