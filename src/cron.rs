//! Cron expressions, time zones and slot arithmetic: which instants a schedule names.
//!
//! A *slot* is an instant (UTC, whole seconds) named by a schedule's cron expression read in the
//! schedule's zone. `check --next`, the daemon's timers and the missed-slot scan all ask this
//! module, so a preview can never disagree with what fires.
//!
//! Parsing uses croner with crontab conventions: 5 fields, or 6 with seconds first; day-of-week
//! 0 and 7 are Sunday; day-of-month and day-of-week are OR-ed when both are restricted.
//! croner only parses and validates: its `Cron` keeps about 5 KB of bitfields (its year field
//! alone spans 1 to 5000), so each spec converts it into a `Pattern` of a few machine words
//! and drops it. The pattern matches exactly what croner matches, `L`, `W`, `#` and a `+`
//! day-of-week included, and searches month by month with bit masks instead of croner's
//! second-by-second steps. Parsing croner's way costs most of a parse (seven bitfield vectors,
//! 5,001 year bits), so the plain grammar (numbers, ranges, steps, names, `*`, `?`) is read
//! straight into a `Pattern` by `parse_plain`; anything else, and every error, is croner's.
//!
//! Daylight-saving time is handled on the UTC timeline rather than by croner's own iterator
//! (which, across a fall-back, yields instants out of order):
//! - interval jobs (a `*` or `/` in the second, minute or hour field) fire at every instant whose
//!   local reading matches: twice in a repeated hour, never in a skipped one;
//! - fixed-time jobs (explicit seconds, minutes and hours) fire once per matching day: at the first
//!   reading of a repeated time, and at the end of the gap when their time is skipped (Vixie cron
//!   does the same).

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
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

// The fast path: most expressions use only the plain grammar, which this reads straight into a
// `Pattern`, sparing croner's parse (seven bitfield vectors, 5,001 year bits set one by one).
// Per field, comma-separated elements of: `*` (a whole field only, as in croner), a number,
// `a-b`, `*/n`, `a/n` (a to the field's end), `a-b/n`; `?` as `*` in the day fields; month names
// (JAN-DEC) in the month field and weekday names (SUN-SAT; SUN is 7 after a `-`, as croner
// substitutes "-SUN" first) in the day-of-week field, in any case; 7 is Sunday. Bounds are
// croner's: a value out of the field's range, a reversed range or step 0 is not taken.
// Everything else (`@` nicknames, `L`, `W`, `#`, a `+` day-of-week, a name anywhere else, any
// other character or form, anything invalid) returns `None` and goes to croner, which alone
// words the errors. The test `fast_path_agrees_with_croner` checks it against croner.

/// Each field's range, in [`FIELD_NAMES`] order (day-of-week 0..=7, 7 being Sunday).
const BOUNDS: [(u16, u16); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The pattern and `fixed_time` of a 5- or 6-field expression in the plain grammar, as croner
/// and [`Pattern::new`] would give them; `None` for anything else.
fn parse_plain(fields: &[&str]) -> Option<(Pattern, bool)> {
    let offset = 6usize.checked_sub(fields.len()).filter(|&o| o <= 1)?;
    // A 5-field expression's seconds are croner's "0".
    let mut bits = [1u64, 0, 0, 0, 0, 0];
    let mut fixed_time = true;
    for (i, field) in fields.iter().enumerate() {
        let i = i + offset;
        let (field_bits, from_wildcard, step) = plain_field(field, i)?;
        bits[i] = field_bits;
        if i < 3 {
            fixed_time &= !from_wildcard && step <= 1;
        }
    }
    let star = |field: &str| field == "*" || field == "?";
    let mut flags = 0;
    if star(fields[3 - offset]) {
        flags |= STAR_DOM;
    }
    if star(fields[5 - offset]) {
        flags |= STAR_DOW;
    }
    // croner folds Sunday's 7 into 0.
    let weekdays = (bits[5] | bits[5] >> 7) & 0x7f;
    let pattern = Pattern {
        seconds: bits[0],
        minutes: bits[1],
        weekdays: weekdays * WEEK_BLOCKS,
        hours: bits[2] as u32,
        days: bits[3] as u32,
        closest_weekdays: 0,
        months: bits[4] as u16,
        last_weekdays: 0,
        flags,
    };
    Some((pattern, fixed_time))
}

/// Field `i` (in [`FIELD_NAMES`] order) as bits, with croner's `from_wildcard` (a `*` or `*/n`)
/// and `step` (that of the last `/n` written, else 1).
fn plain_field(field: &str, i: usize) -> Option<(u64, bool, u16)> {
    let (min, max) = BOUNDS[i];
    // croner reads `?` as `*` in the day fields, and a bare `*` only as a whole field.
    let star = |text: &str| text == "*" || (text == "?" && (i == 3 || i == 5));
    if star(field) {
        return Some((span(min, max, 1), true, 1));
    }
    let (mut bits, mut from_wildcard, mut last_step) = (0, false, 1);
    for element in field.split(',') {
        let (range, step) = match element.split_once('/') {
            Some((range, step)) => (range, Some(number(step)?)),
            None => (element, None),
        };
        let (a, b) = if star(range) {
            step?;
            from_wildcard = true;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, i, false)?, value(b, i, true)?)
        } else {
            let a = value(range, i, false)?;
            (a, if step.is_some() { max } else { a })
        };
        if a < min || b > max || a > b || step == Some(0) {
            return None;
        }
        if let Some(step) = step {
            last_step = step;
        }
        bits |= span(a, b, step.unwrap_or(1));
    }
    Some((bits, from_wildcard, last_step))
}

/// Bits `a`, `a + step`, … up to `b`.
fn span(a: u16, b: u16, step: u16) -> u64 {
    (a..=b)
        .step_by(usize::from(step))
        .fold(0, |bits, v| bits | 1 << v)
}

/// A number in ASCII digits, as croner's `parse::<u16>` takes it (leading zeros too).
fn number(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A value of field `i`: a number, or a name where croner substitutes it (`after_dash`: it
/// ends a range, where SUN is 7).
fn value(text: &str, i: usize, after_dash: bool) -> Option<u16> {
    let find = |names: &[&str]| names.iter().position(|n| n.eq_ignore_ascii_case(text));
    let named = match i {
        4 => find(&MONTH_NAMES).map(|m| m + 1),
        5 => find(&WEEKDAY_NAMES).map(|w| if w == 0 && after_dash { 7 } else { w }),
        _ => None,
    };
    match named {
        Some(v) => u16::try_from(v).ok(),
        None => number(text),
    }
}

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
    /// The expression as written (trimmed): the only heap allocation of a spec.
    expr: Box<str>,
    pattern: Pattern,
    fixed_time: bool,
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for CronSpec {}

impl CronSpec {
    /// Parses `expr` (5 or 6 fields), returning an error that names the offending field.
    pub fn parse(expr: &str) -> Result<CronSpec, String> {
        Self::parse_with(expr, true)
    }

    /// [`CronSpec::parse`], trying the plain-grammar fast path ([`parse_plain`]) first when
    /// `fast`; the differential test compares both ways.
    fn parse_with(expr: &str, fast: bool) -> Result<CronSpec, String> {
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
        let try_fast = fast && !trimmed.starts_with('@');
        let (pattern, fixed_time) = match try_fast.then(|| parse_plain(&fields)).flatten() {
            Some(parsed) => parsed,
            None => {
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
                (Pattern::new(&cron, trimmed), fixed_time)
            }
        };
        // An expression such as "0 0 30 2 *" parses but names no instant at all.
        if !pattern.ever_matches() {
            return Err(format!(
                "\"{expr}\" never matches any date (e.g. the 30th of February)"
            ));
        }
        Ok(CronSpec {
            expr: trimmed.into(),
            pattern,
            fixed_time,
        })
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
        let january = self.pattern.day_mask(2024, 1, 1);
        let matches = |day: u32| january & (1 << day) != 0;
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

    /// Next matching wall-clock reading, ignoring zones.
    fn naive_next(&self, from: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.pattern.next(from, inclusive)
    }
}

/// croner's component flags (private in croner 3; the differential test `compact_pattern_
/// matches_croner` fails if they ever change): a plain value, the n-th weekday of the month
/// (`#n`, bit n), the last one (`5L`), the closest weekday (`15W`).
const ALL_BIT: u8 = 1;
const NTH_1ST_BIT: u8 = 1 << 1;
const LAST_BIT: u8 = 1 << 6;
const CLOSEST_WEEKDAY_BIT: u8 = 1 << 7;

/// Day-of-month written `*` or `?`.
const STAR_DOM: u8 = 1;
/// Day-of-week written `*` or `?` (`+*` too).
const STAR_DOW: u8 = 1 << 1;
/// Day-of-week prefixed with `+`: croner then ANDs the two day fields instead of OR-ing them.
const DOM_AND_DOW: u8 = 1 << 2;
/// `L` in day-of-month: the month's last day.
const LAST_DAY: u8 = 1 << 3;

/// One copy of a 7-bit weekday set per week of a month (5 blocks cover 35 days).
const WEEK_BLOCKS: u64 = 1 | 1 << 7 | 1 << 14 | 1 << 21 | 1 << 28;

/// The Gregorian calendar repeats every 400 years (146,097 days: exactly 20,871 weeks), and a
/// pattern's day match depends only on the month, its length and the weekday it starts on. So a
/// pattern that matches nowhere in 400 years matches nowhere ever. (Each such month shape recurs
/// within 12 years, except a 29-day February starting on a given weekday: 8 years apart, or up
/// to 40 across a century year that is not a leap year, 2100; the full cycle needs no such
/// count.) Only a never-matching pattern scans all of it: 4,800 months, refused in microseconds.
const CYCLE_MONTHS: u32 = 400 * 12;

/// A cron pattern as bit masks, converted from croner's parse (which takes ~5 KB per pattern)
/// and matching exactly what croner's `find_next_occurrence` would find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pattern {
    /// Bits 0..=59.
    seconds: u64,
    /// Bits 0..=59.
    minutes: u64,
    /// Day-of-week by occurrence in the month: bit `7 * (n - 1) + w` is weekday `w` (Sunday 0)
    /// on its n-th occurrence, n = 1..=5. A plain weekday (`1`, `Mon`) sets its bit in all five
    /// blocks, `1#2` only in the second.
    weekdays: u64,
    /// Bits 0..=23.
    hours: u32,
    /// Day-of-month, bits 1..=31.
    days: u32,
    /// Days written `15W`: the weekday closest to them in the same month matches.
    closest_weekdays: u32,
    /// Bits 1..=12.
    months: u16,
    /// Weekdays written `5L`: their last occurrence in the month matches (bit 0 Sunday).
    last_weekdays: u8,
    /// [`STAR_DOM`], [`STAR_DOW`], [`DOM_AND_DOW`], [`LAST_DAY`].
    flags: u8,
}

impl Pattern {
    /// Reads croner's parse of `expr` (trimmed). croner keeps whether a day field was a bare `*`
    /// (after `?` became `*`) and the `+` prefix private, so they are read from the text the
    /// way croner's parser reads them.
    fn new(cron: &Cron, expr: &str) -> Pattern {
        let p = &cron.pattern;
        let mut flags = 0;
        if let Some((dom, dow)) = day_fields(expr) {
            if dom == "*" || dom == "?" {
                flags |= STAR_DOM;
            }
            let dow = match dow.strip_prefix('+') {
                Some(rest) => {
                    flags |= DOM_AND_DOW;
                    rest
                }
                None => dow,
            };
            if dow == "*" || dow == "?" {
                flags |= STAR_DOW;
            }
        }
        if p.days.is_feature_enabled(LAST_BIT) {
            flags |= LAST_DAY;
        }
        // croner folds a 7 (Sunday) into 0 for plain and `#n` weekdays, and looks only at 0..=6.
        let plain = mask(0..=6, |w| p.days_of_week.is_bit_set(w, ALL_BIT));
        let mut weekdays = 0;
        for n in 0..5 {
            let nth = mask(0..=6, |w| p.days_of_week.is_bit_set(w, NTH_1ST_BIT << n));
            weekdays |= (plain | nth) << (7 * n);
        }
        Pattern {
            seconds: mask(0..=59, |s| p.seconds.is_bit_set(s, ALL_BIT)),
            minutes: mask(0..=59, |m| p.minutes.is_bit_set(m, ALL_BIT)),
            weekdays,
            hours: mask(0..=23, |h| p.hours.is_bit_set(h, ALL_BIT)) as u32,
            days: mask(1..=31, |d| p.days.is_bit_set(d, ALL_BIT)) as u32,
            closest_weekdays: mask(1..=31, |d| p.days.is_bit_set(d, CLOSEST_WEEKDAY_BIT)) as u32,
            months: mask(1..=12, |m| p.months.is_bit_set(m, ALL_BIT)) as u16,
            last_weekdays: mask(0..=6, |w| p.days_of_week.is_bit_set(w, LAST_BIT)) as u8,
            flags,
        }
    }

    /// True when some instant matches (see [`CYCLE_MONTHS`]).
    fn ever_matches(&self) -> bool {
        NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .and_then(|start| self.next(start, true))
            .is_some()
    }

    /// The days of `month` that match, as bits 1..=31; `first_weekday` is the weekday of its
    /// 1st (Sunday 0). Combines the two day fields as croner's `day_match` does.
    fn day_mask(&self, year: i32, month: u32, first_weekday: u32) -> u32 {
        let len = days_in_month(year, month);
        let in_month = (u32::MAX >> (31 - len)) & !1;
        let star_dom = self.flags & STAR_DOM != 0;
        let star_dow = self.flags & STAR_DOW != 0;
        let dom = || {
            let mut days = self.days;
            if self.flags & LAST_DAY != 0 {
                days |= 1 << len;
            }
            if self.closest_weekdays != 0 {
                days |= closest_weekdays(self.closest_weekdays, len, first_weekday);
            }
            days & in_month
        };
        let dow = || {
            // Bit d - 1 of the rotated blocks is day d: week (d - 1) / 7, weekday
            // (first_weekday + d - 1) % 7.
            let mut days = (rotate_weeks(self.weekdays, first_weekday) << 1) as u32;
            if self.last_weekdays != 0 {
                // The last seven days, from len - 6, each the last of its weekday.
                let from = len - 6;
                let weekday = (first_weekday + from - 1) % 7;
                days |= (rotate_weeks(u64::from(self.last_weekdays), weekday) as u32) << from;
            }
            days & in_month
        };
        if star_dom || star_dow {
            (if star_dow { dom() } else { 0 }) | (if star_dom { dow() } else { 0 })
        } else if self.flags & DOM_AND_DOW != 0 {
            dom() & dow()
        } else {
            dom() | dow()
        }
    }

    /// The first matching reading (whole seconds) at or after `from` (`inclusive`) or strictly
    /// after it, in croner's range: from year 1 to before its `YEAR_UPPER_LIMIT` (5000).
    fn next(&self, from: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        let start = if inclusive && from.nanosecond() == 0 {
            from
        } else {
            from.with_nanosecond(0)?
                .checked_add_signed(Duration::seconds(1))?
        };
        let start = start.max(NaiveDate::from_ymd_opt(1, 1, 1)?.and_hms_opt(0, 0, 0)?);
        let (mut year, mut month) = (start.year(), start.month());
        let mut first_weekday = start.date().with_day(1)?.weekday().num_days_from_sunday();
        // The start's own day and time bound the first month's search only.
        let mut from_day = start.day();
        let mut from_time = Some((start.hour(), start.minute(), start.second()));
        for _ in 0..CYCLE_MONTHS {
            if year >= croner::YEAR_UPPER_LIMIT {
                return None;
            }
            if self.months & (1 << month) != 0 {
                let mut days = self.day_mask(year, month, first_weekday) & (u32::MAX << from_day);
                while days != 0 {
                    let day = days.trailing_zeros();
                    let time = match from_time {
                        Some((h, m, s)) if day == from_day => self.time_from(h, m, s),
                        _ => self.time_from(0, 0, 0),
                    };
                    if let Some((h, m, s)) = time {
                        return NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, s);
                    }
                    days &= days - 1;
                }
            }
            first_weekday = (first_weekday + days_in_month(year, month)) % 7;
            (year, month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            from_day = 1;
            from_time = None;
        }
        None
    }

    /// The first matching time of day at or after `h:m:s`.
    fn time_from(&self, h: u32, m: u32, s: u32) -> Option<(u32, u32, u32)> {
        let first = |bits: u64| next_bit(bits, 0);
        let hours = u64::from(self.hours);
        if hours & (1 << h) != 0 {
            if self.minutes & (1 << m) != 0
                && let Some(s) = next_bit(self.seconds, s)
            {
                return Some((h, m, s));
            }
            if let Some(m) = next_bit(self.minutes, m + 1) {
                return Some((h, m, first(self.seconds)?));
            }
        }
        let h = next_bit(hours, h + 1)?;
        Some((h, first(self.minutes)?, first(self.seconds)?))
    }
}

/// The lowest set bit of `bits` at `from` or above.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    let above = bits & u64::MAX.checked_shl(from)?;
    (above != 0).then(|| above.trailing_zeros())
}

/// The bits in `range` for which croner's `is_bit_set` says yes.
fn mask(
    range: std::ops::RangeInclusive<u16>,
    is_set: impl Fn(u16) -> Result<bool, CronError>,
) -> u64 {
    range
        .filter(|&i| is_set(i).unwrap_or(false))
        .fold(0, |bits, i| bits | 1 << i)
}

/// Rotates each 7-bit block of `blocks` so that its bit k is the old bit (k + by) % 7.
fn rotate_weeks(blocks: u64, by: u32) -> u64 {
    let low = WEEK_BLOCKS * (0x7f >> by);
    let high = WEEK_BLOCKS * ((0x7f << (7 - by)) & 0x7f);
    ((blocks >> by) & low) | ((blocks << (7 - by)) & high)
}

/// The days that `W` days (bits 1..=31) name in a month of `len` days starting on
/// `first_weekday`: the day itself on a weekday, else the closest weekday in the same month
/// (a Saturday the 1st gives Monday the 3rd; a Sunday the last day, the Friday before).
fn closest_weekdays(w_days: u32, len: u32, first_weekday: u32) -> u32 {
    let mut days = 0;
    for day in 1..=len {
        if w_days & (1 << day) == 0 {
            continue;
        }
        let target = match (first_weekday + day - 1) % 7 {
            6 if day > 1 => day - 1,
            6 => day + 2,
            0 if day < len => day + 1,
            0 => day - 2,
            _ => day,
        };
        days |= 1 << target;
    }
    days
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The day-of-month and day-of-week fields croner parses, `@` nicknames expanded as croner does.
fn day_fields(expr: &str) -> Option<(&str, &str)> {
    let expanded = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => expr,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let n = fields.len();
    (n >= 5).then(|| (fields[n - 3], fields[n - 1]))
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
    fn special_days_match_as_in_croner() {
        let first = |expr: &str, after: &str| slots(expr, Tz::UTC, after, 1);
        // The last day; the weekday closest to the 15th (Saturday 2026-08-15) and to the 1st
        // (Saturday 2026-08-01: Monday the 3rd, in the same month); the last Friday; the second
        // Monday.
        assert_eq!(
            first("0 0 L * *", "2026-02-01T00:00:00Z"),
            ["2026-02-28T00:00:00Z"]
        );
        assert_eq!(
            first("0 0 15W * *", "2026-08-01T00:00:00Z"),
            ["2026-08-14T00:00:00Z"]
        );
        assert_eq!(
            first("0 0 1W * *", "2026-07-31T00:00:00Z"),
            ["2026-08-03T00:00:00Z"]
        );
        assert_eq!(
            first("0 0 * * 5L", "2026-01-01T00:00:00Z"),
            ["2026-01-30T00:00:00Z"]
        );
        assert_eq!(
            first("0 0 * * 1#2", "2026-01-01T00:00:00Z"),
            ["2026-01-12T00:00:00Z"]
        );
        // Leap days; a `+` ANDs the day fields: the 29th of February that is a Monday.
        assert_eq!(
            slots("0 0 29 2 *", Tz::UTC, "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
        assert_eq!(
            first("0 0 29 2 +1", "2026-01-01T00:00:00Z"),
            ["2044-02-29T00:00:00Z"]
        );
        // Never: croner takes a bare `L` and a `7L` in day-of-week as no day at all.
        for never in [
            "0 0 31 4 *",
            "0 0 30 2 +Mon",
            "0 0 * * L",
            "0 0 * * 7L",
            "0 0 1 * +L",
        ] {
            let err = CronSpec::parse(never).unwrap_err();
            assert!(err.contains("never matches"), "{never}: {err}");
        }
    }

    #[test]
    fn a_spec_is_a_few_words() {
        // The expression's text is its only heap allocation; croner's parse took ~5.3 KB.
        assert!(std::mem::size_of::<CronSpec>() <= 64);
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

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

    /// A value of `min..=max`, sometimes by name (`names[v - min]`), in any case.
    fn value(rng: &mut StdRng, v: u32, min: u32, names: &[&str]) -> String {
        if names.is_empty() || !rng.random_bool(0.3) {
            return v.to_string();
        }
        let name = names[(v - min) as usize];
        match rng.random_range(0..3) {
            0 => name.to_string(),
            1 => name.to_lowercase(),
            _ => name.to_uppercase(),
        }
    }

    /// One list element: a value, a range, or a step from `*`, from a value or over a range.
    /// Steps stay within the field's width, as `CronSpec::parse` demands.
    fn element(rng: &mut StdRng, min: u32, max: u32, max_step: u32, names: &[&str]) -> String {
        let a = rng.random_range(min..=max);
        let b = rng.random_range(a..=max);
        let step = rng.random_range(1..=max_step);
        match rng.random_range(0..7) {
            0..=2 => value(rng, a, min, names),
            3 => format!(
                "{}-{}",
                value(rng, a, min, names),
                value(rng, b, min, names)
            ),
            4 => format!("*/{step}"),
            5 => format!(
                "{}-{}/{step}",
                value(rng, a, min, names),
                value(rng, b, min, names)
            ),
            _ => format!("{}/{step}", value(rng, a, min, names)),
        }
    }

    /// A field: `*`, or a list of one to three elements (`extra` may supply special ones).
    fn field(
        rng: &mut StdRng,
        (min, max, max_step): (u32, u32, u32),
        names: &[&str],
        extra: &dyn Fn(&mut StdRng) -> Option<String>,
    ) -> String {
        if rng.random_bool(0.25) {
            return "*".to_string();
        }
        let count = if rng.random_bool(0.7) {
            1
        } else {
            rng.random_range(2..=3)
        };
        (0..count)
            .map(|_| extra(rng).unwrap_or_else(|| element(rng, min, max, max_step, names)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Expressions of 5 and 6 fields with lists, ranges, steps, names, `?`, `L`, `W`, `#`, `nL`
    /// and `+`, and the nicknames; both day fields restricted, both `*`, or one.
    fn random_expression(rng: &mut StdRng) -> String {
        const NICKNAMES: [&str; 6] = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@hourly",
        ];
        if rng.random_bool(0.01) {
            return NICKNAMES[rng.random_range(0..NICKNAMES.len())].to_string();
        }
        let none = |_: &mut StdRng| None;
        let dom_extra = |rng: &mut StdRng| match rng.random_range(0..12) {
            0 => Some("L".to_string()),
            1 => Some(format!("{}W", rng.random_range(1..=31))),
            _ => None,
        };
        let dow_extra = |rng: &mut StdRng| match rng.random_range(0..12) {
            0 => Some(format!("{}L", rng.random_range(0..=7))),
            1 => Some(format!(
                "{}#{}",
                rng.random_range(0..=7),
                rng.random_range(1..=5)
            )),
            2 => {
                let a = rng.random_range(0..=7);
                let b = rng.random_range(a..=7);
                Some(format!("{a}-{b}#{}", rng.random_range(1..=5)))
            }
            _ => None,
        };
        let mut dom = field(rng, (1, 31, 30), &[], &dom_extra);
        let mut dow = field(rng, (0, 7, 6), &WEEKDAYS, &dow_extra);
        // Day-of-month and day-of-week: restricted, `*` or `?` in every combination.
        if rng.random_bool(0.1) {
            dom = "?".to_string();
        }
        if rng.random_bool(0.1) {
            dow = "?".to_string();
        }
        if rng.random_bool(0.05) {
            dow.insert(0, '+');
        }
        let mut fields = vec![
            field(rng, (0, 59, 59), &[], &none),
            field(rng, (0, 23, 23), &[], &none),
            dom,
            field(rng, (1, 12, 11), &MONTHS, &none),
            dow,
        ];
        if rng.random_bool(0.4) {
            fields.insert(0, field(rng, (0, 59, 59), &[], &none));
        }
        fields.join(" ")
    }

    /// A start instant in 1970..=2100, often at a month's first or last day (Feb 28/29 among
    /// them), a year's end, or a day's first or last second.
    fn random_start(rng: &mut StdRng) -> NaiveDateTime {
        let year = rng.random_range(1970..=2100);
        let month = if rng.random_bool(0.15) {
            [2, 12][rng.random_range(0..2)]
        } else {
            rng.random_range(1..=12)
        };
        let len = days_in_month(year, month);
        let day = match rng.random_range(0..5) {
            0 => len,
            1 => len - 1,
            2 => 1,
            _ => rng.random_range(1..=len),
        };
        let (h, m, s) = match rng.random_range(0..4) {
            0 => (23, 59, 59),
            1 => (0, 0, 0),
            _ => (
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60),
            ),
        };
        NaiveDate::from_ymd_opt(year, month, day)
            .and_then(|d| d.and_hms_opt(h, m, s))
            .unwrap()
    }

    /// The compact pattern against croner itself: the next reading (inclusive and not) from
    /// random instants and from each result, and every day of a random month.
    #[test]
    fn compact_pattern_matches_croner() {
        let mut rng = StdRng::seed_from_u64(0xc207_e9a1);
        let (mut expressions, mut searches, mut days) = (0, 0, 0);
        while expressions < 3000 {
            let expr = random_expression(&mut rng);
            let Ok(spec) = CronSpec::parse(&expr) else {
                continue;
            };
            expressions += 1;
            let cron = parser().parse(spec.as_str()).unwrap();
            let croner_next = |from: NaiveDateTime, inclusive: bool| {
                cron.find_next_occurrence(&from.and_utc(), inclusive)
                    .ok()
                    .map(|at| at.naive_utc())
            };
            for _ in 0..3 {
                let mut from = random_start(&mut rng);
                let mut inclusive = rng.random_bool(0.5);
                // From the start, then from each result: inclusive (itself) and exclusive.
                for _ in 0..3 {
                    let ours = spec.naive_next(from, inclusive);
                    assert_eq!(
                        ours,
                        croner_next(from, inclusive),
                        "{expr} from {from} (inclusive: {inclusive})"
                    );
                    searches += 1;
                    let Some(found) = ours else { break };
                    assert_eq!(spec.naive_next(found, true), Some(found), "{expr}");
                    from = found;
                    inclusive = false;
                }
            }
            let year = rng.random_range(1970..=2100);
            let month = rng.random_range(1..=12);
            let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap();
            let mask = spec
                .pattern
                .day_mask(year, month, first.weekday().num_days_from_sunday());
            for day in 1..=days_in_month(year, month) {
                assert_eq!(
                    mask & (1 << day) != 0,
                    cron.pattern.day_match(year, month, day).unwrap(),
                    "{expr} on {year}-{month}-{day}"
                );
                days += 1;
            }
        }
        // A guard against a generator that stops producing cases.
        assert!(
            searches > 20_000 && days > 90_000,
            "{searches} searches, {days} days"
        );
    }

    /// A plain expression (see [`parse_plain`]) of 5 or 6 fields, values within bounds; `?`
    /// sometimes in the day fields.
    fn plain_expression(rng: &mut StdRng) -> String {
        let none = |_: &mut StdRng| None;
        let mut fields = vec![
            field(rng, (0, 59, 59), &[], &none),
            field(rng, (0, 23, 23), &[], &none),
            field(rng, (1, 31, 30), &[], &none),
            field(rng, (1, 12, 11), &MONTHS, &none),
            field(rng, (0, 7, 6), &WEEKDAYS, &none),
        ];
        for day in [2, 4] {
            if rng.random_bool(0.1) {
                fields[day] = "?".to_string();
            }
        }
        if rng.random_bool(0.4) {
            fields.insert(0, field(rng, (0, 59, 59), &[], &none));
        }
        fields.join(" ")
    }

    /// An element that is often wrong: values just out of range, reversed ranges, steps of 0 or
    /// too large, names in the wrong field or misspelt, `?`, `*` in a list, `L`, `W`, `#`.
    fn rough_element(rng: &mut StdRng, min: u32, max: u32) -> String {
        const NAMES: [&str; 12] = [
            "Mon", "sun", "SAT", "Jan", "dec", "May", "Foo", "Sunday", "MO", "Ja", "ſun", "Mär",
        ];
        let mut v = || match rng.random_range(0..8) {
            0 => NAMES[rng.random_range(0..NAMES.len())].to_string(),
            1 => format!("0{}", rng.random_range(min..=max)),
            _ => rng
                .random_range(min.saturating_sub(2)..=max + 2)
                .to_string(),
        };
        let (a, b) = (v(), v());
        let step = rng.random_range(0..=max / 2 + 2);
        match rng.random_range(0..12) {
            0..=2 => a,
            3 | 4 => format!("{a}-{b}"),
            5 => format!("*/{step}"),
            6 => format!("{a}-{b}/{step}"),
            7 => format!("{a}/{step}"),
            8 => ["*", "?", "?/2", "L", "5L", "15W", "1#2", "*/Mon"][rng.random_range(0..8)]
                .to_string(),
            9 => format!("{a}-{b}-{step}"),
            10 => format!("{a}/{step}/2"),
            _ => format!("-{a}"),
        }
    }

    /// 5 or 6 fields of `*`, `?` or lists of rough elements.
    fn rough_expression(rng: &mut StdRng) -> String {
        let mut fields: Vec<String> = BOUNDS[1..]
            .iter()
            .map(|&(min, max)| match rng.random_range(0..8) {
                0 => "*".to_string(),
                1 => "?".to_string(),
                n => (0..n / 3 + 1)
                    .map(|_| rough_element(rng, u32::from(min), u32::from(max)))
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect();
        if rng.random_bool(0.4) {
            fields.insert(0, rough_element(rng, 0, 59));
        }
        fields.join(" ")
    }

    /// `expr` with a character replaced, inserted or removed (stray characters, lost spaces).
    fn mutate(rng: &mut StdRng, expr: &str) -> String {
        const STRAY: [char; 16] = [
            ' ', ',', '-', '/', '*', '?', 'L', 'W', '#', '+', 'x', 'A', '0', '7', '@', 'é',
        ];
        let mut chars: Vec<char> = expr.chars().collect();
        let at = rng.random_range(0..=chars.len());
        let stray = STRAY[rng.random_range(0..STRAY.len())];
        match rng.random_range(0..3) {
            0 if at < chars.len() => chars[at] = stray,
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ => chars.insert(at, stray),
        }
        chars.into_iter().collect()
    }

    /// Checks the fast path on `expr` against croner (the same pattern and `fixed_time`
    /// whenever it takes it) and `CronSpec::parse` with and without it (the same answer, errors
    /// word for word). Returns whether the fast path took it, whether croner parses it, and
    /// whether `CronSpec::parse` refused it.
    fn check_fast_path(expr: &str) -> (bool, bool, bool) {
        let trimmed = expr.trim();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let fast = match fields.len() {
            5 | 6 if !trimmed.starts_with('@') => parse_plain(&fields),
            _ => None,
        };
        let croner = parser().parse(trimmed);
        if let Some((pattern, fixed_time)) = fast {
            let cron = croner
                .as_ref()
                .unwrap_or_else(|e| panic!("{expr}: fast path took it, croner says {e}"));
            assert_eq!(pattern, Pattern::new(cron, trimmed), "{expr}");
            let croner_fixed = [&cron.pattern.seconds, &cron.pattern.minutes]
                .into_iter()
                .chain([&cron.pattern.hours])
                .all(|c| !c.from_wildcard && c.step <= 1);
            assert_eq!(fixed_time, croner_fixed, "{expr}");
        }
        let parse =
            |fast| CronSpec::parse_with(expr, fast).map(|s| (s.expr, s.pattern, s.fixed_time));
        let with_fast = parse(true);
        assert_eq!(with_fast, parse(false), "{expr}");
        (fast.is_some(), croner.is_ok(), with_fast.is_err())
    }

    /// The fast path against croner on hand-picked corners, then on 30,000 random expressions:
    /// plain ones, rough ones (mostly invalid), the full grammar, and each with a stray
    /// character. It must take (nearly) every valid plain expression.
    #[test]
    fn fast_path_agrees_with_croner() {
        for (expr, taken) in [
            ("0 9 * * Fri-Sun", true),
            ("0 9 * * SUN-sun", true),
            ("0 9 * * sun,7", true),
            ("0 9 * * 1-SUN/2", true),
            ("0 9 * * Sun/3", true),
            ("0 9 ?/5 * ?", true),
            ("0 0 9 ? Jan-MAR/2 ?", true),
            ("*/5 0/1 007 * * *", true),
            ("0/5,0/1 0 0 * * *", true),
            ("0 0 */7 * 1", true),
            ("0 9 * * */Mon", false),
            ("0 9 * * 7-1", false),
            ("0 9 * * 0-8", false),
            ("0 9 * Mon *", false),
            ("0 9 * * Jan", false),
            ("0 9 * * Sunday", false),
            ("0 9 * * ſun", false),
            ("? 9 * * *", false),
            ("0 9 1,* * *", false),
            ("0 9 0 * *", false),
            ("0 9 1-2-3 * *", false),
            ("0 9 5/0 * *", false),
            ("0 24 * * *", false),
            ("0 9 * * +1", false),
            ("0 9 L * *", false),
            ("0 0 30 2 *", true),
        ] {
            assert_eq!(check_fast_path(expr).0, taken, "{expr}");
        }
        let mut rng = StdRng::seed_from_u64(0xfa57_9a75);
        let (mut taken, mut plain_valid, mut plain_taken, mut errors) = (0, 0, 0, 0);
        const CASES: usize = 30_000;
        for n in 0..CASES {
            let (expr, plain) = match n % 5 {
                0 | 1 => (plain_expression(&mut rng), true),
                2 => (rough_expression(&mut rng), false),
                3 => (random_expression(&mut rng), false),
                _ => {
                    let expr = match rng.random_range(0..3) {
                        0 => plain_expression(&mut rng),
                        1 => rough_expression(&mut rng),
                        _ => random_expression(&mut rng),
                    };
                    (mutate(&mut rng, &expr), false)
                }
            };
            let (fast, croner_ok, refused) = check_fast_path(&expr);
            taken += usize::from(fast);
            errors += usize::from(refused);
            if plain && croner_ok {
                plain_valid += 1;
                plain_taken += usize::from(fast);
            }
        }
        println!(
            "{CASES} expressions: fast path took {taken}; {plain_taken} of {plain_valid} valid plain ones; {errors} refused"
        );
        assert!(
            plain_taken * 100 >= plain_valid * 95 && plain_valid > CASES / 3,
            "fast path took {plain_taken} of {plain_valid} valid plain expressions"
        );
        // Both kinds of case occur in numbers: refusals, and expressions only croner takes.
        assert!(
            errors > CASES / 10 && taken < CASES - errors - CASES / 20,
            "{errors} {taken}"
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
        // The same searches on wall-clock readings: croner's against the compact pattern's.
        let crons: Vec<Cron> = exprs.iter().map(|e| parser().parse(e).unwrap()).collect();
        let from = |i: usize| {
            (utc("2026-11-28T00:00:00Z") + Duration::seconds(i64::try_from(i).unwrap() * 997))
                .naive_utc()
        };
        let started = std::time::Instant::now();
        for i in 0..1_000_000 {
            let cron = &crons[(i * 7919) % crons.len()];
            assert!(cron.find_next_occurrence(&from(i).and_utc(), false).is_ok());
        }
        let theirs = started.elapsed();
        let started = std::time::Instant::now();
        for i in 0..1_000_000 {
            assert!(
                specs[(i * 7919) % specs.len()]
                    .naive_next(from(i), false)
                    .is_some()
            );
        }
        println!(
            "1,000,000 wall-clock searches: croner {theirs:?}, compact {:?}",
            started.elapsed()
        );
        let started = std::time::Instant::now();
        for e in &exprs {
            assert!(parser().parse(e).is_ok());
        }
        println!("croner's own parse of the 100,000: {:?}", started.elapsed());
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(CronSpec::parse("0 0 30 2 *").is_err());
        }
        println!(
            "refusing a never-matching expression: {:?} each",
            started.elapsed() / 1000
        );
    }
}
