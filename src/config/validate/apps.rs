//! `apps:` entries: identity, exactly one secret source, the secret itself, the API address.

use super::*;
use crate::config::{DEFAULT_MAX_IN_FLIGHT, MAX_MAX_IN_FLIGHT};

pub(super) fn validate_apps(
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

pub(super) fn validate_app(
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
    let max_in_flight = max_in_flight(&entry, report);
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
        max_in_flight: max_in_flight?,
    })
}

/// `max_in_flight`: 1..=[`MAX_MAX_IN_FLIGHT`], default [`DEFAULT_MAX_IN_FLIGHT`].
fn max_in_flight(entry: &Entry<'_>, report: &mut Report) -> Option<usize> {
    match entry.get::<i64>("max_in_flight", report) {
        Field::Missing => Some(DEFAULT_MAX_IN_FLIGHT),
        Field::Value(n) if (1..=MAX_MAX_IN_FLIGHT as i64).contains(&n) => Some(n as usize),
        Field::Value(n) => {
            report.error(
                entry.subject,
                "max_in_flight",
                format!("is {n}; it bounds the app's requests in flight at once and must be 1 to {MAX_MAX_IN_FLIGHT} (default {DEFAULT_MAX_IN_FLIGHT}; WeCom refuses too many concurrent calls with 45033)"),
            );
            None
        }
        Field::Invalid => None,
    }
}

/// Exactly one of the four secret keys.
pub(super) fn secret_source(
    entry: &Entry<'_>,
    base: &Path,
    report: &mut Report,
) -> Option<SecretSource> {
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

pub(super) fn resolve_secret(
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
