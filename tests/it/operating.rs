//! Operating the daemon: Prometheus metrics over HTTP, and history retention.

use chrono::{Duration, Utc};

use crate::support::*;

fn free_port() -> u16 {
    // Bound and released at once: good enough for a test on loopback.
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

on_both_backends! {
    async fn metrics_are_served_over_http_after_a_send(env: Env) {
        let port = free_port();
        let schedules = every_two_seconds("tick", "tick");
        env.write_config(&format!(
            "timezone: UTC\nmetrics: {{ listen: \"127.0.0.1:{port}\" }}\n{}schedules:\n{schedules}",
            env.apps_yaml()
        ));
        let mut daemon = env.spawn_daemon(&[]);
        eventually(WAIT, "two sends", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 2
        })
        .await;
        env.write_config("schedules: [");
        daemon.signal(SIGHUP);
        eventually(WAIT, "the failed reload", || {
            env.count("SELECT count(*) FROM events WHERE kind = 'reload_failed'") == 1
        })
        .await;

        let url = format!("http://127.0.0.1:{port}/metrics");
        let response = http_get(&url).await.expect("scrape");
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = response.text().await.expect("body");
        let sent = sample(
            &text,
            "wecom_notify_sends_total{schedule=\"tick\",status=\"sent\"}",
        )
        .expect(&text);
        assert!(sent >= 2.0, "{text}");
        assert_eq!(
            sample(&text, "wecom_notify_gettoken_total{app=\"ops\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(
            sample(&text, "wecom_notify_send_seconds_count").is_some_and(|n| n >= 2.0),
            "{text}"
        );
        assert!(
            sample(&text, "wecom_notify_fire_lag_seconds_count").is_some_and(|n| n >= 2.0),
            "{text}"
        );
        let next = sample(
            &text,
            "wecom_notify_next_fire_timestamp_seconds{schedule=\"tick\"}",
        )
        .expect(&text);
        assert!(
            (next - Utc::now().timestamp() as f64).abs() < 10.0,
            "the next slot is seconds away: {next}"
        );
        assert!(
            sample(
                &text,
                "wecom_notify_last_success_timestamp_seconds{schedule=\"tick\"}"
            )
            .is_some(),
            "{text}"
        );
        assert_eq!(sample(&text, "wecom_notify_reloads_total"), Some(1.0));
        assert_eq!(
            sample(&text, "wecom_notify_reload_failures_total"),
            Some(1.0)
        );
        let missing = http_get(&format!("http://127.0.0.1:{port}/other"))
            .await
            .expect("request");
        assert_eq!(missing.status(), 404);

        daemon.signal(SIGTERM);
        assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
    }
}

on_both_backends! {
    async fn history_older_than_the_retention_is_pruned_but_never_a_pending_row(env: Env) {
        env.write_schedules(&every("tick", "0 0 1 1 *", "tick", ""));
        // Create the schema, then seed old and recent rows.
        assert!(
            env.cli(&["send", "tick", "--dry-run"])
                .await
                .status
                .success()
        );
        let old = wecom_notify::time::to_db(Utc::now() - Duration::days(500));
        let recent = wecom_notify::time::to_db(Utc::now() - Duration::days(10));
        // The pending row belongs to a live process (this test), so crash recovery leaves it.
        let pid = std::process::id();
        let insert = |n: u32, at: &str, status: &str| {
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
                 INSERT INTO sends (schedule, trigger, scheduled_at, created_at, status, attempts, app, agent_id, msgtype, payload, pid)
                 SELECT 'tick', 'manual', '{at}', '{at}', '{status}', 1, 'ops', 1, 'text', '{{}}', {pid} FROM n;"
            )
        };
        env.execute(&insert(1200, &old, "sent"));
        env.execute(&insert(1, &old, "pending"));
        env.execute(&insert(1, &recent, "sent"));
        std::fs::write(
            env.config_path(),
            format!("history_retention: 400d\n{}", read(&env.config_path())),
        )
        .expect("write");
        let mut daemon = env.spawn_daemon(&[]);
        eventually(WAIT, "old rows pruned", || {
            env.count(&format!(
                "SELECT count(*) FROM sends WHERE scheduled_at = '{old}' AND status = 'sent'"
            )) == 0
        })
        .await;
        daemon.signal(SIGTERM);
        assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM sends WHERE scheduled_at = '{old}' AND status = 'pending'"
            )),
            1,
            "pending rows stay"
        );
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM sends WHERE scheduled_at = '{recent}'"
            )),
            1,
            "recent rows stay"
        );
        assert!(
            daemon
                .logs()
                .contains("pruned history older than history_retention"),
            "{}",
            daemon.logs()
        );
    }
}

/// `GET path` on the daemon's metrics listener: the status and the body; `None` while nothing
/// listens yet.
async fn probe(port: u16, path: &str) -> Option<(u16, String)> {
    wecom_notify::wecom::client::install_crypto_provider();
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_before_ready_after_it_and_while_the_database_refuses_writes() {
    let env = Env::new().await;
    let port = free_port();
    env.write_config(&format!(
        "timezone: UTC\nmetrics: {{ listen: \"127.0.0.1:{port}\" }}\n{}schedules:\n{}",
        env.apps_yaml(),
        every_two_seconds("tick", "tick")
    ));
    // The start-up waits for a write lock another connection holds: it cannot be READY yet.
    drop(wecom_notify::store::Store::open(&env.db_path()).expect("migrate"));
    let blocker = env.db();
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let daemon = env.start_in_process(fast_policy(), std::time::Duration::from_secs(20));
    let mut before = None;
    eventually(WAIT, "the probes answer during the start-up", || {
        before = block_on_here(probe(port, "/readyz"));
        before.is_some()
    })
    .await;
    let (status, reason) = before.expect("answered");
    assert_eq!(status, 503, "{reason}");
    assert!(reason.starts_with("starting"), "{reason}");
    assert_eq!(
        probe(port, "/healthz").await.map(|(s, _)| s),
        Some(200),
        "alive while starting"
    );

    blocker.execute_batch("ROLLBACK").expect("release");
    let mut ready = None;
    eventually(WAIT, "ready once armed", || {
        ready = block_on_here(probe(port, "/readyz"));
        ready.as_ref().is_some_and(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(probe(port, "/healthz").await.map(|(s, _)| s), Some(200));

    // Read-only: the next heartbeat is refused, and /readyz says so; /healthz does not care.
    daemon.refuse_writes(true).await;
    let mut refused = None;
    eventually(WAIT, "not ready while writes are refused", || {
        refused = block_on_here(probe(port, "/readyz"));
        refused.as_ref().is_some_and(|(s, _)| *s == 503)
    })
    .await;
    let (_, reason) = refused.expect("answered");
    assert!(
        reason.contains("refuses writes") && reason.contains("readonly"),
        "{reason}"
    );
    assert_eq!(probe(port, "/healthz").await.map(|(s, _)| s), Some(200));
    daemon.refuse_writes(false).await;
    eventually(WAIT, "ready again", || {
        block_on_here(probe(port, "/readyz")).is_some_and(|(s, _)| s == 200)
    })
    .await;
    daemon.stop().await;
}

/// Runs `future` to completion from inside a synchronous polling closure.
fn block_on_here<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// `reqwest::get`, with the process's TLS provider installed first (the crate builds reqwest
/// without one of its own).
async fn http_get(url: &str) -> reqwest::Result<reqwest::Response> {
    wecom_notify::wecom::client::install_crypto_provider();
    reqwest::get(url).await
}
