//! The rules: YAML → validated [`Config`], collecting every problem and warning on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_yaml::Value;

use super::fields::{Entry, Field, Report};
use super::{
    App, Config, DEFAULT_API_BASE, DEFAULT_DUPLICATE_CHECK_INTERVAL, MessageTemplate, Problem,
    Schedule, Secret, SecretSource, Secrets, Subject,
};
use crate::calendar::Calendar;
use crate::cron::CronSpec;
use crate::template::Template;
use crate::wecom::message::{
    DUPLICATE_CHECK_INTERVAL, MAX_PARTIES, MAX_TAGS, MAX_USERS, Recipients,
};

const TOP_KEYS: &[&str] = &[
    "database",
    "timezone",
    "catch_up",
    "history_retention",
    "metrics",
    "calendars",
    "apps",
    "schedules",
];
const CALENDAR_KEYS: &[&str] = &["skip", "workdays"];
const METRICS_KEYS: &[&str] = &["listen"];
const APP_KEYS: &[&str] = &[
    "corp_id",
    "agent_id",
    "secret_env",
    "secret_file",
    "secret_credential",
    "secret",
    "api_base",
];
const SCHEDULE_KEYS: &[&str] = &[
    "name",
    "cron",
    "timezone",
    "app",
    "to",
    "text",
    "textcard",
    "safe",
    "enable_id_trans",
    "duplicate_check_interval",
    "enabled",
    "catch_up",
    "jitter",
    "calendar",
];
const TO_KEYS: &[&str] = &["users", "parties", "tags"];
const TEXT_KEYS: &[&str] = &["content"];
const TEXTCARD_KEYS: &[&str] = &["title", "description", "url", "btntxt"];

/// WeCom's per-member delivery limits of one app (beyond them messages are silently dropped).
const PER_MINUTE_LIMIT: usize = crate::gate::PER_MEMBER_PER_MINUTE;
const PER_HOUR_LIMIT: usize = crate::gate::PER_MEMBER_PER_HOUR;

/// How many upcoming slots are rendered to check limits and duplicate suppression.
const SLOTS_SAMPLED: usize = 24;

pub(super) fn validate(
    text: &str,
    base: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
) -> (Option<Config>, Vec<Problem>, Vec<Problem>) {
    let mut report = Report::default();
    if text.trim().is_empty() {
        report.error(
            &Subject::File,
            "file",
            "is empty; start from schedules.example.yaml",
        );
        return (None, report.problems, report.warnings);
    }
    let config = read(text, base, secrets, now, &mut report);
    (config, report.problems, report.warnings)
}

fn read(
    text: &str,
    base: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Option<Config> {
    let file = Subject::File;
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        // serde_yaml's message carries the line and column.
        Err(e) => {
            report.error(&file, "yaml", e.to_string());
            return None;
        }
    };
    let top = Entry::open(value, TOP_KEYS, &file, "", report)?;
    let timezone = match top.get::<String>("timezone", report) {
        Field::Value(name) => parse_zone(&name)
            .map_err(|m| report.error(&file, "timezone", m))
            .unwrap_or(Tz::UTC),
        Field::Invalid => Tz::UTC,
        Field::Missing => local_zone(report),
    };
    let database = top
        .get::<PathBuf>("database", report)
        .ok()
        .map(|p| base.join(p));
    let default_catch_up = duration(&top, "catch_up", report).ok().flatten();
    let history_retention = duration(&top, "history_retention", report).ok().flatten();
    let metrics_listen = match top.nested("metrics", METRICS_KEYS, report) {
        Field::Value(metrics) => listen_address(&metrics, report),
        _ => None,
    };
    let calendars = match top.raw("calendars") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => validate_calendars(map, report),
        Some(_) => {
            report.error(
                &file,
                "calendars",
                "must map calendar names to { skip: [...], workdays: [...] }",
            );
            BTreeMap::new()
        }
    };

    let raw_apps = match top.raw("apps") {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| (k.as_str().map(str::to_string), v.clone()))
            .collect(),
        Some(_) => {
            report.error(
                &file,
                "apps",
                "must map app names to their settings (see schedules.example.yaml)",
            );
            Vec::new()
        }
    };
    let raw_schedules = match top.raw("schedules") {
        None => Vec::new(),
        Some(Value::Sequence(list)) => list.clone(),
        Some(_) => {
            report.error(
                &file,
                "schedules",
                "must be a list of schedules, each starting with \"- name: ...\"",
            );
            Vec::new()
        }
    };
    if top.raw("apps").is_none() && top.raw("schedules").is_none() {
        report.error(
            &file,
            "file",
            "defines no apps and no schedules; start from schedules.example.yaml",
        );
    } else if raw_apps.is_empty() && !raw_schedules.is_empty() {
        report.error(
            &file,
            "apps",
            "no app is defined; add one (corp_id, agent_id, a secret) under apps:",
        );
    }
    if raw_schedules.is_empty() && top.raw("apps").is_some() {
        report.warn(
            &file,
            "schedules",
            "no schedules are defined; nothing will be sent",
        );
    }

    let declared: BTreeSet<String> = raw_apps
        .iter()
        .filter_map(|(name, _)| name.clone())
        .collect();
    let apps = validate_apps(raw_apps, base, secrets, report);
    let context = Context {
        default_zone: timezone,
        default_catch_up,
        calendars: &calendars,
        declared: &declared,
        apps: &apps,
        now,
    };
    let mut names = HashSet::new();
    let mut schedules = Vec::new();
    for (index, value) in raw_schedules.into_iter().enumerate() {
        if let Some(schedule) = validate_schedule(index, value, &context, &mut names, report) {
            schedules.push(Arc::new(schedule));
        }
    }
    Some(Config {
        path: PathBuf::new(),
        digest: String::new(),
        database,
        timezone,
        apps,
        schedules,
        warnings: Vec::new(),
        history_retention,
        metrics_listen,
    })
}

struct Context<'a> {
    default_zone: Tz,
    default_catch_up: Option<chrono::Duration>,
    calendars: &'a BTreeMap<String, Option<Arc<Calendar>>>,
    /// Every app name written in the file, valid or not: a schedule naming an invalid app is
    /// not blamed for the app's own problems.
    declared: &'a BTreeSet<String>,
    apps: &'a BTreeMap<String, Arc<App>>,
    now: DateTime<Utc>,
}

/// `calendars:`; a declared but invalid calendar maps to `None`.
fn validate_calendars(
    map: &serde_yaml::Mapping,
    report: &mut Report,
) -> BTreeMap<String, Option<Arc<Calendar>>> {
    let mut calendars = BTreeMap::new();
    for (name, value) in map {
        let Some(name) = name.as_str().map(str::to_string) else {
            report.error(
                &Subject::File,
                "calendars",
                "calendar names must be strings",
            );
            continue;
        };
        let subject = Subject::Calendar(name.clone());
        if !valid_name(&name) {
            report.error(
                &subject,
                "name",
                "may use only letters, digits, '_', '.' and '-'",
            );
        }
        let calendar = Entry::open(value.clone(), CALENDAR_KEYS, &subject, "", report).and_then(|entry| {
            let skip = dates(&entry, "skip", report);
            let workdays = dates(&entry, "workdays", report);
            let (skip, workdays) = (skip?, workdays?);
            if let Some(both) = skip.intersection(&workdays).next() {
                report.error(&subject, "workdays", format!("{both} is also listed under skip; a date is either a holiday or a make-up workday"));
                return None;
            }
            valid_name(&name).then(|| Arc::new(Calendar { name: name.clone(), skip, workdays }))
        });
        calendars.insert(name, calendar);
    }
    calendars
}

/// A list of `YYYY-MM-DD` dates.
fn dates(entry: &Entry<'_>, key: &str, report: &mut Report) -> Option<BTreeSet<chrono::NaiveDate>> {
    let texts = entry.ids(key, report)?;
    let mut dates = BTreeSet::new();
    let mut ok = true;
    for text in texts {
        match chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
            Ok(date) => {
                dates.insert(date);
            }
            Err(_) => {
                report.error(
                    entry.subject,
                    &entry.name(key),
                    format!("\"{text}\" is not a date; write YYYY-MM-DD, e.g. 2026-10-01"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(dates)
}

/// `metrics.listen`: an address and port to serve /metrics on.
fn listen_address(metrics: &Entry<'_>, report: &mut Report) -> Option<std::net::SocketAddr> {
    match metrics.get::<String>("listen", report) {
        Field::Value(text) => match text.parse::<std::net::SocketAddr>() {
            Ok(address) => {
                if !address.ip().is_loopback() {
                    report.warn(metrics.subject, "metrics.listen", format!("{address} is reachable from other hosts; /metrics has no authentication (prefer 127.0.0.1)"));
                }
                Some(address)
            }
            Err(_) => {
                report.error(
                    metrics.subject,
                    "metrics.listen",
                    format!("\"{text}\" is not an address:port such as 127.0.0.1:9464"),
                );
                None
            }
        },
        Field::Missing => {
            metrics.missing(
                "listen",
                report,
                "is missing; e.g. metrics: { listen: \"127.0.0.1:9464\" }",
            );
            None
        }
        Field::Invalid => None,
    }
}

fn validate_apps(
    raw: Vec<(Option<String>, Value)>,
    base: &Path,
    secrets: Secrets,
    report: &mut Report,
) -> BTreeMap<String, Arc<App>> {
    let mut apps = BTreeMap::new();
    let mut identities: HashMap<(String, i64), String> = HashMap::new();
    for (name, value) in raw {
        let Some(name) = name else {
            report.error(&Subject::File, "apps", "app names must be strings");
            continue;
        };
        let Some(app) = validate_app(&name, value, base, secrets, report) else {
            continue;
        };
        if let Some(other) = identities.insert((app.corp_id.clone(), app.agent_id), name.clone()) {
            report.error(
                &Subject::App(name),
                "agent_id",
                format!("app \"{other}\" already names corp {}, agent {}; one WeCom app needs one entry (they would share a token)", app.corp_id, app.agent_id),
            );
            continue;
        }
        apps.insert(app.name.clone(), Arc::new(app));
    }
    apps
}

fn validate_app(
    name: &str,
    value: Value,
    base: &Path,
    secrets: Secrets,
    report: &mut Report,
) -> Option<App> {
    let subject = Subject::App(name.to_string());
    let name_ok = valid_name(name);
    if !name_ok {
        report.error(
            &subject,
            "name",
            "may use only letters, digits, '_', '.' and '-'",
        );
    }
    let entry = Entry::open(value, APP_KEYS, &subject, "", report)?;
    let corp_id = match entry.get::<String>("corp_id", report) {
        Field::Value(id) if !id.trim().is_empty() => Some(id),
        Field::Invalid => None,
        _ => {
            entry.missing("corp_id", report, "is missing; copy the corp ID (企业ID) from 我的企业 → 企业信息, e.g. ww0123456789abcdef");
            None
        }
    };
    let agent_id = match entry.get::<i64>("agent_id", report) {
        Field::Value(id) if id > 0 => Some(id),
        Field::Value(id) => {
            report.error(
                &subject,
                "agent_id",
                format!("is {id}; an AgentId is a positive integer such as 1000002"),
            );
            None
        }
        Field::Invalid => None,
        Field::Missing => {
            entry.missing(
                "agent_id",
                report,
                "is missing; copy the AgentId from the app's page under 应用管理, e.g. 1000002",
            );
            None
        }
    };
    let source = secret_source(&entry, base, report)?;
    let secret = resolve_secret(&source, &subject, secrets, report);
    let api_base = match entry.get::<String>("api_base", report) {
        Field::Value(url) => Some(url.trim_end_matches('/').to_string()),
        Field::Missing => Some(DEFAULT_API_BASE.to_string()),
        Field::Invalid => None,
    }
    .filter(|url| {
        let ok = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            report.error(
                &subject,
                "api_base",
                format!("\"{url}\" is not an http(s) URL; leave it out to use {DEFAULT_API_BASE}"),
            );
        }
        ok
    });
    if !name_ok {
        return None;
    }
    Some(App {
        name: name.to_string(),
        corp_id: corp_id?,
        agent_id: agent_id?,
        secret_source: source,
        secret,
        api_base: api_base?,
    })
}

/// Exactly one of the four secret keys.
fn secret_source(entry: &Entry<'_>, base: &Path, report: &mut Report) -> Option<SecretSource> {
    let mut sources = Vec::new();
    let mut invalid = false;
    let mut take = |field: Field<String>, make: &dyn Fn(String) -> SecretSource| match field {
        Field::Value(v) => sources.push(make(v)),
        Field::Invalid => invalid = true,
        Field::Missing => {}
    };
    take(entry.get("secret_env", report), &SecretSource::Env);
    take(entry.get("secret_file", report), &|p| {
        SecretSource::File(base.join(p))
    });
    take(
        entry.get("secret_credential", report),
        &SecretSource::Credential,
    );
    take(entry.get("secret", report), &|s| {
        SecretSource::Inline(Secret::new(s))
    });
    match sources.len() {
        _ if invalid => None,
        1 => sources.pop(),
        0 => {
            report.error(entry.subject, "secret_env", "no secret is configured; set exactly one of secret_env, secret_file, secret_credential or secret");
            None
        }
        _ => {
            let keys: Vec<_> = sources.iter().map(SecretSource::field).collect();
            report.error(
                entry.subject,
                keys[1],
                format!(
                    "{} are all set; keep exactly one secret source",
                    keys.join(", ")
                ),
            );
            None
        }
    }
}

fn resolve_secret(
    source: &SecretSource,
    subject: &Subject,
    secrets: Secrets,
    report: &mut Report,
) -> Option<Secret> {
    if let SecretSource::Inline(_) = source {
        report.warn(subject, "secret", "the secret is written in the config file, where anyone who can read the file can send as this app; prefer secret_file or secret_credential");
    }
    match source.resolve() {
        Ok(secret) => Some(secret),
        Err(message) => {
            match secrets {
                Secrets::Required => report.error(
                    subject,
                    source.field(),
                    format!("{message} (or validate with --dry-run, which needs no secret)"),
                ),
                Secrets::Optional => report.warn(
                    subject,
                    source.field(),
                    format!("{message} (ignored: a dry run does not call WeCom)"),
                ),
            }
            None
        }
    }
}

fn validate_schedule(
    index: usize,
    value: Value,
    context: &Context<'_>,
    names: &mut HashSet<String>,
    report: &mut Report,
) -> Option<Schedule> {
    let label = value
        .get("name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("#{}", index + 1), str::to_string);
    let subject = Subject::Schedule(label);
    let entry = Entry::open(value, SCHEDULE_KEYS, &subject, "", report)?;
    let name = match entry.get::<String>("name", report) {
        Field::Value(name) if !valid_name(&name) => {
            report.error(
                &subject,
                "name",
                "may use only letters, digits, '_', '.' and '-'",
            );
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
        Field::Value(expr) => CronSpec::parse(&expr)
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
    let app = resolve_app(&entry, context, report);
    let to = match entry.nested("to", TO_KEYS, report) {
        Field::Value(to) => validate_recipients(&to, report),
        Field::Invalid => None,
        Field::Missing => {
            entry.missing("to", report, "is missing; say who receives it, e.g. to: { users: [ZhangSan] } or to: { users: [\"@all\"] }");
            None
        }
    };
    let message = validate_message(&entry, report);
    let safe = entry.get::<bool>("safe", report);
    if matches!(safe, Field::Value(true))
        && matches!(message, Some(MessageTemplate::TextCard { .. }))
    {
        report.error(
            &subject,
            "safe",
            "WeCom supports confidential (safe) messages for text only; remove safe or send text",
        );
    }
    let duplicate_check_interval = match entry.get::<i64>("duplicate_check_interval", report) {
        Field::Missing => Some(DEFAULT_DUPLICATE_CHECK_INTERVAL),
        Field::Invalid => None,
        Field::Value(seconds) => u32::try_from(seconds)
            .ok()
            .filter(|s| DUPLICATE_CHECK_INTERVAL.contains(s))
            .or_else(|| {
                report.error(
                    &subject,
                    "duplicate_check_interval",
                    format!("is {seconds}; WeCom accepts 1 to 14400 seconds (4 hours)"),
                );
                None
            }),
    };
    let enable_id_trans = entry.get::<bool>("enable_id_trans", report);
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
                        "\"{name}\" is not defined under calendars (defined: {})",
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
    if let Some(message) = &message {
        // Limits are checked even when other fields are broken, at the next slots when known.
        let zone = zone.unwrap_or(context.default_zone);
        let slots = cron
            .as_ref()
            .map(|c| c.upcoming(context.now, zone, SLOTS_SAMPLED))
            .unwrap_or_default();
        check_limits(
            message,
            name.as_deref().unwrap_or_default(),
            zone,
            &slots,
            context.now,
            &subject,
            report,
        );
    }
    let mut schedule = Schedule {
        name: name?,
        cron: cron?,
        zone: zone?,
        app: app?,
        to: to?,
        message: message?,
        safe: optional(safe, false)?,
        enable_id_trans: optional(enable_id_trans, false)?,
        duplicate_check_interval: duplicate_check_interval?,
        enabled: optional(enabled, true)?,
        catch_up: catch_up.ok()?,
        jitter: jitter.ok()?,
        workday_cron: None,
        calendar: calendar.ok()?,
    };
    if let Some(calendar) = schedule
        .calendar
        .as_ref()
        .filter(|c| !c.workdays.is_empty())
    {
        schedule.workday_cron = schedule.cron.workday_variant();
        if schedule.workday_cron.is_none() {
            report.warn(&subject, "calendar", format!("calendar \"{}\" lists make-up workdays, but they only apply to workday schedules (day-of-month *, day-of-week covering Monday to Friday); this schedule ignores them", calendar.name));
        }
    }
    let agent_id = context.apps.get(&schedule.app).map_or(0, |a| a.agent_id);
    check_timing(&schedule, context.now, &subject, report)?;
    warn_duplicates(&schedule, agent_id, context.now, &subject, report);
    Some(schedule)
}

/// An optional positive duration (`90s`, `10m`); `Err` when present but invalid (reported).
fn duration(
    entry: &Entry<'_>,
    key: &str,
    report: &mut Report,
) -> Result<Option<chrono::Duration>, ()> {
    match entry.get::<String>(key, report) {
        Field::Missing => Ok(None),
        Field::Invalid => Err(()),
        Field::Value(text) => match crate::time::parse_duration(&text) {
            Ok(d) if d > chrono::Duration::zero() => Ok(Some(d)),
            Ok(_) => {
                report.error(
                    entry.subject,
                    &entry.name(key),
                    "must be longer than zero; leave it out to turn it off",
                );
                Err(())
            }
            Err(m) => {
                report.error(entry.subject, &entry.name(key), m);
                Err(())
            }
        },
    }
}

/// Rules about how often a schedule fires: jitter must not reorder slots, and WeCom's
/// per-member limits (30 a minute, 1000 an hour) must not be exceeded by one schedule alone.
fn check_timing(
    schedule: &Schedule,
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) -> Option<()> {
    let first = schedule.upcoming(now, PER_MINUTE_LIMIT + 1);
    if let (Some(jitter), Some(gap)) =
        (schedule.jitter, first.windows(2).map(|w| w[1] - w[0]).min())
        && jitter >= gap
    {
        report.error(subject, "jitter", format!("is {}s, but slots can be {}s apart: a jittered send could overtake the next slot; use less than {}s", jitter.num_seconds(), gap.num_seconds(), gap.num_seconds()));
        return None;
    }
    let per_member = "WeCom delivers at most 30 messages a minute and 1000 an hour from one app to one member and silently drops the rest; the daemon will spread the excess out";
    let span = |slots: &[DateTime<Utc>], n: usize| (slots.len() > n).then(|| slots[n] - slots[0]);
    if span(&first, PER_MINUTE_LIMIT).is_some_and(|s| s < chrono::Duration::minutes(1)) {
        report.warn(
            subject,
            "cron",
            format!("fires more than {PER_MINUTE_LIMIT} times a minute. {per_member}"),
        );
    } else if span(&first, PER_MINUTE_LIMIT).is_some_and(|s| {
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

/// A missing optional field takes its default; an invalid one (already reported) is `None`.
fn optional<T>(field: Field<T>, default: T) -> Option<T> {
    match field {
        Field::Value(value) => Some(value),
        Field::Missing => Some(default),
        Field::Invalid => None,
    }
}

fn resolve_app(entry: &Entry<'_>, context: &Context<'_>, report: &mut Report) -> Option<String> {
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
                format!("\"{name}\" is not defined under apps (defined: {defined})"),
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

fn validate_recipients(to: &Entry<'_>, report: &mut Report) -> Option<Recipients> {
    let subject = to.subject;
    let (users, parties, tags) = (
        to.ids("users", report),
        to.ids("parties", report),
        to.ids("tags", report),
    );
    let mut ok = true;
    for (key, ids, max) in [
        ("users", &users, MAX_USERS),
        ("parties", &parties, MAX_PARTIES),
        ("tags", &tags, MAX_TAGS),
    ] {
        let Some(ids) = ids else {
            ok = false;
            continue;
        };
        if ids.len() > max {
            report.error(subject, &to.name(key), format!("lists {} ids; WeCom accepts at most {max} per message (use a party or tag, or split the schedule)", ids.len()));
            ok = false;
        }
        for id in ids.iter().filter(|id| {
            id.trim().is_empty() || id.contains('|') || id.contains(char::is_whitespace)
        }) {
            report.error(
                subject,
                &to.name(key),
                format!("\"{id}\" is not a valid id (empty, or contains '|' or spaces)"),
            );
            ok = false;
        }
    }
    let to_all = Recipients {
        users: users?,
        parties: parties?,
        tags: tags?,
    };
    if to_all.users.is_empty() && to_all.parties.is_empty() && to_all.tags.is_empty() {
        report.error(
            subject,
            "to",
            "has no recipients; list users, parties or tags (or users: [\"@all\"])",
        );
        ok = false;
    }
    if to_all.users.iter().any(|u| u == "@all")
        && (to_all.users.len() > 1 || !to_all.parties.is_empty() || !to_all.tags.is_empty())
    {
        report.error(subject, "to.users", "\"@all\" already reaches everyone and WeCom ignores the other recipients; use \"@all\" alone");
        ok = false;
    }
    ok.then_some(to_all)
}

fn validate_message(entry: &Entry<'_>, report: &mut Report) -> Option<MessageTemplate> {
    let text = entry.nested("text", TEXT_KEYS, report);
    let card = entry.nested("textcard", TEXTCARD_KEYS, report);
    let template = |part: &Entry<'_>, key: &str, report: &mut Report| -> Option<Template> {
        match part.get::<String>(key, report) {
            Field::Value(source) if !source.trim().is_empty() => Template::parse(&source)
                .map_err(|m| report.error(part.subject, &part.name(key), m))
                .ok(),
            Field::Invalid => None,
            _ => {
                part.missing(key, report, "is missing or empty");
                None
            }
        }
    };
    match (text, card) {
        (Field::Missing, Field::Missing) => {
            entry.missing(
                "text",
                report,
                "no message: add text: { content: ... } or textcard: { title, description, url }",
            );
            None
        }
        (Field::Value(_) | Field::Invalid, Field::Value(_) | Field::Invalid) => {
            report.error(
                entry.subject,
                "text",
                "text and textcard are both set; keep exactly one",
            );
            None
        }
        (Field::Value(text), Field::Missing) => Some(MessageTemplate::Text {
            content: template(&text, "content", report)?,
        }),
        (Field::Missing, Field::Value(card)) => {
            let title = template(&card, "title", report);
            let description = template(&card, "description", report);
            let url = template(&card, "url", report);
            let btntxt = card.get::<String>("btntxt", report);
            Some(MessageTemplate::TextCard {
                title: title?,
                description: description?,
                url: url?,
                btntxt: optional(btntxt.map_value(Some), None)?.filter(|b| !b.is_empty()),
            })
        }
        _ => None,
    }
}

impl<T> Field<T> {
    fn map_value<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Value(v) => Field::Value(f(v)),
            Field::Invalid => Field::Invalid,
            Field::Missing => Field::Missing,
        }
    }
}

/// Renders the message at the next slots (or now) and reports every WeCom limit it breaks.
fn check_limits(
    message: &MessageTemplate,
    name: &str,
    zone: Tz,
    slots: &[DateTime<Utc>],
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) {
    let sample = if slots.is_empty() {
        vec![now]
    } else {
        slots.to_vec()
    };
    let count = if message.is_static() { 1 } else { sample.len() };
    let mut reported = HashSet::new();
    for slot in sample.into_iter().take(count) {
        for (field, problem) in message
            .render(name, slot.with_timezone(&zone))
            .limit_problems()
        {
            if reported.insert(field) {
                report.error(subject, field, problem);
            }
        }
    }
}

/// Warns when WeCom's duplicate check would swallow a repeat of an identical body.
fn warn_duplicates(
    schedule: &Schedule,
    agent_id: i64,
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) {
    let interval = chrono::Duration::seconds(i64::from(schedule.duplicate_check_interval));
    let slots = schedule.upcoming(now, SLOTS_SAMPLED);
    let repeat = slots.windows(2).find(|w| {
        w[1] - w[0] < interval
            && (schedule.message.is_static()
                || schedule.body_at(agent_id, w[0]).1 == schedule.body_at(agent_id, w[1]).1)
    });
    if let Some(pair) = repeat {
        let gap = (pair[1] - pair[0]).num_seconds();
        report.warn(subject, "duplicate_check_interval", format!(
            "the same body is sent again after {gap}s, within duplicate_check_interval ({}s): WeCom silently drops such repeats; set duplicate_check_interval below {gap} or put a variable such as {{{{ time }}}} in the text",
            schedule.duplicate_check_interval
        ));
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses an IANA zone name, suggesting the right spelling for a case mismatch.
pub(crate) fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        let hint = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| format!(" (did you mean {}?)", tz.name()))
            .unwrap_or_default();
        format!("\"{name}\" is not an IANA time zone{hint}; use a name such as Asia/Shanghai")
    })
}

/// The system's zone: `$TZ`, else the zone /etc/localtime points to, else UTC with a warning.
fn local_zone(report: &mut Report) -> Tz {
    let name = std::env::var("TZ")
        .ok()
        .map(|tz| tz.trim_start_matches(':').to_string())
        .filter(|tz| !tz.is_empty())
        .or_else(|| iana_time_zone::get_timezone().ok());
    match name.as_deref().map(str::parse::<Tz>) {
        Some(Ok(zone)) => zone,
        _ => {
            report.warn(&Subject::File, "timezone", "the system's time zone could not be determined; schedules use UTC. Set timezone: (e.g. Asia/Shanghai) at the top of the file");
            Tz::UTC
        }
    }
}
