//! Raw YAML → validated [`Config`], collecting every problem and warning on the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::de::DeserializeOwned;

use super::raw::{Id, RawApp, RawConfig, RawRecipients, RawSchedule};
use super::{
    App, Config, DEFAULT_API_BASE, DEFAULT_DUPLICATE_CHECK_INTERVAL, MessageTemplate, Problem,
    Schedule, SecretSource, Secrets, Subject,
};
use crate::cron::CronSpec;
use crate::template::Template;
use crate::wecom::message::{
    DUPLICATE_CHECK_INTERVAL, MAX_PARTIES, MAX_TAGS, MAX_USERS, Recipients,
};

/// How many upcoming slots are rendered to check limits and duplicate suppression.
const SLOTS_SAMPLED: usize = 200;

#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report {
    fn error(&mut self, subject: &Subject, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            subject: subject.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, subject: &Subject, field: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            subject: subject.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

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
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            // serde_yaml's message carries the line and column.
            report.error(&Subject::File, "yaml", e.to_string());
            return (None, report.problems, report.warnings);
        }
    };

    let timezone = match &raw.timezone {
        Some(name) => parse_zone(name).unwrap_or_else(|message| {
            report.error(&Subject::File, "timezone", message);
            Tz::UTC
        }),
        None => local_zone(&mut report),
    };
    let database = raw.database.as_ref().map(|p| base.join(p));

    let apps = validate_apps(raw.apps, base, secrets, &mut report);
    if raw.schedules.is_empty() {
        report.warn(
            &Subject::File,
            "schedules",
            "no schedules are defined; nothing will be sent",
        );
    }
    let mut names = HashSet::new();
    let mut schedules = Vec::new();
    for (index, value) in raw.schedules.into_iter().enumerate() {
        let label = value
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", index + 1));
        let subject = Subject::Schedule(label);
        let Some(raw) = deserialize::<RawSchedule>(value, &subject, &mut report) else {
            continue;
        };
        if let Some(schedule) = validate_schedule(raw, &subject, timezone, &apps, &mut report) {
            if !names.insert(schedule.name.clone()) {
                report.error(
                    &subject,
                    "name",
                    "is used by an earlier schedule; names must be unique (they key the history)",
                );
                continue;
            }
            check_rendering(&schedule, &apps, now, &subject, &mut report);
            schedules.push(Arc::new(schedule));
        }
    }

    let config = Config {
        path: Default::default(),
        digest: String::new(),
        database,
        timezone,
        apps,
        schedules,
        warnings: Vec::new(),
    };
    (Some(config), report.problems, report.warnings)
}

/// Deserializes one entry, reporting a type error or unknown key with its path.
fn deserialize<T: DeserializeOwned>(
    value: serde_yaml::Value,
    subject: &Subject,
    report: &mut Report,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let field = match (path.as_str(), unknown_field(&message)) {
                (".", Some(key)) => key.to_string(),
                (".", None) => "(entry)".to_string(),
                (path, Some(key)) => format!("{path}.{key}"),
                (path, None) => path.to_string(),
            };
            report.error(subject, &field, format!("{message}; fix the spelling or the type (a typo must not silently drop a setting)"));
            None
        }
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn validate_apps(
    raw: BTreeMap<String, serde_yaml::Value>,
    base: &Path,
    secrets: Secrets,
    report: &mut Report,
) -> BTreeMap<String, Arc<App>> {
    let mut apps = BTreeMap::new();
    let mut identities: HashMap<(String, i64), String> = HashMap::new();
    for (name, value) in raw {
        let subject = Subject::App(name.clone());
        if !valid_name(&name) {
            report.error(
                &subject,
                "name",
                "may use only letters, digits, '_', '.' and '-'",
            );
        }
        let Some(raw) = deserialize::<RawApp>(value, &subject, report) else {
            continue;
        };
        let corp_id = raw.corp_id.filter(|c| !c.trim().is_empty());
        if corp_id.is_none() {
            report.error(&subject, "corp_id", "is missing; copy the corp ID (企业ID) from 我的企业 → 企业信息, e.g. ww0123456789abcdef");
        }
        match raw.agent_id {
            None => report.error(
                &subject,
                "agent_id",
                "is missing; copy the AgentId from the app's page under 应用管理, e.g. 1000002",
            ),
            Some(id) if id <= 0 => report.error(
                &subject,
                "agent_id",
                format!("is {id}; an AgentId is a positive integer such as 1000002"),
            ),
            Some(_) => {}
        }
        let mut sources = Vec::new();
        if let Some(name) = raw.secret_env {
            sources.push(SecretSource::Env(name));
        }
        if let Some(path) = raw.secret_file {
            sources.push(SecretSource::File(base.join(path)));
        }
        if let Some(name) = raw.secret_credential {
            sources.push(SecretSource::Credential(name));
        }
        if let Some(value) = raw.secret {
            sources.push(SecretSource::Inline(super::Secret::new(value)));
        }
        let source = match sources.len() {
            1 => sources.pop(),
            0 => {
                report.error(&subject, "secret_env", "no secret is configured; set exactly one of secret_env, secret_file, secret_credential or secret");
                None
            }
            _ => {
                let keys: Vec<_> = sources.iter().map(SecretSource::field).collect();
                report.error(
                    &subject,
                    keys[1],
                    format!(
                        "{} are all set; keep exactly one secret source",
                        keys.join(", ")
                    ),
                );
                None
            }
        };
        let mut secret = None;
        if let Some(source) = &source {
            if let SecretSource::Inline(_) = source {
                report.warn(&subject, "secret", "the secret is written in the config file, where anyone who can read the file can send as this app; prefer secret_file or secret_credential");
            }
            match source.resolve() {
                Ok(value) => secret = Some(value),
                Err(message) => match secrets {
                    Secrets::Required => report.error(&subject, source.field(), message),
                    Secrets::Optional => report.warn(
                        &subject,
                        source.field(),
                        format!("{message} (ignored: a dry run does not call WeCom)"),
                    ),
                },
            }
        }
        let api_base = raw.api_base.unwrap_or_else(|| DEFAULT_API_BASE.to_string());
        let api_base = api_base.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&api_base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => report.error(
                &subject,
                "api_base",
                format!(
                    "\"{api_base}\" is not an http(s) URL; leave it out to use {DEFAULT_API_BASE}"
                ),
            ),
        }
        let (Some(corp_id), Some(agent_id), Some(secret_source)) = (corp_id, raw.agent_id, source)
        else {
            continue;
        };
        if let Some(other) = identities.insert((corp_id.clone(), agent_id), name.clone()) {
            report.error(&subject, "agent_id", format!("app \"{other}\" already names corp {corp_id}, agent {agent_id}; one WeCom app needs one entry (they would share a token)"));
            continue;
        }
        apps.insert(
            name.clone(),
            Arc::new(App {
                name,
                corp_id,
                agent_id,
                secret_source,
                secret,
                api_base,
            }),
        );
    }
    apps
}

fn validate_schedule(
    raw: RawSchedule,
    subject: &Subject,
    default_zone: Tz,
    apps: &BTreeMap<String, Arc<App>>,
    report: &mut Report,
) -> Option<Schedule> {
    let name = match raw.name {
        None => {
            report.error(
                subject,
                "name",
                "is missing; give every schedule a unique name such as standup",
            );
            None
        }
        Some(name) if !valid_name(&name) => {
            report.error(
                subject,
                "name",
                "may use only letters, digits, '_', '.' and '-'",
            );
            None
        }
        Some(name) => Some(name),
    };
    let cron = match raw.cron {
        None => {
            report.error(
                subject,
                "cron",
                "is missing; e.g. cron: \"30 9 * * 1-5\" (09:30 on workdays)",
            );
            None
        }
        Some(expr) => CronSpec::parse(&expr)
            .map_err(|m| report.error(subject, "cron", m))
            .ok(),
    };
    let zone = match raw.timezone {
        None => Some(default_zone),
        Some(name) => parse_zone(&name)
            .map_err(|m| report.error(subject, "timezone", m))
            .ok(),
    };
    let app = match raw.app {
        Some(app) if apps.contains_key(&app) => Some(app),
        Some(app) => {
            let known: Vec<_> = apps.keys().map(String::as_str).collect();
            report.error(
                subject,
                "app",
                format!(
                    "\"{app}\" is not defined under apps (defined: {})",
                    list_or_none(&known)
                ),
            );
            None
        }
        None if apps.len() == 1 => apps.keys().next().cloned(),
        None => {
            let known: Vec<_> = apps.keys().map(String::as_str).collect();
            report.error(
                subject,
                "app",
                format!(
                    "is missing; with several apps each schedule names one of: {}",
                    list_or_none(&known)
                ),
            );
            None
        }
    };
    let to = match raw.to {
        None => {
            report.error(subject, "to", "is missing; say who receives it, e.g. to: { users: [ZhangSan] } or to: { users: [\"@all\"] }");
            None
        }
        Some(to) => validate_recipients(to, subject, report),
    };
    let message = validate_message(&raw.text, &raw.textcard, subject, report);
    let safe = raw.safe.unwrap_or(false);
    if safe && matches!(message, Some(MessageTemplate::TextCard { .. })) {
        report.error(
            subject,
            "safe",
            "WeCom supports confidential (safe) messages for text only; remove safe or send text",
        );
    }
    let interval = raw
        .duplicate_check_interval
        .unwrap_or(i64::from(DEFAULT_DUPLICATE_CHECK_INTERVAL));
    let duplicate_check_interval = match u32::try_from(interval) {
        Ok(seconds) if DUPLICATE_CHECK_INTERVAL.contains(&seconds) => Some(seconds),
        _ => {
            report.error(
                subject,
                "duplicate_check_interval",
                format!("is {interval}; WeCom accepts 1 to 14400 seconds (4 hours)"),
            );
            None
        }
    };
    Some(Schedule {
        name: name?,
        cron: cron?,
        zone: zone?,
        app: app?,
        to: to?,
        message: message?,
        safe,
        enable_id_trans: raw.enable_id_trans.unwrap_or(false),
        duplicate_check_interval: duplicate_check_interval?,
        enabled: raw.enabled.unwrap_or(true),
    })
}

fn validate_recipients(
    raw: RawRecipients,
    subject: &Subject,
    report: &mut Report,
) -> Option<Recipients> {
    let mut ok = true;
    let mut ids = |field: &str, values: Vec<Id>, max: usize| -> Vec<String> {
        let values: Vec<String> = values.into_iter().map(Id::into_string).collect();
        if values.len() > max {
            report.error(subject, field, format!("lists {} ids; WeCom accepts at most {max} per message (use a party or tag, or split the schedule)", values.len()));
            ok = false;
        }
        for value in &values {
            if value.trim().is_empty() || value.contains('|') || value.contains(char::is_whitespace)
            {
                report.error(
                    subject,
                    field,
                    format!("\"{value}\" is not a valid id (empty, or contains '|' or spaces)"),
                );
                ok = false;
            }
        }
        values
    };
    let to = Recipients {
        users: ids("to.users", raw.users, MAX_USERS),
        parties: ids("to.parties", raw.parties, MAX_PARTIES),
        tags: ids("to.tags", raw.tags, MAX_TAGS),
    };
    if to.users.is_empty() && to.parties.is_empty() && to.tags.is_empty() {
        report.error(
            subject,
            "to",
            "has no recipients; list users, parties or tags (or users: [\"@all\"])",
        );
        ok = false;
    }
    if to.users.iter().any(|u| u == "@all")
        && (to.users.len() > 1 || !to.parties.is_empty() || !to.tags.is_empty())
    {
        report.error(subject, "to.users", "\"@all\" already reaches everyone and WeCom ignores the other recipients; use \"@all\" alone");
        ok = false;
    }
    ok.then_some(to)
}

fn validate_message(
    text: &Option<super::raw::RawText>,
    textcard: &Option<super::raw::RawTextCard>,
    subject: &Subject,
    report: &mut Report,
) -> Option<MessageTemplate> {
    let mut template = |field: &str, value: &Option<String>| -> Option<Template> {
        match value.as_deref().filter(|v| !v.trim().is_empty()) {
            None => {
                report.error(subject, field, "is missing or empty");
                None
            }
            Some(source) => Template::parse(source)
                .map_err(|m| report.error(subject, field, m))
                .ok(),
        }
    };
    match (text, textcard) {
        (Some(_), Some(_)) => {
            report.error(
                subject,
                "text",
                "text and textcard are both set; keep exactly one",
            );
            None
        }
        (None, None) => {
            report.error(
                subject,
                "text",
                "no message: add text: { content: ... } or textcard: { title, description, url }",
            );
            None
        }
        (Some(text), None) => {
            let content = template("text.content", &text.content)?;
            Some(MessageTemplate::Text { content })
        }
        (None, Some(card)) => {
            let title = template("textcard.title", &card.title);
            let description = template("textcard.description", &card.description);
            let url = template("textcard.url", &card.url);
            let btntxt = card.btntxt.clone().filter(|b| !b.is_empty());
            Some(MessageTemplate::TextCard {
                title: title?,
                description: description?,
                url: url?,
                btntxt,
            })
        }
    }
}

/// Renders the next slots to check WeCom's limits on the real text, and warns when WeCom's
/// duplicate check would swallow a repeat.
fn check_rendering(
    schedule: &Schedule,
    apps: &BTreeMap<String, Arc<App>>,
    now: DateTime<Utc>,
    subject: &Subject,
    report: &mut Report,
) {
    let agent_id = apps.get(&schedule.app).map_or(0, |a| a.agent_id);
    let sample = if schedule.message.is_static() {
        2
    } else {
        SLOTS_SAMPLED
    };
    let slots = schedule
        .cron
        .upcoming(now, schedule.zone, SLOTS_SAMPLED.max(sample));
    let mut reported = HashSet::new();
    let rendered: Vec<DateTime<Utc>> = if slots.is_empty() {
        vec![now]
    } else {
        slots.iter().take(sample).copied().collect()
    };
    for slot in rendered {
        for (field, message) in schedule.content_at(slot).limit_problems() {
            if reported.insert(field) {
                report.error(subject, field, message);
            }
        }
    }
    let interval = chrono::Duration::seconds(i64::from(schedule.duplicate_check_interval));
    let bodies: Vec<(DateTime<Utc>, String)> = slots
        .iter()
        .map(|slot| (*slot, schedule.body_at(agent_id, *slot).1))
        .collect();
    if let Some(pair) = bodies
        .windows(2)
        .find(|w| w[1].0 - w[0].0 < interval && w[1].1 == w[0].1)
    {
        let gap = (pair[1].0 - pair[0].0).num_seconds();
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

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
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
