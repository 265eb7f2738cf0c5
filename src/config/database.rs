//! A `postgres://` URL in `database:` or `--db`: its `sslmode`, which tokio-postgres reads only
//! in part, and the checks that keep a password out of it (and out of every message quoting it).
//!
//! The URL grammar is libpq's as tokio-postgres reads it: `postgres://` or `postgresql://`, then
//! `user[:password]@` up to the first `@`, the hosts, `/dbname`, and `?key=value&...` whose keys
//! and values are percent-decoded.

use std::fmt;

use crate::shown::{percent_decoded, shown};
use crate::store::{Location, PgTarget};

use super::SecretSource;

/// The `sslmode` values accepted, in libpq's order (weakest first).
pub const SSL_MODES: &str = "disable, prefer, require, verify-ca, verify-full";

/// What a URL's `sslmode` asks of the connection, with libpq's meanings. tokio-postgres knows
/// only the first three, which is why [`split_sslmode`] takes it out of the URL before the URL
/// is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// `disable`: plain TCP only, never TLS.
    Disable,
    /// `prefer` (libpq's default): TLS if the server offers it, else plain; the certificate is
    /// not verified.
    #[default]
    Prefer,
    /// `require`: TLS or no connection; the certificate is not verified.
    Require,
    /// `verify-ca`: TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` spelling, as in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Reads a `sslmode` value.
    pub fn parse(text: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == text)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Takes every `sslmode=` parameter out of `url`: returns the URL without them (and without a
/// `?` left empty), otherwise as written, and the mode (the last one written, as libpq; `prefer`
/// when there is none). The error says what is accepted; it quotes only the `sslmode` value.
///
/// `postgres://wecom@db:5432/wecom?sslmode=verify-full&connect_timeout=5` gives
/// `(postgres://wecom@db:5432/wecom?connect_timeout=5, VerifyFull)`.
pub fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let Some(start) = query_start(url) else {
        return Ok((url.to_string(), SslMode::default()));
    };
    let mut mode = SslMode::default();
    let mut kept = Vec::new();
    for param in params(&url[start + 1..]) {
        if param.key() != b"sslmode" {
            kept.push(param.raw);
            continue;
        }
        let value = String::from_utf8_lossy(&percent_decoded(param.value.as_bytes())).into_owned();
        mode = SslMode::parse(&value).ok_or_else(|| {
            format!(
                "has sslmode={}; sslmode must be one of {SSL_MODES} (libpq's meanings; prefer when left out)",
                shown(&value)
            )
        })?;
    }
    let mut rest = url[..start].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, mode))
}

/// `url` with its password, if any, written `***`: the one in `user:password@` and the value
/// of a `password=` parameter. For every message and log line that quotes a URL. It masks more
/// than tokio-postgres would read as the password (up to the last `@`; a parameter's value to
/// the end): an unencoded `@` or `&` in a password must not leave a piece of it shown.
pub fn mask_password(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let mut masked = scheme.to_string();
    // As tokio-postgres reads it: the credentials run up to the first '@', the password from
    // their first ':'.
    let rest = match (rest.find('@'), rest.rfind('@')) {
        (Some(first), Some(last)) if rest[..first].contains(':') => {
            let user = rest[..first].split(':').next().unwrap_or_default();
            masked.push_str(user);
            masked.push_str(":***");
            &rest[last..]
        }
        _ => rest,
    };
    let mut tail = rest;
    while let Some(at) = tail.find(['?', '&']) {
        masked.push_str(&tail[..=at]);
        tail = &tail[at + 1..];
        if let Some(param) = params(tail).next()
            && param.key() == b"password"
        {
            masked.push_str(param.raw.split('=').next().unwrap_or_default());
            masked.push_str("=***");
            return masked;
        }
    }
    masked.push_str(tail);
    masked
}

/// The config key a database password is read from, for messages.
pub fn password_field(source: &SecretSource) -> &'static str {
    match source {
        SecretSource::Env(_) => "database_password_env",
        SecretSource::File(_) => "database_password_file",
        SecretSource::Credential(_) => "database_password_credential",
        // No key writes a database password inline: it is refused in the URL.
        SecretSource::Inline(_) => "database",
    }
}

/// Whether `url` carries a password, in its credentials or as a `password=` parameter.
pub fn has_password(url: &str) -> bool {
    mask_password(url) != url
}

/// The message for a URL that holds a password: where it would be read, and where it goes.
fn password_problem(url: &str) -> String {
    format!(
        "\"{}\" holds a password; a password in the config file is readable by whoever reads the file, and in --db by every user through ps: remove it from the URL and give it with database_password_env, database_password_file or database_password_credential",
        shown(&mask_password(url))
    )
}

/// Checks a `postgres://` URL (`database:` or `--db`) and pairs it with its password source.
/// The URL is kept as written (the store reads it again, through [`split_sslmode`]). Every
/// error is about the field `database`, says how to fix it, and quotes the URL masked.
pub fn postgres_target(url: &str, password: Option<SecretSource>) -> Result<PgTarget, String> {
    if has_password(url) {
        return Err(password_problem(url));
    }
    let quoted = format!("\"{}\"", shown(url));
    let (without_sslmode, _) = split_sslmode(url).map_err(|m| format!("{quoted} {m}"))?;
    let parsed = without_sslmode
        .parse::<tokio_postgres::Config>()
        .map_err(|e| {
            format!("{quoted} is not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full")
        })?;
    // Belt and braces: whatever the reader above took for a password is refused too.
    if parsed.get_password().is_some() {
        return Err(password_problem(url));
    }
    if parsed.get_hosts().is_empty() {
        return Err(format!(
            "{quoted} names no host; write postgres://USER@HOST:PORT/DATABASE (a Unix socket: ?host=/run/postgresql)"
        ));
    }
    Ok(PgTarget {
        url: url.to_string(),
        password,
    })
}

/// A `database:` or `--db` text: a `postgres://` URL, or else a SQLite file path (`Ok(None)`:
/// the caller makes the path). A text that looks like another kind of URL is refused: it is
/// surely not meant as a file name.
pub fn url_location(
    text: &str,
    password: Option<SecretSource>,
) -> Result<Option<Location>, String> {
    if Location::is_url(text) {
        return postgres_target(text, password).map(|t| Some(Location::Postgres(t)));
    }
    if looks_like_a_url(text) {
        return Err(format!(
            "\"{}\" is a URL, but not a postgres:// or postgresql:// one; write a SQLite file path or a postgres://USER@HOST/DATABASE URL",
            shown(&mask_password(text))
        ));
    }
    Ok(None)
}

/// `scheme://...`, a scheme being a letter then letters, digits, `+`, `-` or `.`.
fn looks_like_a_url(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Where the query (`?...`) of a postgres URL starts, as tokio-postgres reads it: at the first
/// `?` after the credentials.
fn query_start(url: &str) -> Option<usize> {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let after_credentials = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    url[after_credentials..]
        .find('?')
        .map(|at| after_credentials + at)
}

/// One `key=value` of a query, as written.
struct Param<'a> {
    /// `key=value` (the key may be percent-encoded).
    raw: &'a str,
    value: &'a str,
}

impl Param<'_> {
    /// The key, percent-decoded (tokio-postgres decodes keys: `pass%77ord` is `password`).
    fn key(&self) -> Vec<u8> {
        let key = &self.raw[..self.raw.len() - self.value.len() - 1];
        percent_decoded(key.as_bytes())
    }
}

/// The parameters of `query` as tokio-postgres splits them: a key runs to the next `=`, its
/// value to the next `&`. A trailing piece without `=` (which tokio-postgres refuses) ends it.
fn params(query: &str) -> impl Iterator<Item = Param<'_>> {
    let mut rest = query;
    std::iter::from_fn(move || {
        let equals = rest.find('=')?;
        let end = rest[equals..]
            .find('&')
            .map_or(rest.len(), |at| equals + at);
        let raw = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(Param {
            raw,
            value: &raw[equals + 1..],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_and_the_rest_of_the_url_kept_as_written() {
        let cases = [
            ("postgres://w@db/n", "postgres://w@db/n", SslMode::Prefer),
            (
                "postgres://w@db/n?sslmode=verify-full",
                "postgres://w@db/n",
                SslMode::VerifyFull,
            ),
            (
                "postgresql://w@db:5432/n?connect_timeout=5&sslmode=verify-ca&application_name=a%20b",
                "postgresql://w@db:5432/n?connect_timeout=5&application_name=a%20b",
                SslMode::VerifyCa,
            ),
            (
                "postgres://w@db/n?sslmode=disable&sslmode=require",
                "postgres://w@db/n",
                SslMode::Require,
            ),
            (
                "postgres://w@db/n?ssl%6Dode=disable",
                "postgres://w@db/n",
                SslMode::Disable,
            ),
            (
                "postgres://w@db/n?sslmode=prefer",
                "postgres://w@db/n",
                SslMode::Prefer,
            ),
            // A '?' in the credentials is not the query.
            (
                "postgres://w?x@db/n?sslmode=require",
                "postgres://w?x@db/n",
                SslMode::Require,
            ),
        ];
        for (url, rest, mode) in cases {
            assert_eq!(split_sslmode(url), Ok((rest.to_string(), mode)), "{url}");
        }
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let parsed = SslMode::parse(mode).expect(mode);
            assert_eq!(parsed.as_str(), mode);
            assert_eq!(parsed.to_string(), mode);
        }
    }

    #[test]
    fn an_unknown_sslmode_is_refused_listing_the_accepted_ones() {
        for bad in ["allow", "VERIFY-FULL", "", "verify_full"] {
            let url = format!("postgres://w@db/n?sslmode={bad}");
            let error = split_sslmode(&url).unwrap_err();
            assert!(error.contains(SSL_MODES), "{error}");
            assert!(error.contains(&format!("sslmode={bad};")), "{error}");
        }
    }

    #[test]
    fn passwords_are_masked_wherever_they_are_written() {
        let cases = [
            ("postgres://u:s3cr3t@h/db", "postgres://u:***@h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=s3cr3t",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u@h/db?sslmode=require&password=s3cr3t&x=1",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            // Unencoded '@' and '&' in a password: no piece of it is left.
            ("postgres://u:s3@cr3t@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=s3&cr3t",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u@h/db?pass%77ord=s3cr3t",
                "postgres://u@h/db?pass%77ord=***",
            ),
            // An '@' in a query password would make tokio-postgres read credentials.
            (
                "postgres://h/db?password=s3@cr3t",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://u:s3cr3t@h/db?password=s3cr3t",
                "postgres://u:***@h/db?password=***",
            ),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_password(url), masked, "{url}");
            assert!(has_password(url), "{url}");
        }
        for clean in [
            "postgres://u@h/db",
            "postgres://h:5432/db?sslmode=verify-full",
            "postgres://u@h/db?application_name=password",
        ] {
            assert_eq!(mask_password(clean), clean);
            assert!(!has_password(clean), "{clean}");
        }
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        for url in [
            "postgres://wecom:hunter2xyz@db.internal/wecom",
            "postgres://wecom@db.internal/wecom?password=hunter2xyz",
            "postgres://wecom@db.internal/wecom?sslmode=bogus&password=hunter2xyz",
            "postgresql://db.internal/wecom?pass%77ord=hunter2xyz",
        ] {
            let error = postgres_target(url, None).unwrap_err();
            assert!(!error.contains("hunter2xyz"), "{error}");
            assert!(error.contains("holds a password"), "{error}");
            assert!(error.contains("database_password_env"), "{error}");
        }
    }

    #[test]
    fn a_url_needs_a_host_a_known_sslmode_and_tokio_postgres_syntax() {
        let ok = postgres_target("postgres://wecom@db:5432/w?sslmode=verify-full", None).unwrap();
        assert_eq!(ok.url, "postgres://wecom@db:5432/w?sslmode=verify-full");
        assert!(
            postgres_target("postgres://db/w", None).is_ok(),
            "user may be left out"
        );
        assert!(postgres_target("postgres:///w?host=/run/postgresql", None).is_ok());
        let no_host = postgres_target("postgres:///w", None).unwrap_err();
        assert!(no_host.contains("names no host"), "{no_host}");
        let mode = postgres_target("postgres://db/w?sslmode=allow", None).unwrap_err();
        assert!(mode.contains(SSL_MODES), "{mode}");
        let port = postgres_target("postgres://db:port/w", None).unwrap_err();
        assert!(port.contains("is not a PostgreSQL URL"), "{port}");
        let unknown = postgres_target("postgres://db/w?colour=red", None).unwrap_err();
        assert!(unknown.contains("colour"), "{unknown}");
    }

    #[test]
    fn other_urls_are_refused_and_paths_left_to_the_caller() {
        assert_eq!(url_location("state/wecom.db", None), Ok(None));
        assert_eq!(url_location("/var/lib/a:b/x.db", None), Ok(None));
        let mysql = url_location("mysql://u:s3cr3t@h/db", None).unwrap_err();
        assert!(mysql.contains("not a postgres://"), "{mysql}");
        assert!(!mysql.contains("s3cr3t"), "{mysql}");
        assert!(matches!(
            url_location("postgres://h/db", None),
            Ok(Some(Location::Postgres(_)))
        ));
    }
}
