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
}
