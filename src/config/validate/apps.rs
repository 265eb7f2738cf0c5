//! `apps:` entries: identity, exactly one secret source, the secret itself, the API address and
//! the proxy.

use super::*;
use crate::config::{DEFAULT_MAX_IN_FLIGHT, Egress, MAX_MAX_IN_FLIGHT, ProxyUrl};

/// `non_decimal` maps the apps whose `agent_id` is written as a hexadecimal, octal, binary or
/// signed number to its spelling (the YAML tree only has the value).
pub(super) fn validate_apps(
    raw: Vec<(Option<String>, Value)>,
    base: &Path,
    secrets: Secrets,
    non_decimal: &BTreeMap<String, String>,
    report: &mut Report,
) -> BTreeMap<String, Arc<App>> {
    let mut apps = BTreeMap::new();
    let mut identities: HashMap<(String, i64), String> = HashMap::new();
    for (name, value) in raw {
        let Some(name) = name else {
            report.error(&Subject::File, "apps", "app names must be strings");
            continue;
        };
        let Some(app) = validate_app(&name, value, base, secrets, non_decimal, report) else {
            continue;
        };
        if let Some(other) = identities.insert((app.corp_id.clone(), app.agent_id), name.clone()) {
            report.error(
                &Subject::App(name.into()),
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
    non_decimal: &BTreeMap<String, String>,
    report: &mut Report,
) -> Option<App> {
    let subject = Subject::App(name.into());
    let name_problem = name_problem(name);
    let name_ok = name_problem.is_none();
    if let Some(problem) = name_problem {
        report.error(&subject, "name", problem);
    }
    let entry = Entry::open(value, APP_KEYS, &subject, "", report)?;
    let corp_id = match entry.get::<String>("corp_id", report) {
        Field::Value(id) if let Some(problem) = hidden_char_problem(&id) => {
            report.error(&subject, "corp_id", problem);
            None
        }
        Field::Value(id) if !id.trim().is_empty() => Some(id),
        Field::Invalid => None,
        _ => {
            entry.missing("corp_id", report, "is missing; copy the corp ID (企业ID) from 我的企业 → 企业信息, e.g. ww0123456789abcdef");
            None
        }
    };
    let agent_id = match entry.get::<i64>("agent_id", report) {
        Field::Value(_) if let Some(written) = non_decimal.get(name) => {
            report.error(
                &subject,
                "agent_id",
                format!("is written {written}; write the AgentId in plain decimal digits, such as 1000002 (YAML reads 0x, 0o, 0b and + forms as other numbers)"),
            );
            None
        }
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
        Field::Value(url) => api_base(url.trim_end_matches('/'), &subject, report),
        Field::Missing => Some(DEFAULT_API_BASE.to_string()),
        Field::Invalid => None,
    };
    let max_in_flight = max_in_flight(&entry, report);
    let egress = egress(&entry, report);
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
        egress: egress?,
    })
}

/// `api_base`: an http(s) URL with a host and nothing that would change where the secret goes:
/// no user name or password (reqwest would send them as Basic auth to whoever answers), no
/// query or fragment (the API path is appended to the URL: after a `?` or `#` it is no longer
/// a path, and the secret goes to the bare address).
pub(super) fn api_base(url: &str, subject: &Subject, report: &mut Report) -> Option<String> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    let Some(mut parsed) = parsed else {
        // An unparsable URL is shown only when it cannot be hiding a password.
        // Nor a query or fragment, which may hold a key (a robot's webhook address pasted
        // without its scheme): only the part before them is shown.
        let shown = if url.contains('@') {
            "the URL (not shown: it contains '@' and may hold a password)".to_string()
        } else {
            let before = url.split(['?', '#']).next().unwrap_or_default();
            let cut = if before.len() < url.len() {
                "?… (the rest not shown)"
            } else {
                ""
            };
            format!("\"{}{cut}\"", super::super::escaped(before))
        };
        report.error(
            subject,
            "api_base",
            format!("{shown} is not an http(s) URL; leave it out to use {DEFAULT_API_BASE}"),
        );
        return None;
    };
    let mut wrong = Vec::new();
    if !parsed.username().is_empty() || parsed.password().is_some() {
        wrong.push("a user name or password (they would be sent as Basic auth); a proxy goes in the proxy: key or HTTPS_PROXY");
    }
    if parsed.query().is_some() {
        wrong.push(
            "a query (?...): the API path would be dropped and the secret sent to the wrong URL",
        );
    }
    if parsed.fragment().is_some() {
        wrong.push(
            "a fragment (#...): the API path would be dropped and the secret sent to the wrong URL",
        );
    }
    if wrong.is_empty() {
        return Some(url.to_string());
    }
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    parsed.set_query(None);
    parsed.set_fragment(None);
    let bare = parsed.as_str().trim_end_matches('/').to_string();
    report.error(
        subject,
        "api_base",
        format!(
            "has {}; write only scheme, host, port and path, e.g. {bare}",
            wrong.join(", and ")
        ),
    );
    None
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

/// `proxy:`: `none`, or an http(s) proxy URL. A password in it is allowed (some proxies need
/// one) but warned about, as an inline secret is; no message shows it.
pub(super) fn egress(entry: &Entry<'_>, report: &mut Report) -> Option<Egress> {
    match entry.get::<String>("proxy", report) {
        Field::Missing => Some(Egress::Environment),
        Field::Invalid => None,
        Field::Value(text) if text.trim() == "none" => Some(Egress::Direct),
        Field::Value(text) => match ProxyUrl::parse(&text) {
            Ok(url) => {
                if url.has_password() {
                    report.warn(entry.subject, "proxy", format!("{url} has its password written in the config file, where anyone who can read the file can use the proxy; prefer HTTPS_PROXY in a systemd drop-in (README, \"Sending through a proxy\")"));
                }
                Some(Egress::Proxy(url))
            }
            Err(message) => {
                report.error(entry.subject, "proxy", message);
                None
            }
        },
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
    if secrets == Secrets::Unneeded {
        return None;
    }
    match source.resolve() {
        Ok(secret) => Some(secret),
        Err(message) => {
            report.error(
                subject,
                source.field(),
                format!("{message} (or validate with --dry-run, which needs no secret)"),
            );
            None
        }
    }
}
