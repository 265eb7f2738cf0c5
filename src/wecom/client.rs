//! HTTP calls to WeCom: `gettoken`, `message/send`, `message/recall`.
//!
//! The access token travels in the query string, so every error that leaves this module is
//! stripped of its URL (`reqwest::Error::without_url`) and answers are read with a size cap.
//!
//! One `reqwest::Client` (one pool of kept-alive connections) per route serves every app on it
//! ([`Routes`]: the environment's proxies, direct, or an app's `proxy:`), and each call holds a
//! permit of its app's bound on requests in flight ([`InFlight`]) for the HTTP exchange only, so
//! a burst reuses a handful of connections instead of opening one per message. A proxy's
//! password is cut out of every error, like the token and the secret.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::egress::{EnvProxies, Route, Routes};
use super::in_flight::{Caller, InFlight};
use crate::config::{App, Robot, Secret};
pub use crate::store::tokens::{AccessToken, FreshToken};

/// How long connecting to WeCom may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (connect, send, answer) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an idle kept-alive connection waits for the next call before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// WeCom's answers are a few hundred bytes; anything beyond this is not WeCom talking.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A call that did not produce a readable WeCom answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct Transport {
    pub detail: String,
    /// False only when the request certainly never reached WeCom (it could not connect), so
    /// a retry cannot deliver twice whatever the duplicate check does.
    pub maybe_delivered: bool,
    /// True when a retry cannot help: an HTTP status that says the request is wrong or went
    /// to the wrong place (a redirect, 404, 403...), as opposed to a busy or failing server.
    pub permanent: bool,
}

/// A readable WeCom answer (errcode may be non-zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Reply {
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    #[serde(default)]
    pub msgid: Option<String>,
    #[serde(default)]
    pub invaliduser: Option<String>,
    #[serde(default)]
    pub invalidparty: Option<String>,
    #[serde(default)]
    pub invalidtag: Option<String>,
    #[serde(default)]
    pub unlicenseduser: Option<String>,
}

// No `Debug`: it holds a token in the clear.
#[derive(Deserialize)]
struct TokenAnswer {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<i64>,
}

/// `gettoken` answered with an errcode, or could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("gettoken: {}", crate::wecom::error::describe(*.errcode, .errmsg))]
    WeCom { errcode: i64, errmsg: String },
    #[error("gettoken: {0}")]
    Transport(Transport),
    #[error("the app's secret is not available ({0})")]
    NoSecret(String),
}

/// The HTTP client, shared by every app (connection pooling).
#[derive(Debug, Clone)]
pub struct Client {
    routes: Arc<Routes>,
    in_flight: Arc<InFlight>,
}

/// Every setting of the HTTP clients but the proxy.
/// Makes rustls with ring the process's TLS crypto provider, once; every HTTP client of the
/// process (and of a test) is built after it. Idempotent.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is all this asks for.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("wecom-notify/", env!("CARGO_PKG_VERSION")))
        // A redirect would carry the secret or the token, in the query, to another host.
        .redirect(reqwest::redirect::Policy::none())
        // Idle connections stay for the next burst; the bound on calls in flight is what
        // keeps their number small, so the pool needs no cap of its own.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
}

impl Client {
    /// A client whose apps without `proxy:` use the proxies of the process environment
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read now, as curl reads them).
    pub fn new() -> anyhow::Result<Client> {
        let routes = Routes::new(builder, EnvProxies::from_env()?);
        // Made now, so that a client that cannot be made fails the command at once.
        routes
            .route(&crate::config::Egress::Environment)
            .map_err(anyhow::Error::msg)?;
        Ok(Client {
            routes: Arc::new(routes),
            in_flight: Arc::default(),
        })
    }

    fn route(&self, egress: &crate::config::Egress) -> Result<Route, Transport> {
        self.routes.route(egress).map_err(|detail| Transport {
            detail,
            maybe_delivered: false,
            permanent: true,
        })
    }

    /// `GET /cgi-bin/gettoken`.
    pub async fn get_token(&self, app: &App) -> Result<FreshToken, TokenError> {
        let secret: &Secret = app
            .secret
            .as_ref()
            .ok_or_else(|| TokenError::NoSecret(app.secret_source.field().to_string()))?;
        let route = self.route(&app.egress).map_err(TokenError::Transport)?;
        let request = route
            .http
            .get(format!("{}/cgi-bin/gettoken", app.api_base))
            .query(&[
                ("corpid", app.corp_id.as_str()),
                ("corpsecret", secret.expose()),
            ]);
        let answer: TokenAnswer = self
            .call(Caller::App(app), &route, request, &[secret.expose()])
            .await
            .map_err(TokenError::Transport)?;
        match (answer.errcode, answer.access_token) {
            (0, Some(token)) if !token.is_empty() => Ok(FreshToken {
                token: AccessToken::new(token),
                // WeCom says 7200; anything outside a minute to a day is not to be trusted.
                expires_in: answer.expires_in.unwrap_or(7200).clamp(60, 86_400),
            }),
            (0, _) => Err(TokenError::Transport(Transport {
                detail: "gettoken answered errcode 0 without an access_token".to_string(),
                maybe_delivered: false,
                permanent: false,
            })),
            (errcode, _) => Err(TokenError::WeCom {
                errcode,
                errmsg: answer.errmsg,
            }),
        }
    }

    /// `POST /cgi-bin/message/send` with `body` exactly as given.
    pub async fn send(
        &self,
        app: &App,
        token: &AccessToken,
        body: &str,
    ) -> Result<Reply, Transport> {
        self.post(app, "/cgi-bin/message/send", token, body.to_string())
            .await
    }

    /// `POST /cgi-bin/message/recall`.
    pub async fn recall(
        &self,
        app: &App,
        token: &AccessToken,
        msgid: &str,
    ) -> Result<Reply, Transport> {
        let body = serde_json::json!({ "msgid": msgid }).to_string();
        self.post(app, "/cgi-bin/message/recall", token, body).await
    }

    async fn post(
        &self,
        app: &App,
        path: &str,
        token: &AccessToken,
        body: String,
    ) -> Result<Reply, Transport> {
        let route = self.route(&app.egress)?;
        let request = route
            .http
            .post(format!("{}{path}", app.api_base))
            .query(&[("access_token", token.expose())])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.call(Caller::App(app), &route, request, &[token.expose()])
            .await
    }

    /// `POST {api_base}/cgi-bin/webhook/send?key=KEY` with `body` exactly as given. The key is
    /// masked like a token in every error.
    pub async fn robot_send(&self, robot: &Robot, body: &str) -> Result<Reply, Transport> {
        let Some(key) = robot.key.as_ref() else {
            return Err(Transport {
                detail: format!(
                    "the robot's webhook key ({}) is not available",
                    crate::config::robot_key_field(&robot.key_source)
                ),
                maybe_delivered: false,
                permanent: true,
            });
        };
        let route = self.route(&robot.egress)?;
        let request = route
            .http
            .post(format!("{}/cgi-bin/webhook/send", robot.api_base))
            .query(&[("key", key.expose())])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.call(Caller::Robot(robot), &route, request, &[key.expose()])
            .await
    }

    /// Makes the call under a permit of the caller's bound on requests in flight, held until the
    /// answer is read. `hidden` are the secret values the request carries: whatever a proxy or
    /// a login page echoes of them (raw or percent-encoded) is masked in the error, and so is
    /// the password of the route's proxy.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        caller: Caller<'_>,
        route: &Route,
        request: reqwest::RequestBuilder,
        hidden: &[&str],
    ) -> Result<T, Transport> {
        let hidden: Vec<&str> = hidden
            .iter()
            .copied()
            .chain(route.hidden.iter().map(String::as_str))
            .collect();
        let hidden = &hidden[..];
        let _permit = self.in_flight.permit(caller).await;
        let answer = read_json(request, hidden).await;
        // hyper's pool takes the connection back in a task of its own once the answer is read:
        // let that run before the permit lets the next call look for an idle connection, or
        // that call would open a new one.
        tokio::task::yield_now().await;
        answer.map_err(|mut failed| {
            failed.detail = mask(&failed.detail, hidden);
            failed
        })
    }
}

/// Sends the request and parses a capped JSON answer that must carry an `errcode`.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    hidden: &[&str],
) -> Result<T, Transport> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport(e, "request failed"))?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport(e, "reading the answer failed"))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Transport {
                detail: format!(
                    "HTTP {status}: the answer is larger than {MAX_ANSWER_BYTES} bytes, which is not a WeCom answer"
                ),
                maybe_delivered: true,
                permanent: false,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(http_status(status, response.headers(), &bytes, hidden));
    }
    serde_json::from_slice::<T>(&bytes).map_err(|e| Transport {
        detail: format!("unreadable answer ({e}): {}", excerpt(&bytes, hidden)),
        maybe_delivered: true,
        permanent: false,
    })
}

/// A non-2xx answer. WeCom answers every call with HTTP 200, errors included, so another status
/// comes from something in between. Only a busy or failing server (5xx, 429 Too Many Requests,
/// 408 Request Timeout) is worth retrying; a redirect or another 4xx answers the same way
/// every time, and is recorded as a failure at once.
fn http_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    hidden: &[&str],
) -> Transport {
    let transient = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
    let detail = if status.is_redirection() {
        // Never followed (it would carry the token to another host): say where it pointed,
        // without the token or the secret it may echo.
        // Its query is left out: a login page's `next=` may carry the whole request URL.
        let location = headers
            .get(reqwest::header::LOCATION)
            .map(|l| {
                let l = String::from_utf8_lossy(l.as_bytes());
                let bare = l.split(['?', '#']).next().unwrap_or_default();
                excerpt(bare.as_bytes(), hidden)
            })
            .unwrap_or_else(|| "(no Location)".to_string());
        format!(
            "HTTP {status} to {location}: WeCom does not redirect, so api_base points at something else (a proxy, a login page, http instead of https?); the redirect is not followed and the send is not retried. Check api_base"
        )
    } else if status == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        format!(
            "HTTP {status}: the proxy wants a user name and password, or refused the ones given; write them in the proxy URL (the app's proxy:, or HTTPS_PROXY/HTTP_PROXY); the send is not retried"
        )
    } else if transient {
        format!("HTTP {status}: {}", excerpt(body, hidden))
    } else {
        format!(
            "HTTP {status}: {}; a retry would get the same answer, so the send is not retried. Check api_base",
            excerpt(body, hidden)
        )
    };
    Transport {
        detail,
        maybe_delivered: true,
        permanent: !transient,
    }
}

fn transport(error: reqwest::Error, what: &str) -> Transport {
    let maybe_delivered = !error.is_connect();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        what
    };
    // The URL holds the access token (or the secret, for gettoken): never let it into the text.
    let error = error.without_url();
    let mut detail = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    // A proxy that answers CONNECT with 407 comes back as a connect error; hyper-util's tunnel
    // error is not public, so its text is what tells. Retrying cannot change its mind.
    let refused_by_proxy = detail.contains("proxy authorization required");
    if refused_by_proxy {
        detail.push_str(": the proxy wants a user name and password, or refused the ones given; write them in the proxy URL (the app's proxy:, or HTTPS_PROXY/HTTP_PROXY); the send is not retried");
    }
    Transport {
        detail,
        maybe_delivered,
        permanent: refused_by_proxy,
    }
}

/// The start of an unexpected answer, for the error message (an HTML error page, say).
fn excerpt(bytes: &[u8], hidden: &[&str]) -> String {
    // A proxy's error page may echo the request URL, encoded any way: decoded first, then the
    // token and the secret are cut out, and only then is it shortened (a cut secret would
    // still show its start).
    let text = redact(&mask(
        &String::from_utf8_lossy(&percent_decoded(bytes)),
        hidden,
    ));
    let text: String = text.chars().filter(|c| !c.is_control()).take(120).collect();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text
    }
}

/// `text` with every occurrence of the `hidden` values, as written or percent-encoded in any
/// way, replaced by `***`.
fn mask(text: &str, hidden: &[&str]) -> String {
    let mut out = String::from_utf8_lossy(&percent_decoded(text.as_bytes())).into_owned();
    for value in hidden.iter().filter(|v| !v.is_empty()) {
        out = out.replace(value, "***");
    }
    out
}

/// `bytes` decoded twice over (`%252F` too: a login page's `next=` encodes a whole URL).
fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    crate::shown::percent_decoded(&crate::shown::percent_decoded(bytes))
}

/// Replaces the values of `access_token=`, `corpsecret=` and a robot's `key=` (in a URL) and of
/// `"access_token":"` (in a gettoken answer that did not parse) with `***`.
fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for key in [
        "access_token=",
        "corpsecret=",
        "key=",
        "\"access_token\":\"",
        "\"access_token\": \"",
    ] {
        let mut from = 0;
        while let Some(found) = out[from..].find(key) {
            let start = from + found + key.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '<' || c.is_whitespace())
                .map_or(out.len(), |n| start + n);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_secrets_are_masked_raw_or_percent_encoded() {
        let secret = "S3cr/t+x";
        let text = "next=%2Fgettoken%3Fcorpsecret%3DS3cr%2Ft%2Bx and S3cr/t+x and %53%33cr%2ft%2bx and S3cr%252Ft+x";
        let masked = mask(text, &[secret]);
        assert!(!masked.contains("S3cr"), "{masked}");
        assert_eq!(masked.matches("***").count(), 4, "{masked}");
    }

    #[test]
    fn excerpts_never_carry_a_token_or_a_secret() {
        let page = b"<html>502 for /cgi-bin/message/send?access_token=TOKEN123&x=1 and gettoken?corpid=ww&corpsecret=SECRET456</html>";
        let text = excerpt(page, &[]);
        assert!(
            !text.contains("TOKEN123") && !text.contains("SECRET456"),
            "{text}"
        );
        assert!(
            text.contains("access_token=***&x=1") && text.contains("corpsecret=***<"),
            "{text}"
        );
        // A gettoken answer whose JSON is off (here `expires_in` as a string) is quoted in the
        // error, which may reach a history row: its token must not.
        for answer in [
            &br#"{"errcode":0,"errmsg":"ok","access_token":"TOKEN789","expires_in":"7200"}"#[..],
            &br#"{"errcode": 0, "access_token": "TOKEN789", "expires_in": "7200"}"#[..],
        ] {
            let text = excerpt(answer, &[]);
            assert!(!text.contains("TOKEN789"), "{text}");
            assert!(
                text.contains("access_token\":\"***\"") || text.contains("access_token\": \"***\""),
                "{text}"
            );
        }
    }
}
