//! Readers of the database in other processes (the `sqlite3` CLI without `-readonly`, a
//! rusqlite connection, `wecom-notify history` and `send`) never cost the daemon a row.

use std::time::Duration;

use chrono::{Timelike, Utc};

use crate::support::*;

/// `sqlite3 DB SQL` as an auditor types it: read-write, no `-readonly`.
async fn sqlite3(env: &Env, sql: &str) -> String {
    let output = tokio::process::Command::new("sqlite3")
        .arg(env.db_path())
        .arg(sql)
        .output()
        .await
        .expect("the sqlite3 CLI (Debian package sqlite3)");
    assert!(output.status.success(), "sqlite3 {sql}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_running_sqlite3_while_the_daemon_writes_costs_no_row() {
    let env = Env::new().await;
    // Ten schedules sharing one slot, a few seconds ahead.
    let slot = Utc::now() + chrono::Duration::seconds(4);
    let local = slot.with_timezone(&chrono_tz::Asia::Shanghai);
    let cron = format!(
        "{} {} {} * * *",
        local.second(),
        local.minute(),
        local.hour()
    );
    let schedules: String = (0..10)
        .map(|i| every(&format!("s{i}"), &cron, &format!("burst {i}"), ""))
        .collect();
    env.write_schedules(&schedules);
    let mut daemon = env.spawn_daemon(&[]);
    daemon.wait_log("schedules armed", WAIT).await;
    assert_eq!(sqlite3(&env, "select count(*) from sends").await, "0");
    env.fake.wait_for_messages(10, WAIT).await;
    eventually(WAIT, "ten sent rows while the daemon runs", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") == 10
    })
    .await;
    assert_eq!(sqlite3(&env, "select count(*) from sends").await, "10");
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.stop().await;
    assert_eq!(
        sqlite3(&env, "select count(*) from sends; pragma integrity_check").await,
        "10\nok"
    );
    let logs = daemon.logs();
    assert!(
        !logs.contains("malformed") && !logs.contains("I/O error"),
        "{logs}"
    );
}
