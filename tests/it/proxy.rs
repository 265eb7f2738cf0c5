//! The egress proxy: `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` as curl reads them, an app's `proxy:`
//! overriding them, and a proxy's password kept out of every log line, error, `check` output and
//! history row, whether the proxy forwards, refuses (407) or cannot be reached.

use std::process::Output;

use crate::support::*;

const STANDUP: &str = "  - { name: standup, cron: '30 9 * * 1-5', to: { users: [ZhangSan] }, text: { content: 站会 } }\n";

const USER: &str = "egress";
/// Distinctive, so that a leak is easy to find; the `@`-free form is what a URL carries.
const PASSWORD: &str = "pw-Hunter2-do-not-leak-7c1e";

/// A config whose one app reaches WeCom at `api_base`, with `extra` app keys (`proxy: ...`).
fn write_config(env: &Env, api_base: &str, extra: &str) {
    write_config_with(env, api_base, extra, STANDUP);
}

fn write_config_with(env: &Env, api_base: &str, extra: &str, schedules: &str) {
    env.write_config(&format!(
        "timezone: UTC\napps:\n  ops:\n    corp_id: {CORP}\n    agent_id: {AGENT}\n    secret_file: ops.secret\n    api_base: {api_base}\n{extra}schedules:\n{schedules}"
    ));
}

/// `send standup` with trace logs (HTTP internals included) and these environment variables.
async fn send(env: &Env, vars: &[(&str, &str)]) -> Output {
    let mut command = env.command(&["send", "standup"]);
    command.env("RUST_LOG", "trace");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().await.expect("run send")
}

/// What a user or an auditor can read after a run: the outputs, `check`, `history --json`, and
/// the history and events tables.
async fn everything_readable(env: &Env, outputs: &[&Output]) -> String {
    let mut all: Vec<String> = outputs.iter().map(|o| text(o)).collect();
    all.push(text(&env.cli(&["check"]).await));
    all.push(text(&env.cli(&["history", "--json"]).await));
    all.extend(env.column(
        "SELECT coalesce(payload, '') || ' ' || coalesce(errmsg, '') || ' ' || coalesce(msgid, '') FROM sends",
    ));
    all.extend(env.column("SELECT coalesce(detail, '') FROM events"));
    all.join("\n")
}

fn assert_no_password(everything: &str) {
    assert!(
        !everything.contains(PASSWORD) && !everything.contains("Hunter2"),
        "the proxy's password leaked:\n{everything}"
    );
}

/// The proxy saw exactly the app's gettoken and message/send, as absolute URIs to the fake.
fn assert_carried_the_send(proxy: &TestProxy, env: &Env) {
    let seen = proxy.seen();
    let base = env.fake.base_url();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].method == "GET"
            && seen[0]
                .target
                .starts_with(&format!("{base}/cgi-bin/gettoken?")),
        "{seen:?}"
    );
    assert!(
        seen[1].method == "POST"
            && seen[1]
                .target
                .starts_with(&format!("{base}/cgi-bin/message/send?")),
        "{seen:?}"
    );
    assert_eq!(env.fake.messages().len(), 1, "WeCom got the message");
}

#[tokio::test]
async fn http_proxy_carries_every_wecom_call_of_a_send() {
    for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
        let env = Env::new().await;
        let proxy = TestProxy::start(ProxyMode::Forward).await;
        write_config(&env, &env.fake.base_url(), "");
        let output = send(&env, &[(name, &proxy.url())]).await;
        assert!(output.status.success(), "{name}: {}", text(&output));
        assert_carried_the_send(&proxy, &env);
        assert!(
            proxy.seen().iter().all(|s| s.proxy_authorization.is_none()),
            "no credentials were given"
        );
    }
}

#[tokio::test]
async fn https_proxy_tunnels_an_https_api_base_with_connect_and_its_credentials() {
    let env = Env::new().await;
    // The fake speaks plain http, so no TLS session could follow; the proxy refuses the
    // tunnel (407) after recording it, which is also the refusal a user must be told about.
    let tunnel = TestProxy::start(ProxyMode::Refuse).await;
    let plain = TestProxy::start(ProxyMode::Forward).await;
    let https_base = env.fake.base_url().replace("http://", "https://");
    write_config(&env, &https_base, "");
    let output = send(
        &env,
        &[
            ("HTTPS_PROXY", &tunnel.url_with(USER, PASSWORD)),
            ("HTTP_PROXY", &plain.url()),
        ],
    )
    .await;
    assert!(!output.status.success(), "{}", text(&output));
    let seen = tunnel.seen();
    let host = https_base.trim_start_matches("https://");
    assert!(
        !seen.is_empty()
            && seen.iter().all(|s| s.method == "CONNECT"
                && s.target == host
                && s.proxy_authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("Basic "))),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 1, "a refusal is not retried: {seen:?}");
    assert!(plain.seen().is_empty(), "HTTP_PROXY is for http:// only");
    assert_eq!(env.fake.gettoken_calls(), 0);
    let everything = everything_readable(&env, &[&output]).await;
    assert!(
        everything.contains("the proxy wants a user name and password"),
        "{everything}"
    );
    assert_no_password(&everything);
}

#[tokio::test]
async fn no_proxy_matching_the_host_sends_directly_and_localhost_is_no_exception() {
    for (name, value, direct) in [
        ("NO_PROXY", "127.0.0.1", true),
        ("no_proxy", "example.com, 127.0.0.0/8", true),
        ("NO_PROXY", "*", true),
        // Like curl, no implicit exception for the loopback: only NO_PROXY makes one.
        ("NO_PROXY", "example.com", false),
    ] {
        let env = Env::new().await;
        let proxy = TestProxy::start(ProxyMode::Forward).await;
        write_config(&env, &env.fake.base_url(), "");
        let output = send(&env, &[("HTTP_PROXY", &proxy.url()), (name, value)]).await;
        assert!(output.status.success(), "{name}={value}: {}", text(&output));
        if direct {
            assert!(
                proxy.seen().is_empty(),
                "{name}={value}: {:?}",
                proxy.seen()
            );
            assert_eq!(env.fake.messages().len(), 1);
        } else {
            assert_carried_the_send(&proxy, &env);
        }
    }
}

#[tokio::test]
async fn an_apps_proxy_key_overrides_the_environment_no_proxy_included() {
    let env = Env::new().await;
    let from_env = TestProxy::start(ProxyMode::Forward).await;
    let apps = TestProxy::start(ProxyMode::Forward).await;
    write_config(
        &env,
        &env.fake.base_url(),
        &format!("    proxy: {}\n", apps.url()),
    );
    let output = send(
        &env,
        &[("HTTP_PROXY", &from_env.url()), ("NO_PROXY", "127.0.0.1")],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert_carried_the_send(&apps, &env);
    assert!(from_env.seen().is_empty(), "{:?}", from_env.seen());
}

#[tokio::test]
async fn proxy_none_sends_directly_whatever_the_environment_says() {
    let env = Env::new().await;
    let proxy = TestProxy::start(ProxyMode::Forward).await;
    write_config(&env, &env.fake.base_url(), "    proxy: none\n");
    let output = send(
        &env,
        &[("HTTP_PROXY", &proxy.url()), ("HTTPS_PROXY", &proxy.url())],
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert_eq!(env.fake.messages().len(), 1);
}

#[tokio::test]
async fn a_proxy_password_leaks_nowhere_when_the_proxy_forwards() {
    for in_config in [true, false] {
        let env = Env::new().await;
        let proxy = TestProxy::start(ProxyMode::Forward).await;
        let url = proxy.url_with(USER, PASSWORD);
        let (extra, vars) = if in_config {
            (format!("    proxy: {url}\n"), vec![])
        } else {
            (String::new(), vec![("HTTP_PROXY", url.as_str())])
        };
        write_config(&env, &env.fake.base_url(), &extra);
        let output = send(&env, &vars).await;
        assert!(output.status.success(), "{}", text(&output));
        assert_carried_the_send(&proxy, &env);
        assert!(
            proxy.seen().iter().all(|s| s
                .proxy_authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))),
            "the credentials were used: {:?}",
            proxy.seen()
        );
        assert!(text(&output).contains("TRACE"), "trace logs were on");
        let everything = everything_readable(&env, &[&output]).await;
        if in_config {
            assert!(
                everything.contains(&format!("{USER}:***@127.0.0.1")),
                "check warns of the password in the file, masked:\n{everything}"
            );
        }
        assert_no_password(&everything);
    }
}

#[tokio::test]
async fn a_proxy_password_leaks_nowhere_when_the_proxy_refuses_with_407() {
    let env = Env::new().await;
    let proxy = TestProxy::start(ProxyMode::Refuse).await;
    let url = proxy.url_with(USER, PASSWORD);
    write_config(&env, &env.fake.base_url(), &format!("    proxy: {url}\n"));
    let output = send(&env, &[]).await;
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(proxy.seen().len(), 1, "a 407 is not retried");
    assert_eq!(env.fake.gettoken_calls(), 0);
    let everything = everything_readable(&env, &[&output]).await;
    assert!(
        everything.contains("407") && everything.contains("the proxy wants a user name"),
        "{everything}"
    );
    assert_no_password(&everything);
}

#[tokio::test]
async fn a_proxy_password_leaks_nowhere_when_the_proxy_is_unreachable() {
    let env = Env::new().await;
    // Nothing listens on port 9 of the loopback.
    write_config(
        &env,
        &env.fake.base_url(),
        &format!("    proxy: http://{USER}:{PASSWORD}@127.0.0.1:9\n"),
    );
    let output = send(&env, &[]).await;
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(env.fake.gettoken_calls(), 0);
    let everything = everything_readable(&env, &[&output]).await;
    assert!(everything.contains("could not connect"), "{everything}");
    assert_no_password(&everything);
}

#[tokio::test]
async fn a_proxy_that_cannot_be_used_is_refused_naming_the_app_and_field() {
    let env = Env::new().await;
    write_config(
        &env,
        &env.fake.base_url(),
        &format!("    proxy: socks5://{USER}:{PASSWORD}@127.0.0.1:1080\n"),
    );
    let check = env.cli(&["check"]).await;
    let shown = text(&check);
    assert!(!check.status.success(), "{shown}");
    assert!(
        shown.contains("ops") && shown.contains("proxy") && shown.contains("socks5"),
        "{shown}"
    );
    assert_no_password(&shown);

    // A proxy variable that is set but unusable fails the command: going direct would reach
    // WeCom from an untrusted IP.
    write_config(&env, &env.fake.base_url(), "");
    let bad = format!("socks5://{USER}:{PASSWORD}@127.0.0.1:1080");
    let output = send(&env, &[("HTTPS_PROXY", &bad)]).await;
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("HTTPS_PROXY"), "{}", text(&output));
    assert_no_password(&text(&output));
    assert_eq!(env.fake.gettoken_calls(), 0);
}

#[tokio::test]
async fn a_reload_that_changes_an_apps_proxy_sends_through_the_new_one() {
    let env = Env::new().await;
    let first = TestProxy::start(ProxyMode::Forward).await;
    let second = TestProxy::start(ProxyMode::Forward).await;
    let tick = every_two_seconds("tick", "tick");
    write_config_with(
        &env,
        &env.fake.base_url(),
        &format!("    proxy: {}\n", first.url()),
        &tick,
    );
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "a send through the first proxy", || {
        first.seen().iter().any(|s| s.method == "POST")
    })
    .await;
    write_config_with(
        &env,
        &env.fake.base_url(),
        &format!("    proxy: {}\n", second.url()),
        &tick,
    );
    daemon.signal(SIGHUP);
    eventually(WAIT, "a send through the second proxy", || {
        second.seen().iter().any(|s| s.method == "POST")
    })
    .await;
    let before = first.seen().len();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        first.seen().len(),
        before,
        "the first proxy is no longer used"
    );
    daemon.stop().await;
}
