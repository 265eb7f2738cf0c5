//! Which HTTP client carries an app's calls: one `reqwest::Client` (one pool of kept-alive
//! connections) per distinct route — the environment's proxies, direct, each `proxy:` URL —
//! made on first use and kept, so apps on the same route share their connections.
//!
//! The environment is read here, once, the way curl reads it, rather than left to reqwest: the
//! client must know the proxy passwords to mask them, and curl's precedence (lowercase first,
//! `ALL_PROXY` as the fallback) is what operators test their settings with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Egress, ProxyUrl};

/// The proxies the environment names, as curl reads them.
#[derive(Debug, Clone, Default)]
pub struct EnvProxies {
    /// `http_proxy`, `HTTP_PROXY`, else `all_proxy`/`ALL_PROXY`: for an `http://` api_base.
    pub http: Option<ProxyUrl>,
    /// `https_proxy`, `HTTPS_PROXY`, else `all_proxy`/`ALL_PROXY`: for an `https://` api_base.
    pub https: Option<ProxyUrl>,
    /// `no_proxy`, `NO_PROXY`: hosts reached directly (curl's rules: `*` for every host, a
    /// domain and its subdomains, an IP address or a CIDR range; no implicit exception for
    /// localhost).
    pub no_proxy: String,
}

impl EnvProxies {
    /// Reads the process environment. A variable that is set but is not a proxy URL is an
    /// error: going direct instead would reach WeCom from an untrusted IP (60020).
    pub fn from_env() -> anyhow::Result<EnvProxies> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<EnvProxies> {
        let first = |names: &[&'static str]| {
            names.iter().find_map(|name| {
                lookup(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (*name, v))
            })
        };
        let parse = |found: Option<(&'static str, String)>| -> anyhow::Result<Option<ProxyUrl>> {
            match found {
                None => Ok(None),
                Some((name, value)) => ProxyUrl::parse(&value)
                    .map(Some)
                    .map_err(|message| anyhow::anyhow!("{name}: {message}")),
            }
        };
        let all = parse(first(&["all_proxy", "ALL_PROXY"]))?;
        Ok(EnvProxies {
            http: parse(first(&["http_proxy", "HTTP_PROXY"]))?.or_else(|| all.clone()),
            https: parse(first(&["https_proxy", "HTTPS_PROXY"]))?.or(all),
            no_proxy: first(&["no_proxy", "NO_PROXY"])
                .map(|(_, v)| v)
                .unwrap_or_default(),
        })
    }
}

/// A client and the secrets its proxies carry, which every error it produces is cleaned of.
#[derive(Debug, Clone)]
pub struct Route {
    pub http: reqwest::Client,
    pub hidden: Arc<[String]>,
}

/// The routes made so far, by what they go through.
#[derive(Debug)]
pub struct Routes {
    make: fn() -> reqwest::ClientBuilder,
    env: EnvProxies,
    /// Keyed by `None` (the environment's), `Some("")` (direct) or `Some(proxy URL)`.
    clients: Mutex<HashMap<Option<String>, Route>>,
}

impl Routes {
    /// `make` gives a builder with every setting but the proxy.
    pub fn new(make: fn() -> reqwest::ClientBuilder, env: EnvProxies) -> Routes {
        Routes {
            make,
            env,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for calls that go this way (an app's `egress`). The error names the proxy
    /// with its password masked.
    pub fn route(&self, egress: &Egress) -> Result<Route, String> {
        let key = match egress {
            Egress::Environment => None,
            Egress::Direct => Some(String::new()),
            Egress::Proxy(url) => Some(url.expose().to_string()),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = clients.get(&key) {
            return Ok(route.clone());
        }
        let route = self.build(egress)?;
        clients.insert(key, route.clone());
        Ok(route)
    }

    fn build(&self, egress: &Egress) -> Result<Route, String> {
        let mut builder = (self.make)().no_proxy();
        let mut hidden = Vec::new();
        let proxy = |url: &ProxyUrl, make: fn(&str) -> reqwest::Result<reqwest::Proxy>| {
            make(url.expose()).map_err(|_| format!("{url} cannot be used as a proxy"))
        };
        match egress {
            Egress::Direct => tracing::debug!("a client that calls WeCom directly"),
            Egress::Proxy(url) => {
                tracing::debug!(proxy = %url, "a client that calls WeCom through the app's proxy");
                builder = builder.proxy(proxy(url, |u| reqwest::Proxy::all(u))?);
                hidden.extend(url.hidden());
            }
            // hyper-util applies a `*` entry to host names only; curl makes it every host,
            // IP addresses (a loopback api_base, an intranet gateway) included.
            Egress::Environment if self.env.no_proxy.split(',').any(|e| e.trim() == "*") => {
                tracing::debug!("NO_PROXY=*: a client that calls WeCom directly");
            }
            Egress::Environment => {
                let env = &self.env;
                let no_proxy = reqwest::NoProxy::from_string(&env.no_proxy);
                tracing::debug!(
                    http = %shown(&env.http),
                    https = %shown(&env.https),
                    no_proxy = %env.no_proxy,
                    "a client that calls WeCom through the environment's proxies"
                );
                if let Some(url) = &env.http {
                    builder = builder
                        .proxy(proxy(url, |u| reqwest::Proxy::http(u))?.no_proxy(no_proxy.clone()));
                    hidden.extend(url.hidden());
                }
                if let Some(url) = &env.https {
                    builder =
                        builder.proxy(proxy(url, |u| reqwest::Proxy::https(u))?.no_proxy(no_proxy));
                    hidden.extend(url.hidden());
                }
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("the HTTP client could not be made: {}", e.without_url()))?;
        Ok(Route {
            http,
            hidden: hidden.into(),
        })
    }
}

fn shown(url: &Option<ProxyUrl>) -> String {
    url.as_ref()
        .map_or_else(|| "(none)".to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> EnvProxies {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvProxies::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn the_environment_is_read_as_curl_reads_it() {
        let both = env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
            ("ALL_PROXY", "http://all:1"),
            ("NO_PROXY", "upper.example"),
            ("no_proxy", "lower.example"),
        ]);
        assert_eq!(both.https.unwrap().expose(), "http://lower:1/");
        assert_eq!(both.http.unwrap().expose(), "http://all:1/");
        assert_eq!(both.no_proxy, "lower.example");
        let empty = env(&[("https_proxy", ""), ("HTTPS_PROXY", "proxy:3128")]);
        assert_eq!(empty.https.unwrap().expose(), "http://proxy:3128/");
        assert!(empty.http.is_none());
    }

    #[test]
    fn a_bad_proxy_variable_is_an_error_that_hides_the_password() {
        let vars = [("HTTPS_PROXY", "socks5://u:hunter2-9x@proxy:1080")];
        let error = EnvProxies::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("HTTPS_PROXY: ") && !error.contains("hunter2"),
            "{error}"
        );
    }
}
