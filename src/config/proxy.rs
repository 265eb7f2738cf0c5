//! How an app reaches WeCom: through the proxy of the environment, directly, or through its own
//! `proxy:`; and the `ProxyUrl` newtype, whose password never prints.

use std::fmt;

/// An app's `proxy:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Egress {
    /// No `proxy:` key: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` decide, as for curl.
    #[default]
    Environment,
    /// `proxy: none`: straight to `api_base`, whatever the environment says.
    Direct,
    /// `proxy: http://host:port`: every call of the app goes through it; the environment
    /// (`NO_PROXY` included) is not consulted.
    Proxy(ProxyUrl),
}

/// An http(s) proxy URL, perhaps with a user name and password. `Debug` and `Display` show the
/// password as `***`; only [`ProxyUrl::expose`] gives the whole URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(reqwest::Url);

impl ProxyUrl {
    /// Parses `text` as curl reads a proxy: a URL without a scheme is `http://`. The error never
    /// contains the password.
    pub fn parse(text: &str) -> Result<ProxyUrl, String> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let Ok(url) = reqwest::Url::parse(&with_scheme) else {
            let shown = if text.contains('@') {
                "the URL (not shown: it contains '@' and may hold a password)".to_string()
            } else {
                format!("\"{}\"", crate::shown::shown(text))
            };
            return Err(format!(
                "{shown} is not a proxy URL; write http://host:port (or http://user:password@host:port), or none to go direct"
            ));
        };
        let proxy = ProxyUrl(url);
        let url = &proxy.0;
        let mut wrong = Vec::new();
        match url.scheme() {
            "http" | "https" => {}
            "socks4" | "socks4a" | "socks5" | "socks5h" => wrong.push(format!(
                "the scheme {}: only http and https proxies are supported (an HTTP CONNECT proxy such as squid or tinyproxy)",
                url.scheme()
            )),
            other => wrong.push(format!(
                "the scheme \"{}\": a proxy URL starts with http:// or https://",
                crate::shown::shown(other)
            )),
        }
        if url.host().is_none() {
            wrong.push("no host".to_string());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            wrong.push(
                "a path, query or fragment: a proxy is only scheme, host and port".to_string(),
            );
        }
        if wrong.is_empty() {
            Ok(proxy)
        } else {
            Err(format!("{proxy} has {}", wrong.join(", and ")))
        }
    }

    /// The URL with its password, for the one place that must use it (the HTTP client).
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The password as written and percent-decoded: the values to cut out of any error text.
    pub fn hidden(&self) -> Vec<String> {
        let Some(password) = self.0.password() else {
            return Vec::new();
        };
        let mut hidden = vec![password.to_string()];
        let decoded = String::from_utf8_lossy(&crate::shown::percent_decoded(password.as_bytes()))
            .into_owned();
        if decoded != password {
            hidden.push(decoded);
        }
        hidden
    }

    /// True when the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.0.password().is_some()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_prints_without_its_password() {
        let proxy = ProxyUrl::parse("http://alice:p%40ss-9x@proxy.internal:3128").unwrap();
        assert_eq!(proxy.to_string(), "http://alice:***@proxy.internal:3128");
        assert_eq!(
            format!("{proxy:?}"),
            "ProxyUrl(http://alice:***@proxy.internal:3128)"
        );
        assert_eq!(proxy.hidden(), vec!["p%40ss-9x", "p@ss-9x"]);
        assert_eq!(
            ProxyUrl::parse("proxy.internal:3128").unwrap().expose(),
            "http://proxy.internal:3128/"
        );
    }

    #[test]
    fn a_refused_proxy_url_never_shows_its_password() {
        for url in [
            "socks5://alice:hunter2-9x@proxy:1080",
            "ftp://alice:hunter2-9x@proxy:21",
            "http://alice:hunter2-9x@proxy:3128/path",
            "http://alice:hunter2-9x@[bad:3128",
        ] {
            let message = ProxyUrl::parse(url).unwrap_err();
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
