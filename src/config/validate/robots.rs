//! `robots:` entries: group robots (群机器人), each with exactly one source of its webhook key.

use super::*;
use crate::config::Robot;

pub(super) fn validate_robots(
    raw: Vec<(Option<String>, Value)>,
    base: &Path,
    secrets: Secrets,
    report: &mut Report,
) -> BTreeMap<String, Arc<Robot>> {
    let mut robots = BTreeMap::new();
    for (name, value) in raw {
        let Some(name) = name else {
            report.error(&Subject::File, "robots", "robot names must be strings");
            continue;
        };
        if let Some(robot) = validate_robot(&name, value, base, secrets, report) {
            robots.insert(robot.name.clone(), Arc::new(robot));
        }
    }
    robots
}

fn validate_robot(
    name: &str,
    value: Value,
    base: &Path,
    secrets: Secrets,
    report: &mut Report,
) -> Option<Robot> {
    let subject = Subject::Robot(name.into());
    let name_problem = name_problem(name);
    let name_ok = name_problem.is_none();
    if let Some(problem) = name_problem {
        report.error(&subject, "name", problem);
    }
    let entry = Entry::open(value, ROBOT_KEYS, &subject, "", report)?;
    let source = key_source(&entry, base, report)?;
    let key = resolve_key(&source, &subject, secrets, report);
    let api_base = match entry.get::<String>("api_base", report) {
        Field::Value(url) => apps::api_base(url.trim_end_matches('/'), &subject, report),
        Field::Missing => Some(DEFAULT_API_BASE.to_string()),
        Field::Invalid => None,
    };
    let egress = apps::egress(&entry, report);
    if !name_ok {
        return None;
    }
    Some(Robot {
        name: name.to_string(),
        key_source: source,
        key,
        api_base: api_base?,
        egress: egress?,
    })
}

/// A robot key's config field for `source` (the app's `secret_*` keys, spelled `key_*`).
pub(crate) fn key_field(source: &SecretSource) -> &'static str {
    match source {
        SecretSource::Env(_) => "key_env",
        SecretSource::File(_) => "key_file",
        SecretSource::Credential(_) => "key_credential",
        SecretSource::Inline(_) => "key",
    }
}

/// Exactly one of the four key sources.
fn key_source(entry: &Entry<'_>, base: &Path, report: &mut Report) -> Option<SecretSource> {
    let mut sources = Vec::new();
    let mut invalid = false;
    let mut take = |field: Field<String>, make: &dyn Fn(String) -> SecretSource| match field {
        Field::Value(v) => sources.push(make(v)),
        Field::Invalid => invalid = true,
        Field::Missing => {}
    };
    take(entry.get("key_env", report), &SecretSource::Env);
    take(entry.get("key_file", report), &|p| {
        SecretSource::File(base.join(p))
    });
    take(
        entry.get("key_credential", report),
        &SecretSource::Credential,
    );
    take(entry.get("key", report), &|s| {
        SecretSource::Inline(Secret::new(s))
    });
    match sources.len() {
        _ if invalid => None,
        1 => sources.pop(),
        0 => {
            report.error(entry.subject, "key_env", "no webhook key is configured; set exactly one of key_env, key_file, key_credential or key (the key= part of the robot's webhook address)");
            None
        }
        _ => {
            let keys: Vec<_> = sources.iter().map(key_field).collect();
            report.error(
                entry.subject,
                keys[1],
                format!(
                    "{} are all set; keep exactly one key source",
                    keys.join(", ")
                ),
            );
            None
        }
    }
}

/// Reads the key (unless secrets are not needed). A key is a secret: no message shows it.
fn resolve_key(
    source: &SecretSource,
    subject: &Subject,
    secrets: Secrets,
    report: &mut Report,
) -> Option<Secret> {
    let field = key_field(source);
    if let SecretSource::Inline(_) = source {
        report.warn(subject, field, "the webhook key is written in the config file, where anyone who can read the file can post into the group; prefer key_file or key_credential");
    }
    if secrets == Secrets::Unneeded {
        return None;
    }
    let in_key_words = |message: String| {
        message
            .replace("secret_file", "key_file")
            .replace("secret_credential", "key_credential")
            .replace("the secret itself", "the key itself")
            .replace("holds only the secret", "holds only the key")
            .replace(
                "which no secret is (a WeCom secret is 43 characters)",
                "which no webhook key is",
            )
    };
    match source.resolve() {
        Ok(key) if !looks_like_a_key(key.expose()) => {
            report.error(subject, field, "does not hold a bare webhook key: it has characters a key never has (/, ?, =, spaces). Put only the part after key= of the webhook address");
            None
        }
        Ok(key) => Some(key),
        Err(message) if message.contains("gives an empty secret") => {
            report.error(subject, field, format!("the {field} gives an empty key; put the robot's webhook key (the part after key= of its webhook address) there"));
            None
        }
        Err(message) => {
            report.error(
                subject,
                field,
                format!(
                    "{} (or validate with --dry-run, which needs no key)",
                    in_key_words(message)
                ),
            );
            None
        }
    }
}

/// WeCom's webhook keys are UUIDs; anything URL-like is the whole address pasted by mistake.
fn looks_like_a_key(key: &str) -> bool {
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}
