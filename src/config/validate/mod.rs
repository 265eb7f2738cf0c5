//! The rules: YAML → validated [`Config`], collecting every problem and warning on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_yaml::Value;

use super::fields::{Entry, Field, Report};
use super::yaml::{Parsed, Pieces, Run};
use super::{
    App, Config, DEFAULT_API_BASE, DEFAULT_DUPLICATE_CHECK_INTERVAL, Mention, Prior, Problem,
    Reading, Robot, Schedule, Secret, SecretSource, Secrets, Subject, kept_seconds,
};
use crate::calendar::Calendar;
use crate::cron::CronSpec;
use crate::message::{
    Article, DUPLICATE_CHECK_INTERVAL, Dest, MAX_PARTIES, MAX_TAGS, MAX_USERS, MessageTemplate,
    Recipients,
};
use crate::template::Template;

mod apps;
mod calendars;
mod card;
mod database;
mod message;
mod reuse;
mod robots;
mod schedule;

pub(crate) use reuse::Memo;

use apps::validate_apps;
use calendars::validate_calendars;
use database::validate_database;
pub(super) use robots::key_field as robot_key_field;
use robots::validate_robots;
use schedule::validate_schedule;

const TOP_KEYS: &[&str] = &[
    "database",
    "database_password_env",
    "database_password_file",
    "database_password_credential",
    "timezone",
    "catch_up",
    "history_retention",
    "instance",
    "claim_lease",
    "metrics",
    "calendars",
    "apps",
    "robots",
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
    "max_in_flight",
    "proxy",
];
const ROBOT_KEYS: &[&str] = &[
    "key_env",
    "key_file",
    "key_credential",
    "key",
    "api_base",
    "proxy",
];
const SCHEDULE_KEYS: &[&str] = &[
    "name",
    "cron",
    "timezone",
    "app",
    "robot",
    "to",
    "text",
    "textcard",
    "markdown",
    "news",
    "template_card",
    "safe",
    "enable_id_trans",
    "duplicate_check_interval",
    "enabled",
    "catch_up",
    "jitter",
    "calendar",
];
const TO_KEYS: &[&str] = &["users", "parties", "tags"];
const TEXT_KEYS: &[&str] = &["content", "mention"];
const MENTION_KEYS: &[&str] = &["users", "mobiles"];
const TEXTCARD_KEYS: &[&str] = &["title", "description", "url", "btntxt"];
const MARKDOWN_KEYS: &[&str] = &["content"];
const NEWS_KEYS: &[&str] = &["articles"];
const ARTICLE_KEYS: &[&str] = &["title", "description", "url", "picurl", "appid", "pagepath"];

/// WeCom's per-member delivery limits of one app (beyond them messages are silently dropped).
const PER_MINUTE_LIMIT: usize = crate::gate::PER_MEMBER_PER_MINUTE;
const PER_HOUR_LIMIT: usize = crate::gate::PER_MEMBER_PER_HOUR;

/// How many upcoming slots the checks look at: eight weeks of a weekly schedule, two weeks of
/// a workday one (schedules firing within a minute get `PER_MINUTE_LIMIT + 1`).
const SLOTS_SAMPLED: usize = 8;
/// How many of them are rendered to check WeCom's length limits on a templated message.
const RENDERINGS_CHECKED: usize = 8;

pub(super) fn validate(
    text: &str,
    base: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
    reading: Reading<'_>,
) -> (Option<Config>, Vec<Problem>, Vec<Problem>) {
    let mut report = Report::default();
    // Editors on Windows start UTF-8 files with a byte order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        report.error(
            &Subject::File,
            "file",
            "is empty; start from schedules.example.yaml",
        );
        return (None, report.problems, report.warnings);
    }
    // A tree of the whole file (or why it has none): validated on this thread alone.
    let whole = |tree: Result<Value, String>, report: &mut Report| match tree {
        Ok(value) => {
            read(value, None, text, base, secrets, now, Reading::Once, report).unwrap_or(None)
        }
        Err(message) => {
            // The message carries the line (and serde_yaml's the column).
            report.error(&Subject::File, "yaml", message);
            None
        }
    };
    let config = match super::yaml::parse(text) {
        Ok(Parsed::Split(head, pieces)) => {
            match read(
                head,
                Some(pieces),
                text,
                base,
                secrets,
                now,
                reading,
                &mut report,
            ) {
                Ok(config) => config,
                // A piece did not parse as cut, or a name came back in another run: the file
                // is read whole, as one, for the exact problems (and the YAML error's line).
                Err(Redo) => {
                    report = Report::default();
                    whole(super::yaml::parse_whole(text), &mut report)
                }
            }
        }
        Ok(Parsed::Whole(value)) => whole(Ok(value), &mut report),
        Err(message) => whole(Err(message), &mut report),
    };
    (config, report.problems, report.warnings)
}

/// The file must be read again, whole and on one thread.
struct Redo;

/// Validates the tree `value` of `text`; when the file was split, the items of `schedules:`
/// come from `pieces` instead of the tree (where the list is empty), and the daemon's
/// `reading` takes over what the reading in force read of them where it can.
#[allow(clippy::too_many_arguments)]
fn read(
    value: Value,
    pieces: Option<Pieces<'_>>,
    text: &str,
    base: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
    reading: Reading<'_>,
    report: &mut Report,
) -> Result<Option<Config>, Redo> {
    let file = Subject::File;
    let Some(mut top) = Entry::open(value, TOP_KEYS, &file, "", report) else {
        return Ok(None);
    };
    let (has_apps, has_schedules) = (top.raw("apps").is_some(), top.raw("schedules").is_some());
    let timezone = match top.get::<String>("timezone", report) {
        Field::Value(name) => parse_zone(&name)
            .map_err(|m| report.error(&file, "timezone", m))
            .unwrap_or(Tz::UTC),
        Field::Invalid => Tz::UTC,
        Field::Missing => local_zone(report),
    };
    let database = validate_database(&top, base, report);
    let default_catch_up = duration(&top, "catch_up", report).ok().flatten();
    let history_retention = duration(&top, "history_retention", report).ok().flatten();
    let instance = match top.get::<String>("instance", report) {
        Field::Value(name) => match instance_problem(&name) {
            Some(problem) => {
                report.error(&file, "instance", problem);
                None
            }
            None => Some(name),
        },
        _ => None,
    };
    let claim_lease = match duration(&top, "claim_lease", report) {
        Ok(Some(lease)) if !(CLAIM_LEASE_MIN..=CLAIM_LEASE_MAX).contains(&lease) => {
            report.error(
                &file,
                "claim_lease",
                format!(
                    "must be from {} to {} seconds: the sending daemon renews it every third of it, and another takes a send over only once it lapsed",
                    CLAIM_LEASE_MIN.num_seconds(),
                    CLAIM_LEASE_MAX.num_seconds()
                ),
            );
            DEFAULT_CLAIM_LEASE
        }
        Ok(Some(lease)) => lease,
        _ => DEFAULT_CLAIM_LEASE,
    };
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

    // Taken out of the tree, not copied: a large file is validated without a second copy.
    let raw_apps = named_entries(top.take("apps"), "apps", "app", report);
    let raw_robots = named_entries(top.take("robots"), "robots", "robot", report);
    let raw_schedules = match top.take("schedules") {
        None => Vec::new(),
        Some(Value::Sequence(list)) => list,
        Some(_) => {
            report.error(
                &file,
                "schedules",
                "must be a list of schedules, each starting with \"- name: ...\"",
            );
            Vec::new()
        }
    };
    let schedule_count = raw_schedules.len() + pieces.as_ref().map_or(0, Pieces::count);
    let has_robots = !raw_robots.is_empty();
    if !has_apps && !has_robots && !has_schedules {
        report.error(
            &file,
            "file",
            "defines no apps and no schedules; start from schedules.example.yaml",
        );
    } else if raw_apps.is_empty() && !has_robots && schedule_count > 0 {
        report.error(
            &file,
            "apps",
            "no app is defined; add one (corp_id, agent_id, a secret) under apps:, or a group robot under robots:",
        );
    }
    if schedule_count == 0 && (has_apps || has_robots) {
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
    let non_decimal = super::yaml::non_decimal_agent_ids(text);
    let apps = validate_apps(raw_apps, base, secrets, &non_decimal, report);
    let declared_robots: BTreeSet<String> = raw_robots
        .iter()
        .filter_map(|(name, _)| name.clone())
        .collect();
    let robots = validate_robots(raw_robots, base, secrets, report);
    let context = Context {
        declared_robots: &declared_robots,
        robots: &robots,
        default_zone: timezone,
        default_catch_up,
        calendars: &calendars,
        declared: &declared,
        apps: &apps,
        now,
        crons: CronCache::default(),
        shared: Shared::default(),
    };
    let (schedules, memo) = match pieces {
        Some(pieces) => {
            let head_warnings = report.warnings.len();
            let taken_over = match reading {
                Reading::Kept(Some(prior)) => reuse::revalidate(&pieces, &context, prior, report),
                _ => None,
            };
            let keep = matches!(reading, Reading::Kept(_));
            let (schedules, items) = match taken_over {
                Some(taken_over) => taken_over,
                None => validate_pieces(&pieces, &context, keep, report)?,
            };
            let memo = keep.then(|| Arc::new(Memo::new(&context, head_warnings, items)));
            (schedules, memo)
        }
        None => {
            let mut names = HashSet::new();
            let mut schedules = Vec::new();
            for (index, value) in raw_schedules.into_iter().enumerate() {
                if let Some((schedule, _)) =
                    validate_schedule(index, value, &context, &mut names, report)
                {
                    schedules.push(Arc::new(schedule));
                }
            }
            (schedules, None)
        }
    };
    Ok(Some(Config {
        path: PathBuf::new(),
        digest: String::new(),
        database,
        timezone,
        apps,
        robots,
        schedules,
        warnings: Vec::new(),
        history_retention,
        metrics_listen,
        instance,
        claim_lease,
        memo,
    }))
}

/// The most threads that read the pieces of a split file.
const MAX_READERS: usize = 4;

/// Parses and validates the pieces of a split `schedules:`: runs of them on up to
/// [`MAX_READERS`] threads (as many as the machine has cores), each with its own caches, and
/// each holding one piece's tree at a time. The problems, warnings and schedules come out in
/// the file's order, as one thread would have found them. `Redo` when a piece did not parse
/// as cut, or when a name is used in two runs (only one thread reading both would report the
/// second use exactly as it would). With `keep`, also each item as a reload may take it over.
fn validate_pieces(
    pieces: &Pieces<'_>,
    context: &Context<'_>,
    keep: bool,
    report: &mut Report,
) -> Result<(Vec<Arc<Schedule>>, Vec<reuse::Item>), Redo> {
    struct Read {
        schedules: Vec<Arc<Schedule>>,
        items: Vec<reuse::Item>,
        report: Report,
        names: HashSet<String>,
        parsed: bool,
    }
    // Each run has a context of its own: caches are not shared between threads.
    let read = |run: &Run<'_>, context: Context<'_>| {
        let mut out = Read {
            schedules: Vec::new(),
            items: Vec::new(),
            report: Report::default(),
            names: HashSet::new(),
            parsed: true,
        };
        let mut index = run.indices().start;
        out.parsed = run.items(|text, value| {
            let before = out.report.warnings.len();
            let read = validate_schedule(index, value, &context, &mut out.names, &mut out.report);
            let first = read.as_ref().and_then(|(_, first)| *first);
            if let Some((schedule, _)) = read {
                out.schedules.push(Arc::new(schedule));
            }
            if keep {
                let warnings = out.report.warnings.len() - before;
                out.items.push(reuse::Item::new(text, first, warnings));
            }
            index += 1;
        });
        out
    };
    let runs = pieces.runs(crate::parallel::threads(MAX_READERS));
    let reads = crate::parallel::in_order(&runs, || context.fork(), read);
    let mut names = HashSet::new();
    let mut schedules = Vec::with_capacity(pieces.count());
    let mut items = Vec::with_capacity(pieces.count());
    for done in reads {
        if !done.parsed {
            return Err(Redo);
        }
        if names.is_empty() {
            names = done.names;
        } else {
            for name in done.names {
                if !names.insert(name) {
                    return Err(Redo);
                }
            }
        }
        report.problems.extend(done.report.problems);
        report.warnings.extend(done.report.warnings);
        schedules.extend(done.schedules);
        items.extend(done.items);
    }
    Ok((schedules, items))
}

/// The shortest and longest `claim_lease:`.
const CLAIM_LEASE_MIN: chrono::Duration = chrono::Duration::seconds(3);
const CLAIM_LEASE_MAX: chrono::Duration = chrono::Duration::seconds(600);
/// `claim_lease:` when it is left out.
pub const DEFAULT_CLAIM_LEASE: chrono::Duration = chrono::Duration::seconds(30);

/// Why `name` cannot name an instance (it goes into rows, events and log lines).
fn instance_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 64 {
        return Some("must be 1 to 64 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Some("may hold only ASCII letters, digits, '.', '-' and '_' (a host name fits)");
    }
    None
}

/// The entries of a top-level mapping of names (`apps:`, `robots:`), moved out of the tree.
fn named_entries(
    value: Option<Value>,
    key: &str,
    what: &str,
    report: &mut Report,
) -> Vec<(Option<String>, Value)> {
    match value {
        None => Vec::new(),
        Some(Value::Mapping(map)) => map
            .into_iter()
            .map(|(k, v)| (k.as_str().map(str::to_string), v))
            .collect(),
        Some(_) => {
            report.error(
                &Subject::File,
                key,
                format!("must map {what} names to their settings (see schedules.example.yaml)"),
            );
            Vec::new()
        }
    }
}

struct Context<'a> {
    default_zone: Tz,
    default_catch_up: Option<chrono::Duration>,
    calendars: &'a BTreeMap<String, Option<Arc<Calendar>>>,
    /// Every app name written in the file, valid or not: a schedule naming an invalid app is
    /// not blamed for the app's own problems.
    declared: &'a BTreeSet<String>,
    apps: &'a BTreeMap<String, Arc<App>>,
    /// Every robot name written in the file, valid or not.
    declared_robots: &'a BTreeSet<String>,
    robots: &'a BTreeMap<String, Arc<Robot>>,
    now: DateTime<Utc>,
    /// Parsed cron expressions by text: schedules sharing an expression share one parse (and
    /// its memory, about a hundred bytes).
    crons: CronCache,
    /// Values written alike by many schedules, one copy each.
    shared: Shared,
}

impl Context<'_> {
    /// The same context with empty caches, for another thread.
    fn fork(&self) -> Context<'_> {
        Context {
            crons: CronCache::default(),
            shared: Shared::default(),
            ..*self
        }
    }
}

/// One copy of each distinct value that many schedules of a large config write alike.
#[derive(Default)]
struct Shared {
    apps: Interner<Box<str>>,
    recipients: Interner<Recipients>,
    mentions: Interner<Mention>,
    messages: Interner<MessageTemplate>,
}

/// Values by content: equal values share one allocation.
struct Interner<T>(std::cell::RefCell<HashSet<Arc<T>>>);

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner(Default::default())
    }
}

impl<T: Eq + std::hash::Hash> Interner<T> {
    fn intern(&self, value: T) -> Arc<T> {
        let mut set = self.0.borrow_mut();
        if let Some(shared) = set.get(&value) {
            return shared.clone();
        }
        let shared = Arc::new(value);
        set.insert(shared.clone());
        shared
    }
}

#[derive(Default)]
struct CronCache(std::cell::RefCell<HashMap<String, Result<Arc<CronSpec>, String>>>);

impl CronCache {
    fn parse(&self, expr: &str) -> Result<Arc<CronSpec>, String> {
        let mut cache = self.0.borrow_mut();
        if let Some(parsed) = cache.get(expr) {
            return parsed.clone();
        }
        let parsed = CronSpec::parse(expr).map(Arc::new);
        cache.insert(expr.to_string(), parsed.clone());
        parsed
    }
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

/// A missing optional field takes its default; an invalid one (already reported) is `None`.
fn optional<T>(field: Field<T>, default: T) -> Option<T> {
    match field {
        Field::Value(value) => Some(value),
        Field::Missing => Some(default),
        Field::Invalid => None,
    }
}

/// What is wrong with a schedule, app or calendar name, if anything.
fn name_problem(name: &str) -> Option<String> {
    if let Some(hidden) = hidden_char_problem(name) {
        return Some(hidden);
    }
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!ok).then(|| "may use only letters, digits, '_', '.' and '-'".to_string())
}

/// The message for an id that holds a control or invisible character: such an id forges log
/// lines or reorders terminal text, and is never what the operator meant to type.
fn hidden_char_problem(id: &str) -> Option<String> {
    let c = id.chars().find(|c| super::is_hidden_char(*c))?;
    Some(format!(
        "\"{}\" contains {}, a control or invisible character; ids are plain text: retype it without that character",
        super::escaped(id),
        super::escaped(&c.to_string())
    ))
}

/// Parses an IANA zone name, suggesting the right spelling for a case mismatch.
pub(crate) fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        let hint = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| format!(" (did you mean {}?)", tz.name()))
            .unwrap_or_default();
        format!(
            "\"{}\" is not an IANA time zone{hint}; use a name such as Asia/Shanghai",
            super::escaped(name)
        )
    })
}

/// The system's zone (see `zone.rs`): a `TZ` or `/etc/localtime` that cannot be resolved is an
/// error, because schedules would fire hours off; with neither, UTC (as glibc), with a warning.
fn local_zone(report: &mut Report) -> Tz {
    match super::zone::system_zone() {
        Ok(Some(zone)) => zone,
        Ok(None) => {
            report.warn(&Subject::File, "timezone", "the system has no time zone (no TZ, no /etc/localtime); schedules use UTC. Set timezone: (e.g. Asia/Shanghai) at the top of the file");
            Tz::UTC
        }
        Err(message) => {
            report.error(&Subject::File, "timezone", message);
            Tz::UTC
        }
    }
}
