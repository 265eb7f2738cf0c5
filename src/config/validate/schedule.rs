//! One `schedules:` entry, and the rules about how often it fires.

use super::message::{
    check_limits, validate_message, validate_recipients, warn_duplicates, warn_wechat_plugin,
};
use super::*;

/// Validates one item of `schedules:`. With the schedule comes its first slot after
/// `context.now`: every check that looks at upcoming slots looks at slots from that one on, so
/// until then a reload finds the same (see [`super::reuse`]).
pub(super) fn validate_schedule(
    index: usize,
    value: Value,
    context: &Context<'_>,
    names: &mut HashSet<String>,
    report: &mut Report,
) -> Option<(Schedule, Option<DateTime<Utc>>)> {
    let label: Arc<str> = value
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{}", index + 1).into(), Arc::from);
    let subject = Subject::Schedule(label);
    let entry = Entry::open(value, SCHEDULE_KEYS, &subject, "", report)?;
    let name = match entry.get::<String>("name", report) {
        Field::Value(name) if let Some(problem) = name_problem(&name) => {
            report.error(&subject, "name", problem);
            None
        }
        Field::Value(name) if !names.insert(name.clone()) => {
            report.error(
                &subject,
                "name",
                "is used by an earlier schedule; names must be unique (they key the history)",
            );
            None
        }
        Field::Value(name) => Some(name),
        Field::Invalid => None,
        Field::Missing => {
            entry.missing(
                "name",
                report,
                "is missing; give every schedule a unique name such as standup",
            );
            None
        }
    };
    let cron = match entry.get::<String>("cron", report) {
        Field::Value(expr) => context
            .crons
            .parse(&expr)
            .map_err(|m| report.error(&subject, "cron", m))
            .ok(),
        Field::Invalid => None,
        Field::Missing => {
            entry.missing(
                "cron",
                report,
                "is missing; e.g. cron: \"30 9 * * 1-5\" (09:30 on workdays)",
            );
            None
        }
    };
    let zone = match entry.get::<String>("timezone", report) {
        Field::Value(name) => parse_zone(&name)
            .map_err(|m| report.error(&subject, "timezone", m))
            .ok(),
        Field::Invalid => None,
        Field::Missing => Some(context.default_zone),
    };
    let robot = resolve_robot(&entry, context, report);
    // A robot schedule, or one that must be (the file defines robots and no app): either way no
    // app or recipients are looked for, so a missing robot: is reported once.
    let is_robot = entry.raw("robot").is_some()
        || (entry.raw("app").is_none()
            && context.declared.is_empty()
            && !context.declared_robots.is_empty());
    let (app, to) = if is_robot {
        refuse_app_fields(&entry, report);
        (Some(String::new()), Some(Recipients::default()))
    } else {
        let app = resolve_app(&entry, context, report);
        let to = match entry.nested("to", TO_KEYS, report) {
            Field::Value(to) => validate_recipients(&to, report),
            Field::Invalid => None,
            Field::Missing => {
                entry.missing("to", report, "is missing; say who receives it, e.g. to: { users: [ZhangSan] } or to: { users: [\"@all\"] }");
                None
            }
        };
        (app, to)
    };
    let message = validate_message(&entry, report);
    let mention = validate_mention(&entry, is_robot, report);
    if is_robot
        && let Some(message) = &message
        && !ROBOT_MSGTYPES.contains(&message.msgtype())
    {
        report.error(
            &subject,
            message.msgtype(),
            format!(
                "a group robot takes {}; send a {} through an app (app + to) instead",
                ROBOT_MSGTYPES.join(", "),
                message.msgtype()
            ),
        );
    }
    // On a robot schedule the app-only fields are refused as such (refuse_app_fields), whatever
    // their value: not read, so a bad value is not reported a second time.
    let safe = if is_robot {
        Field::Missing
    } else {
        entry.get::<bool>("safe", report)
    };
    // On a robot schedule these are errors of their own (refuse_app_fields).
    if !is_robot
        && matches!(safe, Field::Value(true))
        && let Some(message) = message.as_ref().filter(|m| !m.supports_safe())
    {
        report.error(
            &subject,
            "safe",
            format!("WeCom supports confidential (safe) messages for text only, not {}; remove safe or send text", message.msgtype()),
        );
    }
    let duplicate_check_interval = if is_robot {
        Some(DEFAULT_DUPLICATE_CHECK_INTERVAL)
    } else {
        interval(&entry, report)
    };
    let enable_id_trans = if is_robot {
        Field::Missing
    } else {
        entry.get::<bool>("enable_id_trans", report)
    };
    if !is_robot
        && matches!(enable_id_trans, Field::Value(true))
        && let Some(message) = message.as_ref().filter(|m| !m.supports_id_trans())
    {
        report.error(
            &subject,
            "enable_id_trans",
            format!(
                "WeCom does not translate ids in {} messages; remove enable_id_trans",
                message.msgtype()
            ),
        );
    }
    if let Some(message) = &message {
        warn_wechat_plugin(message, &subject, report);
    }
    let enabled = entry.get::<bool>("enabled", report);
    let catch_up = match duration(&entry, "catch_up", report) {
        Ok(None) => Ok(context.default_catch_up),
        other => other,
    };
    let jitter = duration(&entry, "jitter", report);
    let calendar = match entry.get::<String>("calendar", report) {
        Field::Missing => Ok(None),
        Field::Invalid => Err(()),
        Field::Value(name) => match context.calendars.get(&name) {
            Some(Some(calendar)) => Ok(Some(calendar.clone())),
            // Declared but invalid: its own problems are reported.
            Some(None) => Err(()),
            None => {
                let known: Vec<&str> = context.calendars.keys().map(String::as_str).collect();
                report.error(
                    &subject,
                    "calendar",
                    format!(
                        "\"{}\" is not defined under calendars (defined: {})",
                        super::super::escaped(&name),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                Err(())
            }
        },
    };
    // The next slots, computed once for every check below (a large config has thousands of
    // schedules, and each slot costs a cron search).
    let slots = match (&cron, zone) {
        (Some(cron), Some(zone)) => {
            let mut slots = cron.upcoming(context.now, zone, SLOTS_SAMPLED);
            // A schedule that fires within a minute gets a longer look (WeCom's per-minute limit).
            if slots
                .windows(2)
                .any(|w| w[1] - w[0] < chrono::Duration::minutes(1))
                && let Some(&last) = slots.last()
            {
                let more = (PER_MINUTE_LIMIT + 1).saturating_sub(slots.len());
                slots.extend(cron.upcoming(last, zone, more));
            }
            slots
        }
        _ => Vec::new(),
    };
    if let Some(message) = &message {
        // Limits are checked even when other fields are broken, at the next slots when known.
        let zone = zone.unwrap_or(context.default_zone);
        let now = [context.now];
        let sample = if slots.is_empty() { &now[..] } else { &slots };
        check_limits(
            message,
            if is_robot { Dest::Robot } else { Dest::App },
            name.as_deref().unwrap_or_default(),
            zone,
            sample,
            &subject,
            report,
        );
    }
    // The robot's name for a robot schedule (whose `app` is empty), else the app's.
    let (sender, is_robot) = match (app?, robot.ok()?) {
        (_, Some(robot)) => (robot, true),
        (app, None) => (app, false),
    };
    let mut schedule = Schedule {
        name: name?.into_boxed_str(),
        cron: cron?,
        zone: zone?,
        sender: context.shared.apps.intern(Box::from(sender)),
        is_robot,
        to: context.shared.recipients.intern(to?),
        mention: context.shared.mentions.intern(mention?),
        message: context.shared.messages.intern(message?),
        safe: optional(safe, false)?,
        enable_id_trans: optional(enable_id_trans, false)?,
        duplicate_check_interval: duplicate_check_interval?,
        enabled: optional(enabled, true)?,
        catch_up: kept_seconds(catch_up.ok()?),
        jitter: kept_seconds(jitter.ok()?),
        workday_cron: None,
        calendar: calendar.ok()?,
    };
    if let Some(calendar) = schedule
        .calendar
        .as_ref()
        .filter(|c| !c.workdays.is_empty())
    {
        // Through the cache: schedules sharing an expression share its every-day form too.
        schedule.workday_cron = schedule
            .cron
            .workday_variant()
            .and_then(|expr| context.crons.parse(&expr).ok());
        if schedule.workday_cron.is_none() {
            report.warn(&subject, "calendar", format!("calendar \"{}\" lists make-up workdays, but they only apply to workday schedules (day-of-month *, day-of-week covering Monday to Friday); this schedule ignores them", calendar.name));
        }
    }
    check_timing(&schedule, &slots, context.now, &subject, report)?;
    if schedule.robot().is_none() {
        // A robot has no duplicate check: nothing is swallowed.
        warn_duplicates(&schedule, &slots, &subject, report);
    }
    // The expression's first slot, or a make-up workday's before it (`check_timing` looks at
    // those too).
    let first = match schedule.workday_cron {
        None => slots.first().copied(),
        Some(_) => schedule.next_after(context.now),
    };
    Some((schedule, first))
}

/// The message types a group robot takes.
const ROBOT_MSGTYPES: &[&str] = &["text", "markdown", "news"];

/// WeCom's limit on one robot: messages a minute (beyond it, 45009).
const ROBOT_PER_MINUTE_LIMIT: usize = crate::gate::ROBOT_PER_MINUTE as usize;

/// `robot:`: `Ok(None)` for an app schedule, `Err` when it names no valid robot (reported).
fn resolve_robot(
    entry: &Entry<'_>,
    context: &Context<'_>,
    report: &mut Report,
) -> Result<Option<String>, ()> {
    match entry.get::<String>("robot", report) {
        Field::Missing => {
            if entry.raw("app").is_none()
                && context.declared.is_empty()
                && !context.declared_robots.is_empty()
            {
                let robots: Vec<&str> =
                    context.declared_robots.iter().map(String::as_str).collect();
                report.error(
                    entry.subject,
                    "robot",
                    format!(
                        "is missing; no app is defined, so name the group robot to post through: {}",
                        robots.join(", ")
                    ),
                );
                return Err(());
            }
            Ok(None)
        }
        Field::Invalid => Err(()),
        // Declared but invalid: its own problems are reported.
        Field::Value(name) if context.declared_robots.contains(&name) => {
            if context.robots.contains_key(&name) {
                Ok(Some(name))
            } else {
                Err(())
            }
        }
        Field::Value(name) => {
            let declared: Vec<&str> = context.declared_robots.iter().map(String::as_str).collect();
            report.error(
                entry.subject,
                "robot",
                format!(
                    "\"{}\" is not defined under robots (defined: {})",
                    super::super::escaped(&name),
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
            Err(())
        }
    }
}

/// The app-only fields of a robot schedule, each an error: none of them means anything in a
/// group chat, and a setting that silently does nothing is worse than an error.
fn refuse_app_fields(entry: &Entry<'_>, report: &mut Report) {
    let refusals: [(&str, &str); 5] = [
        (
            "app",
            "app and robot are both set; a schedule sends either as an app (app + to) or through a group robot; keep one",
        ),
        (
            "to",
            "a group robot posts into its own group chat and has no recipients; remove to (to @ members, use text.mention: { users: [...], mobiles: [...] })",
        ),
        (
            "safe",
            "is for app messages; a robot's message cannot be confidential. Remove it",
        ),
        ("enable_id_trans", "is for app messages; remove it"),
        (
            "duplicate_check_interval",
            "a group robot has no duplicate check (a robot send is at most once: never resent when its outcome is unknown); remove it",
        ),
    ];
    for (key, message) in refusals {
        if entry.raw(key).is_some() {
            report.error(entry.subject, key, message);
        }
    }
}

/// `text.mention: { users, mobiles }`, robot schedules only.
fn validate_mention(entry: &Entry<'_>, is_robot: bool, report: &mut Report) -> Option<Mention> {
    let Some(value) = entry
        .raw("text")
        .and_then(|text| text.get("mention"))
        .cloned()
    else {
        return Some(Mention::default());
    };
    if !is_robot {
        report.error(
            entry.subject,
            "text.mention",
            "mentions are for group-robot schedules; an app message reaches exactly the members in to. Remove it, or send through a robot",
        );
        return None;
    }
    let mention = Entry::open(value, MENTION_KEYS, entry.subject, "text.mention", report)?;
    let users = mention.ids("users", report);
    let mobiles = mention.ids("mobiles", report);
    let (users, mobiles) = (users?, mobiles?);
    let mut ok = true;
    for user in &users {
        if let Some(problem) = hidden_char_problem(user) {
            report.error(entry.subject, "text.mention.users", problem);
            ok = false;
        }
    }
    for mobile in &mobiles {
        let digits = mobile.strip_prefix('+').unwrap_or(mobile);
        if mobile != "@all"
            && !(digits.len() >= 5 && digits.chars().all(|c| c.is_ascii_digit() || c == '-'))
        {
            report.error(
                entry.subject,
                "text.mention.mobiles",
                format!(
                    "\"{}\" is not a mobile number; list numbers such as \"13800001111\", or \"@all\"",
                    super::super::escaped(mobile)
                ),
            );
            ok = false;
        }
    }
    ok.then_some(Mention { users, mobiles })
}

/// `duplicate_check_interval`, within WeCom's range.
fn interval(entry: &Entry<'_>, report: &mut Report) -> Option<u32> {
    let out_of_range = |seconds: &dyn std::fmt::Display, report: &mut Report| {
        report.error(
            entry.subject,
            "duplicate_check_interval",
            format!("is {seconds}; WeCom accepts 1 to 14400 seconds (4 hours)"),
        );
        None
    };
    // An integer beyond 64 bits arrives as a float (see `yaml.rs`): it is out of range too.
    if entry
        .raw("duplicate_check_interval")
        .and_then(Value::as_f64)
        .is_some_and(|f| f.fract() == 0.0 && f.abs() > i64::MAX as f64)
    {
        return out_of_range(&"far beyond 14400", report);
    }
    match entry.get::<i64>("duplicate_check_interval", report) {
        Field::Missing => Some(DEFAULT_DUPLICATE_CHECK_INTERVAL),
        Field::Invalid => None,
        Field::Value(seconds) => match u32::try_from(seconds) {
            Ok(s) if DUPLICATE_CHECK_INTERVAL.contains(&s) => Some(s),
            _ => out_of_range(&seconds, report),
        },
    }
}

/// Rules about how often a schedule fires: jitter must not reorder slots, and WeCom's
/// per-member limits (30 a minute, 1000 an hour) must not be exceeded by one schedule alone.
pub(super) fn check_timing(
    schedule: &Schedule,
    first: &[DateTime<Utc>],
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) -> Option<()> {
    if let (Some(jitter), Some(gap)) = (
        schedule.jitter(),
        first.windows(2).map(|w| w[1] - w[0]).min(),
    ) && jitter >= gap
    {
        report.error(subject, "jitter", format!("is {}s, but slots can be {}s apart: a jittered send could overtake the next slot; use less than {}s", jitter.num_seconds(), gap.num_seconds(), gap.num_seconds()));
        return None;
    }
    if schedule.robot().is_some() {
        let span =
            |slots: &[DateTime<Utc>], n: usize| (slots.len() > n).then(|| slots[n] - slots[0]);
        if span(first, ROBOT_PER_MINUTE_LIMIT).is_some_and(|s| s < chrono::Duration::minutes(1)) {
            report.warn(subject, "cron", format!("fires more than {ROBOT_PER_MINUTE_LIMIT} times a minute; a group robot takes {ROBOT_PER_MINUTE_LIMIT} messages a minute, so the daemon holds the excess back to the following minutes and sends fall further and further behind"));
        }
        return Some(());
    }
    let per_member = "WeCom delivers at most 30 messages a minute and 1000 an hour from one app to one member and silently drops the rest; the daemon will spread the excess out";
    let span = |slots: &[DateTime<Utc>], n: usize| (slots.len() > n).then(|| slots[n] - slots[0]);
    if span(first, PER_MINUTE_LIMIT).is_some_and(|s| s < chrono::Duration::minutes(1)) {
        report.warn(
            subject,
            "cron",
            format!("fires more than {PER_MINUTE_LIMIT} times a minute. {per_member}"),
        );
    } else if span(first, PER_MINUTE_LIMIT).is_some_and(|s| {
        s.num_seconds() * (PER_HOUR_LIMIT as i64) < 3600 * (PER_MINUTE_LIMIT as i64)
    }) {
        // Fast enough that the hourly limit may be reached: look at a whole hour of slots.
        let hour = schedule.upcoming(now, PER_HOUR_LIMIT + 1);
        if span(&hour, PER_HOUR_LIMIT).is_some_and(|s| s < chrono::Duration::hours(1)) {
            report.warn(
                subject,
                "cron",
                format!("fires more than {PER_HOUR_LIMIT} times an hour. {per_member}"),
            );
        }
    }
    Some(())
}

pub(super) fn resolve_app(
    entry: &Entry<'_>,
    context: &Context<'_>,
    report: &mut Report,
) -> Option<String> {
    let declared: Vec<&str> = context.declared.iter().map(String::as_str).collect();
    let name = match entry.get::<String>("app", report) {
        Field::Value(name) if context.declared.contains(&name) => name,
        Field::Value(name) => {
            let defined = if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            };
            report.error(
                entry.subject,
                "app",
                format!(
                    "\"{}\" is not defined under apps (defined: {defined})",
                    super::super::escaped(&name)
                ),
            );
            return None;
        }
        Field::Invalid => return None,
        // With no app at all, the file-level problem already says so.
        Field::Missing if declared.len() <= 1 => declared.first()?.to_string(),
        Field::Missing => {
            report.error(
                entry.subject,
                "app",
                format!(
                    "is missing; with several apps each schedule names one of: {}",
                    declared.join(", ")
                ),
            );
            return None;
        }
    };
    // An app that is declared but invalid has its own problems reported; do not repeat them here.
    context.apps.contains_key(&name).then_some(name)
}
