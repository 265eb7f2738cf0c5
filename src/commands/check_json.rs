//! `check --format json`: what `check` says, as one JSON document on stdout, for a CI pipeline
//! that lints schedule changes before they reach the server. The keys are stable (README,
//! "check --format json"); `format` is bumped if one ever changes meaning.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::config::{Config, ConfigError, Problem, Schedule, Subject};

/// The version of the document's shape.
const FORMAT: u64 = 1;

/// The document for a config that loaded.
pub fn valid(config: &Config, next: usize, now: DateTime<Utc>) -> Value {
    json!({
        "format": FORMAT,
        "config": config.path.display().to_string(),
        "valid": true,
        "digest": config.digest,
        "default_zone": config.timezone.name(),
        "problems": [],
        "warnings": config.warnings.iter().map(problem).collect::<Vec<_>>(),
        "schedules": config
            .schedules
            .iter()
            .map(|s| schedule(config, s, next, now))
            .collect::<Vec<_>>(),
    })
}

/// The document for a config that loaded, with a `--db` that cannot be used (a URL holding a
/// password): one problem, on the field `--db`.
pub fn db_refused(path: &std::path::Path, message: &str) -> Value {
    let problem = json!({
        "subject": "file",
        "name": null,
        "field": "--db",
        "message": message,
        "text": format!("--db: {message}"),
    });
    refused(path, vec![problem], Vec::new())
}

/// The document for a config that did not load.
pub fn invalid(path: &std::path::Path, error: &ConfigError) -> Value {
    let (problems, warnings) = match error {
        ConfigError::Invalid {
            problems, warnings, ..
        } => (
            problems.iter().map(problem).collect(),
            warnings.iter().map(problem).collect(),
        ),
        other => (
            vec![json!({
                "subject": "file",
                "name": null,
                "field": null,
                "message": other.to_string(),
                "text": other.to_string(),
            })],
            Vec::new(),
        ),
    };
    refused(path, problems, warnings)
}

/// The document that says `check` refused: `valid` false, no schedules.
fn refused(path: &std::path::Path, problems: Vec<Value>, warnings: Vec<Value>) -> Value {
    json!({
        "format": FORMAT,
        "config": path.display().to_string(),
        "valid": false,
        "digest": null,
        "default_zone": null,
        "problems": problems,
        "warnings": warnings,
        "schedules": [],
    })
}

fn problem(p: &Problem) -> Value {
    let (subject, name) = match &p.subject {
        Subject::File => ("file", None),
        Subject::App(name) => ("app", Some(&**name)),
        Subject::Robot(name) => ("robot", Some(&**name)),
        Subject::Calendar(name) => ("calendar", Some(&**name)),
        Subject::Schedule(name) => ("schedule", Some(&**name)),
    };
    json!({
        "subject": subject,
        "name": name,
        "field": &*p.field,
        "message": &*p.message,
        "text": p.to_string(),
    })
}

fn schedule(config: &Config, s: &Schedule, next: usize, now: DateTime<Utc>) -> Value {
    let slots = s.upcoming(now, next);
    let renders_as = slots
        .first()
        .map(|first| super::check::preview(&s.content_at(*first)));
    json!({
        "name": s.name,
        "enabled": s.enabled,
        "cron": s.cron.as_str(),
        "zone": s.zone.name(),
        "destination": match s.robot() {
            Some(robot) => format!("robot {robot}"),
            None => format!("app {}", s.app()),
        },
        "app": s.robot().is_none().then_some(s.app()),
        "agent_id": config.app(s.app()).map(|a| a.agent_id),
        "robot": s.robot(),
        "to": s.robot().is_none().then(|| s.to.summary()),
        "msgtype": s.message.msgtype(),
        "calendar": s.calendar.as_ref().map(|c| c.name.as_str()),
        "next": slots
            .iter()
            .map(|slot| json!({
                "at": slot.to_rfc3339_opts(SecondsFormat::Secs, true),
                "local": slot.with_timezone(&s.zone).to_rfc3339_opts(SecondsFormat::Secs, false),
                "skipped": s.skips(*slot),
                "make_up": s.is_make_up(*slot),
            }))
            .collect::<Vec<_>>(),
        "renders_as": renders_as,
    })
}
