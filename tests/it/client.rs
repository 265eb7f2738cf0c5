//! The daemon as a client of WeCom: a burst keeps to the app's bound on requests in flight over
//! a few kept-alive connections, and HTTP answers WeCom never gives (a redirect, a 4xx) are
//! failures at once, not retried.

use std::collections::BTreeMap;
use std::time::Duration;

use wecom_notify::config::DEFAULT_MAX_IN_FLIGHT;

use crate::support::*;

/// Connections beyond the bound that a burst may open: hyper's pool takes a connection back a
/// moment after its answer was read (in a task of its own), and a call that starts in that
/// moment finds no idle connection and opens one. Seen: 0–1 extra per 300 sends (up to 5
/// before the client yielded once after each answer).
const CONNECTION_SLACK: usize = DEFAULT_MAX_IN_FLIGHT / 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_300_keeps_to_the_bound_in_flight_over_a_few_connections() {
    const N: usize = 300;
    let env = Env::new().await;
    // One recipient each, so WeCom's per-member limit never spreads the burst; every slot of
    // every schedule falls on the same instants.
    let schedules: String = (0..N)
        .map(|i| {
            every(
                &format!("b{i:03}"),
                "*/5 * * * * *",
                &format!("burst {i}"),
                "",
            )
            .replace("[u]", &format!("[u{i:03}]"))
        })
        .collect();
    env.write_schedules(&schedules);
    let mut daemon = env.spawn_daemon(&[]);
    daemon
        .eventually(Duration::from_secs(60), || {
            let full = env.count(&format!(
                "SELECT count(*) FROM (SELECT scheduled_at FROM sends WHERE status <> 'pending' \
                 GROUP BY scheduled_at HAVING count(*) = {N})"
            ));
            if full >= 1 {
                return Ok(());
            }
            Err(format!(
                "no slot has all {N} rows finished yet ({} delivered, {} in flight at most)",
                env.fake.messages().len(),
                env.fake.max_in_flight()
            ))
        })
        .await;
    daemon.stop().await;

    let most = env.fake.max_in_flight();
    let connections = env.fake.connections();
    assert!(
        most <= DEFAULT_MAX_IN_FLIGHT,
        "WeCom saw {most} requests in flight at once over {connections} connections; the bound is {DEFAULT_MAX_IN_FLIGHT}"
    );
    assert!(
        connections <= DEFAULT_MAX_IN_FLIGHT + CONNECTION_SLACK,
        "the burst opened {connections} connections for a bound of {DEFAULT_MAX_IN_FLIGHT}"
    );
    // Every slot of every schedule: one row, sent, and its body delivered exactly once.
    assert_eq!(
        env.column("SELECT DISTINCT status FROM sends"),
        ["sent"],
        "every row is sent"
    );
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for message in env.fake.messages() {
        *delivered.entry(message.raw).or_default() += 1;
    }
    let payloads = env.column("SELECT payload FROM sends");
    assert!(payloads.len() >= N, "{} rows", payloads.len());
    for payload in &payloads {
        assert_eq!(
            delivered.get(payload),
            Some(&1),
            "delivered once: {payload}"
        );
    }
    let without_row: Vec<&String> = delivered
        .keys()
        .filter(|body| !payloads.contains(body))
        .collect();
    assert!(
        without_row.is_empty(),
        "delivered without a row: {without_row:?}; log:\n{}",
        daemon.logs()
    );
}

const STANDUP: &str = r#"  - name: standup
    cron: "30 9 * * 1-5"
    to: { users: [ZhangSan] }
    text: { content: "站会十分钟后开始" }
"#;

#[tokio::test]
async fn a_redirect_is_a_failure_at_once_never_followed_nor_retried() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    env.fake.script_send(Reply::Redirect(
        302,
        "http://login.example.com/sso?access_token=LEAKED&next=/".into(),
    ));
    let output = env.cli(&["send", "standup"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(env.fake.send_calls(), 1, "one attempt: {}", text(&output));
    let row =
        env.column("SELECT status || ' ' || attempts || ' ' || errmsg FROM sends WHERE id = 1");
    let row = &row[0];
    assert!(
        row.starts_with("failed 1 HTTP 302 Found to http://login.example.com/sso")
            && row.contains("not followed")
            && row.contains("api_base"),
        "{row}"
    );
    assert!(
        !row.contains("LEAKED"),
        "the token in the Location is masked: {row}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("HTTP 302"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn a_4xx_is_a_failure_at_once_and_429_or_5xx_is_retried() {
    use chrono::{SubsecRound, Utc};
    use wecom_notify::dispatch::Fired;
    use wecom_notify::store::history::Trigger;

    let cases = [
        (Reply::Http(404, "not found".into()), "failed", 1),
        (Reply::Http(403, "forbidden".into()), "failed", 1),
        (
            Reply::Redirect(301, "https://elsewhere/".into()),
            "failed",
            1,
        ),
        (Reply::Http(429, "slow down".into()), "sent", 2),
        (Reply::Http(503, "unavailable".into()), "sent", 2),
    ];
    for (answer, status, attempts) in cases {
        let env = Env::new().await;
        env.write_schedules(STANDUP);
        let config = env.load();
        let dispatcher = env.dispatcher(fast_policy());
        let case = format!("{answer:?}");
        env.fake.script_send(answer);
        let schedule = config.schedule("standup").expect("schedule");
        let app = &wecom_notify::channel::Channel::App(config.app("ops").expect("app").clone());
        let now = Utc::now().trunc_subsecs(0);
        let fired = dispatcher
            .fire(schedule, app, now, Trigger::Manual)
            .await
            .expect("recorded");
        let Fired::Done(outcome) = fired else {
            panic!("{case}: not done")
        };
        assert_eq!(
            outcome.finish.status.as_str(),
            status,
            "{case}: {outcome:?}"
        );
        assert_eq!(outcome.finish.attempts, attempts, "{case}: {outcome:?}");
        assert_eq!(env.fake.send_calls(), attempts as usize, "{case}");
    }
}

#[tokio::test]
async fn a_login_page_echoing_the_gettoken_url_leaks_no_secret() {
    // The secret as a login page's `next=` would carry it: percent-encoded, inside the query.
    let echoed = format!(
        "%2Fcgi-bin%2Fgettoken%3Fcorpid%3D{CORP}%26corpsecret%3D{}",
        SECRET.replace('-', "%2D")
    );
    for reply in [
        Reply::Redirect(302, format!("https://sso.example/login?next={echoed}")),
        Reply::Http(403, format!("<html>denied: {echoed} and {SECRET}</html>")),
    ] {
        let env = Env::new().await;
        env.write_schedules(STANDUP);
        env.fake.script_gettoken(reply.clone());
        let output = env.cli(&["send", "standup"]).await;
        assert_ne!(output.status.code(), Some(0), "{}", text(&output));
        let everything = format!(
            "{}\n{}",
            text(&output),
            env.column("SELECT coalesce(errmsg, '') FROM sends")
                .join("\n")
        );
        assert!(everything.contains("HTTP"), "{reply:?}: {everything}");
        for leak in [SECRET, "S3cr3t%2Ddo", "corpsecret%3DS3"] {
            assert!(
                !everything.contains(leak),
                "{reply:?} leaked {leak}: {everything}"
            );
        }
    }
}
