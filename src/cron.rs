//! Cron expressions, time zones and slot arithmetic: which instants a schedule names.
//!
//! A *slot* is an instant (UTC, whole seconds) named by a schedule's cron expression read in the
//! schedule's zone. `check --next`, the daemon's timers and the missed-slot scan all ask this
//! module, so a preview can never disagree with what fires.
//!
//! Parsing uses croner with crontab conventions: 5 fields, or 6 with seconds first; day-of-week
//! 0 and 7 are Sunday; day-of-month and day-of-week are OR-ed when both are restricted.
//!
//! Daylight-saving time is handled on the UTC timeline rather than by croner's own iterator
//! (which, across a fall-back, yields instants out of order):
//! - interval jobs (a `*` or `/` in the second, minute or hour field) fire at every instant whose
//!   local reading matches: twice in a repeated hour, never in a skipped one;
//! - fixed-time jobs (explicit seconds, minutes and hours) fire once per matching day: at the first
//!   reading of a repeated time, and at the end of the gap when their time is skipped (Vixie cron
//!   does the same).

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

/// Field names in the order of a 6-field expression, for error messages.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// The largest useful step of each field (in [`FIELD_NAMES`] order): its range's width. A
/// larger step (`*/99` seconds) names only the first value, which is never what was meant.
const MAX_STEPS: [u32; 6] = [59, 59, 23, 30, 11, 6];

/// Refuses a step (`/N`) larger than the field's range; croner would take it as the first value.
fn check_steps(expr: &str, name: &str, max: u32, field: &str) -> Result<(), String> {
    for element in field.split(',') {
        let Some((_, step)) = element.split_once('/') else {
            continue;
        };
        // A step that is not a number is croner's to explain.
        if let Ok(n) = step.parse::<u64>()
            && n > u64::from(max)
        {
            return Err(format!(
                "\"{expr}\": the {name} field \"{field}\" steps by {n}, more than the field's range allows (at most /{max}); it would name only the first value: write that value instead, or a smaller step"
            ));
        }
    }
    Ok(())
}

/// Width of the window in which a zone's offset is assumed to change at most once. Real zones
/// change it at most twice a year, months apart.
const TRANSITION_STEP: Duration = Duration::hours(6);

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expr: String,
    cron: Cron,
    fixed_time: bool,
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl CronSpec {
    /// Parses `expr` (5 or 6 fields), returning an error that names the offending field.
    pub fn parse(expr: &str) -> Result<CronSpec, String> {
        let trimmed = expr.trim();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        if !(trimmed.starts_with('@') || fields.len() == 5 || fields.len() == 6) {
            return Err(format!(
                "\"{expr}\" has {} fields; write 5 (minute hour day-of-month month day-of-week) \
                 or 6 (second first), e.g. \"30 9 * * 1-5\"",
                fields.len()
            ));
        }
        if trimmed.starts_with('@') {
            const NICKNAMES: [&str; 7] = [
                "@yearly",
                "@annually",
                "@monthly",
                "@weekly",
                "@daily",
                "@midnight",
                "@hourly",
            ];
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
                return Err(format!(
                    "\"{expr}\" is not a known nickname; use one of {} or 5/6 fields",
                    NICKNAMES.join(", ")
                ));
            }
        }
        // croner accepts "1," as "1"; an empty list element is almost certainly a typo.
        if let Some((i, field)) = fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.split(',').any(str::is_empty))
        {
            let offset = if fields.len() == 5 { 1 } else { 0 };
            return Err(format!(
                "\"{expr}\": the {} field \"{field}\" has an empty list element",
                FIELD_NAMES[i + offset]
            ));
        }
        if !trimmed.starts_with('@') {
            let offset = if fields.len() == 5 { 1 } else { 0 };
            for (i, field) in fields.iter().enumerate() {
                check_steps(expr, FIELD_NAMES[i + offset], MAX_STEPS[i + offset], field)?;
            }
        }
        let cron = parser()
            .parse(trimmed)
            .map_err(|e| explain(trimmed, &fields, e))?;
        let fixed_time = [
            &cron.pattern.seconds,
            &cron.pattern.minutes,
            &cron.pattern.hours,
        ]
        .iter()
        .all(|c| !c.from_wildcard && c.step <= 1);
        let spec = CronSpec {
            expr: trimmed.to_string(),
            cron,
            fixed_time,
        };
        // An expression such as "0 0 30 2 *" parses but names no instant at all.
        let probe = Utc::now();
        if spec.naive_next(probe.naive_utc(), false).is_none() {
            return Err(format!(
                "\"{expr}\" never matches any date (e.g. the 30th of February)"
            ));
        }
        Ok(spec)
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// True when seconds, minutes and hours are explicit values (see the module docs).
    pub fn is_fixed_time(&self) -> bool {
        self.fixed_time
    }

    /// For a *workday schedule* — day-of-month `*`, and a day-of-week field that takes every
    /// day from Monday to Friday but not every day — the same expression on every day of the
    /// week: its times of day on a regular workday, for make-up workdays (调休).
    pub fn workday_variant(&self) -> Option<String> {
        let fields: Vec<&str> = self.expr.split_whitespace().collect();
        if self.expr.starts_with('@') || !matches!(fields.len(), 5 | 6) {
            return None;
        }
        let (dom, dow) = (fields.len() - 3, fields.len() - 1);
        if !matches!(fields[dom], "*" | "?") {
            return None;
        }
        // 2024-01-01 was a Monday: with day-of-month `*`, the pattern's day match is its
        // day-of-week match.
        let matches = |day: u32| self.cron.pattern.day_match(2024, 1, day).unwrap_or(false);
        let workdays = (1..=5).all(matches);
        let every_day = (1..=7).all(matches);
        if !workdays || every_day {
            return None;
        }
        let mut all_days = fields.clone();
        all_days[dow] = "*";
        Some(all_days.join(" "))
    }

    /// The first slot strictly after `after`, read in `zone`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        self.next_slot(after, false, zone)
    }

    /// The first slot at or after `from`, read in `zone`.
    pub fn next_from(&self, from: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        self.next_slot(from, true, zone)
    }

    /// The next `n` slots strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, zone: Tz, n: usize) -> Vec<DateTime<Utc>> {
        // A loop, not `iter::successors`: that would search one slot more than it returns.
        let mut slots = Vec::with_capacity(n);
        let mut cursor = after;
        while slots.len() < n
            && let Some(slot) = self.next_after(cursor, zone)
        {
            slots.push(slot);
            cursor = slot;
        }
        slots
    }

    /// The first slot after `start` (or at it, when `inclusive`), read in `zone`.
    pub fn next_slot(
        &self,
        start: DateTime<Utc>,
        inclusive: bool,
        zone: Tz,
    ) -> Option<DateTime<Utc>> {
        let mut from = whole_second(start, inclusive);
        let mut inclusive = inclusive;
        // Each turn searches one stretch of constant UTC offset; a handful of turns crosses any
        // real transition, the bound only guards against a broken zone table.
        for _ in 0..64 {
            let offset = offset_at(zone, from);
            let naive = self.naive_next(from.naive_utc() + offset, inclusive)?;
            let candidate = (naive - offset).and_utc();
            match first_transition(zone, from, candidate) {
                None => {
                    if self.fixed_time && is_second_reading(zone, naive, candidate) {
                        from = candidate;
                        inclusive = false;
                        continue;
                    }
                    return Some(candidate);
                }
                Some(transition) => {
                    let before = offset_at(zone, transition - Duration::seconds(1));
                    let after = offset_at(zone, transition);
                    if self.fixed_time && after > before {
                        // Spring forward: local times in [T+before, T+after) do not exist. A
                        // fixed-time job whose time is among them fires when the gap ends.
                        let gap_start = transition.naive_utc() + before;
                        let gap_end = transition.naive_utc() + after;
                        if let Some(skipped) = self.naive_next(gap_start, true)
                            && skipped < gap_end
                        {
                            return Some(transition);
                        }
                    }
                    from = transition;
                    inclusive = true;
                }
            }
        }
        None
    }

    /// Next matching wall-clock reading, ignoring zones (croner on UTC has no transitions).
    fn naive_next(&self, from: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron
            .find_next_occurrence(&from.and_utc(), inclusive)
            .ok()
            .map(|at| at.naive_utc())
    }
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .alternative_weekdays(false)
        .build()
}

/// Names the field that croner rejected by parsing each field alone against wildcards.
fn explain(expr: &str, fields: &[&str], error: CronError) -> String {
    let offset = if fields.len() == 5 { 1 } else { 0 };
    for (i, field) in fields.iter().enumerate() {
        let mut probe = vec!["*"; fields.len()];
        probe[i] = field;
        if let Err(e) = parser().parse(&probe.join(" ")) {
            return format!(
                "\"{expr}\": the {} field \"{field}\" is not valid ({}); see `man 5 crontab`",
                FIELD_NAMES[i + offset],
                plain(&e)
            );
        }
    }
    format!(
        "\"{expr}\" is not a valid cron expression ({})",
        plain(&error)
    )
}

fn plain(error: &CronError) -> String {
    match error {
        CronError::ComponentError(msg)
        | CronError::InvalidPattern(msg)
        | CronError::IllegalCharacters(msg) => msg.trim_end_matches('.').to_string(),
        other => other.to_string().trim_end_matches('.').to_string(),
    }
}

fn whole_second(at: DateTime<Utc>, inclusive: bool) -> DateTime<Utc> {
    let floor = at - Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos()));
    if inclusive && floor < at {
        // "At or after 09:29:59.5" must not return 09:29:59.
        floor + Duration::seconds(1)
    } else {
        floor
    }
}

fn offset_at(zone: Tz, at: DateTime<Utc>) -> Duration {
    let seconds = zone
        .offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc();
    Duration::seconds(i64::from(seconds))
}

/// The first instant in `(from, until]` whose UTC offset differs from the offset at `from`.
fn first_transition(zone: Tz, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = offset_at(zone, from);
    let mut low = from;
    while low < until {
        let high = (low + TRANSITION_STEP).min(until);
        if offset_at(zone, high) != start {
            return Some(bisect(zone, low, high, start));
        }
        low = high;
    }
    None
}

/// Narrows `(low, high]` to the first second whose offset differs from `start`.
fn bisect(
    zone: Tz,
    mut low: DateTime<Utc>,
    mut high: DateTime<Utc>,
    start: Duration,
) -> DateTime<Utc> {
    while high - low > Duration::seconds(1) {
        let mid = low + (high - low) / 2;
        let mid = whole_second(mid, false);
        if offset_at(zone, mid) == start {
            low = mid;
        } else {
            high = mid;
        }
    }
    high
}

/// True when `at` is the later of two instants that read `naive` (the repeated hour).
fn is_second_reading(zone: Tz, naive: NaiveDateTime, at: DateTime<Utc>) -> bool {
    match zone.from_local_datetime(&naive) {
        chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc) < at,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        crate::time::from_db(text).unwrap()
    }

    fn slots(expr: &str, zone: Tz, after: &str, n: usize) -> Vec<String> {
        CronSpec::parse(expr)
            .unwrap()
            .upcoming(utc(after), zone, n)
            .into_iter()
            .map(crate::time::to_db)
            .collect()
    }

    #[test]
    fn five_and_six_fields_parse_with_crontab_weekdays() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        // 2026-11-28 is a Saturday; 09:30 +08 is 01:30Z.
        assert_eq!(
            slots("30 9 * * 1-5", tz, "2026-11-28T00:00:00Z", 3),
            [
                "2026-11-30T01:30:00Z",
                "2026-12-01T01:30:00Z",
                "2026-12-02T01:30:00Z"
            ]
        );
        // 0 and 7 are both Sunday.
        assert_eq!(
            slots("0 9 * * 0", tz, "2026-11-28T00:00:00Z", 1),
            ["2026-11-29T01:00:00Z"]
        );
        assert_eq!(
            slots("0 9 * * 7", tz, "2026-11-28T00:00:00Z", 1),
            ["2026-11-29T01:00:00Z"]
        );
        assert_eq!(
            slots("*/20 * * * * *", Tz::UTC, "2026-11-28T00:00:00Z", 3),
            [
                "2026-11-28T00:00:20Z",
                "2026-11-28T00:00:40Z",
                "2026-11-28T00:01:00Z"
            ]
        );
    }

    #[test]
    fn workday_schedules_have_an_every_day_variant() {
        let variant = CronSpec::parse("30 9 * * 1-5")
            .unwrap()
            .workday_variant()
            .unwrap();
        assert_eq!(variant, "30 9 * * *");
        assert_eq!(
            CronSpec::parse("0 */2 9-18 * * Mon-Sat")
                .unwrap()
                .workday_variant()
                .unwrap(),
            "0 */2 9-18 * * *"
        );
        for not_workday in ["0 16 * * Fri", "30 9 * * *", "30 9 1 * 1-5", "@weekly"] {
            assert!(
                CronSpec::parse(not_workday)
                    .unwrap()
                    .workday_variant()
                    .is_none(),
                "{not_workday}"
            );
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = CronSpec::parse("61 9 * * *").unwrap_err();
        assert!(err.contains("minute field \"61\""), "{err}");
        let err = CronSpec::parse("0 9 * * Mon-Fry").unwrap_err();
        assert!(err.contains("day-of-week"), "{err}");
        let err = CronSpec::parse("0 9 * *").unwrap_err();
        assert!(err.contains("has 4 fields"), "{err}");
        let err = CronSpec::parse("0 9 * * 1,").unwrap_err();
        assert!(
            err.contains("day-of-week field \"1,\" has an empty list element"),
            "{err}"
        );
        let err = CronSpec::parse("@reboot").unwrap_err();
        assert!(err.contains("not a known nickname"), "{err}");
        assert!(CronSpec::parse("@daily").is_ok());
        let err = CronSpec::parse("0 0 30 2 *").unwrap_err();
        assert!(err.contains("never matches"), "{err}");
    }

    #[test]
    fn spring_forward_in_new_york() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z). A fixed 02:30 job fires when the gap ends.
        assert_eq!(
            slots("30 2 * * *", ny, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
        // An interval job skips the readings that do not exist.
        assert_eq!(
            slots("*/30 * * * *", ny, "2026-03-08T06:00:00Z", 4),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T07:30:00Z",
                "2026-03-08T08:00:00Z"
            ]
        );
        // A 09:30 job keeps its local time across the change: 14:30Z before, 13:30Z after.
        assert_eq!(
            slots("30 9 * * *", ny, "2026-03-07T00:00:00Z", 2),
            ["2026-03-07T14:30:00Z", "2026-03-08T13:30:00Z"]
        );
    }

    #[test]
    fn fall_back_in_new_york() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z): 01:00-01:59 happens twice.
        assert_eq!(
            slots("*/30 * * * *", ny, "2026-11-01T04:45:00Z", 5),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:00:00Z"  // 02:00 EST
            ]
        );
        // A fixed-time job fires once, at the first reading, even when asked from the second.
        assert_eq!(
            slots("30 1 * * *", ny, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        assert_eq!(
            slots("30 1 * * *", ny, "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn berlin_transitions() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z); 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
        assert_eq!(
            slots("0 9 * * *", berlin, "2026-03-28T00:00:00Z", 2),
            ["2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z"]
        );
        assert_eq!(
            slots("15 2 * * *", berlin, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:15:00Z"]
        );
        assert_eq!(
            slots("0 * * * *", berlin, "2026-10-24T23:30:00Z", 4),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T03:00:00Z"
            ]
        );
    }

    #[test]
    fn inclusive_start_rounds_up_to_the_next_whole_second() {
        let spec = CronSpec::parse("* * * * * *").unwrap();
        let at = utc("2026-11-28T00:00:00Z") + Duration::milliseconds(500);
        assert_eq!(
            spec.next_from(at, Tz::UTC),
            Some(utc("2026-11-28T00:00:01Z"))
        );
        assert_eq!(
            spec.next_after(at, Tz::UTC),
            Some(utc("2026-11-28T00:00:01Z"))
        );
    }

    /// Resident memory of this process, in bytes (Linux).
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    /// 100,000 distinct expressions, as a large schedules file might hold.
    fn distinct_expressions() -> Vec<String> {
        const DAYS: [&str; 4] = ["*", "1-5", "Mon,Wed,Fri", "*/2"];
        (0..100_000)
            .map(|i| {
                let day = DAYS[i / 86_400 + 2 * (i % 2)];
                format!("{} {} {} * * {day}", i % 60, (i / 60) % 60, (i / 3600) % 24)
            })
            .collect()
    }

    /// Not a test: a micro-timing of parsing and of `next_after`, with the resident memory the
    /// parsed specs take (run alone: `cargo test --lib cron::tests::timing -- --ignored
    /// --nocapture`). Debug build, so the figures only compare implementations.
    #[test]
    #[ignore]
    fn timing() {
        let exprs = distinct_expressions();
        let before = resident_bytes();
        let started = std::time::Instant::now();
        let specs: Vec<CronSpec> = exprs.iter().map(|e| CronSpec::parse(e).unwrap()).collect();
        let parsing = started.elapsed();
        let after = resident_bytes();
        println!(
            "size_of::<CronSpec>() = {} bytes; parsing {} expressions: {parsing:?}; resident +{} bytes per spec",
            std::mem::size_of::<CronSpec>(),
            specs.len(),
            (after.saturating_sub(before)) / specs.len()
        );
        let zone: Tz = "Asia/Shanghai".parse().unwrap();
        let mut at = utc("2026-11-28T00:00:00Z");
        let started = std::time::Instant::now();
        let mut found = 0;
        for i in 0..1_000_000 {
            if let Some(next) = specs[(i * 7919) % specs.len()].next_after(at, zone) {
                found += 1;
                at = next - Duration::seconds(i64::try_from(i % 86_400).unwrap());
            }
        }
        println!(
            "1,000,000 next_after calls ({found} found): {:?}",
            started.elapsed()
        );
    }
}
