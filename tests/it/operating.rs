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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_http_after_a_send() {
    let env = Env::new().await;
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
    let response = reqwest::get(&url).await.expect("scrape");
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
    let missing = reqwest::get(format!("http://127.0.0.1:{port}/other"))
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);

    daemon.signal(SIGTERM);
    assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_retention_is_pruned_but_never_a_pending_row() {
    let env = Env::new().await;
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
    {
        let db = env.db();
        let mut insert = db
            .prepare(
                "INSERT INTO sends (schedule, trigger, scheduled_at, created_at, status, attempts, app, agent_id, msgtype, payload, pid)
                 VALUES ('tick', 'manual', ?1, ?1, ?2, 1, 'ops', 1, 'text', '{}', ?3)",
            )
            .expect("prepare");
        // The pending row belongs to a live process (this test), so crash recovery leaves it.
        let pid = std::process::id().to_string();
        for _ in 0..1200 {
            insert.execute([&old, "sent", &pid]).expect("insert");
        }
        insert.execute([&old, "pending", &pid]).expect("insert");
        insert.execute([&recent, "sent", &pid]).expect("insert");
    }
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
