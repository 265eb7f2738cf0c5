//! Several daemons on one PostgreSQL database, as on several hosts: each has its own
//! `instance:`, every node arms every schedule, and the database's unique slot claim decides
//! which sends a slot. The server is a throwaway one the test starts (see
//! [`crate::support::postgres`]); without PostgreSQL installed these tests say they were
//! skipped, unless `WECOM_NOTIFY_REQUIRE_POSTGRES=1` (CI) makes that a failure.

use std::sync::Arc;
use std::time::Duration;

use crate::support::postgres::Postgres;
use crate::support::*;

use crate::instances::{LEASE, node_config, node_config_with};

/// A throwaway server and a test folder whose database is a fresh database on it; `None`
/// (the test returns) when PostgreSQL is not installed.
async fn env_on_postgres() -> Option<(Arc<Postgres>, Env)> {
    let server = Arc::new(Postgres::start()?);
    let env = Env::on_postgres(&server).await;
    Some((server, env))
}

/// Every slot of every schedule has one row, none doubled and none missing, each row is
/// `sent`, and each body was delivered once.
#[track_caller]
fn assert_every_slot_sent_once(env: &Env) {
    for name in ["a", "b", "c"] {
        env.assert_contiguous(name, 2);
    }
    assert_eq!(
        env.count("SELECT count(*) FROM sends"),
        env.count("SELECT count(DISTINCT schedule || scheduled_at) FROM sends"),
        "one row per slot"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
        0,
        "{:?}",
        env.column("SELECT schedule || ' ' || scheduled_at || ' ' || status || ' ' || coalesce(errmsg, '') FROM sends WHERE status <> 'sent'")
    );
    env.assert_sent_rows_delivered_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_every_slot_once_with_one_gettoken_for_the_cluster() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    let (config_a, config_b) = (node_config(&env, "node-a"), node_config(&env, "node-b"));
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "both nodes started", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 2
    })
    .await;
    // Twenty slots of each schedule fired by the pair (about 40 s).
    eventually(Duration::from_secs(80), "60 slots sent", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 60
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert_every_slot_sent_once(&env);
    let by_node = env.column(
        "SELECT instance || ' ' || count(*) FROM sends GROUP BY instance ORDER BY instance",
    );
    assert_eq!(
        by_node.len(),
        2,
        "both nodes sent slots (the claim picks one per slot): {by_node:?}"
    );
    assert_eq!(env.fake.gettoken_calls(), 1, "one gettoken for the cluster");
    assert_eq!(
        env.column("SELECT DISTINCT instance FROM events WHERE kind = 'started' ORDER BY instance"),
        ["node-a", "node-b"],
        "events name their instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_postgresql_mid_run_loses_no_slot_and_sends_none_twice() {
    let Some((server, env)) = env_on_postgres().await else {
        return;
    };
    let (config_a, config_b) = (node_config(&env, "node-a"), node_config(&env, "node-b"));
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "six slots sent", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 6
    })
    .await;
    // Down for about four seconds: two slots of each schedule fall while it is.
    server.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.start_again();
    let before = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(
        Duration::from_secs(60),
        "twelve more slots sent after the restart",
        || env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= before + 12,
    )
    .await;
    a.stop().await;
    b.stop().await;
    assert!(
        a.logs().contains("cannot reach the database")
            && b.logs().contains("cannot reach the database"),
        "both nodes met the outage:\n{}\n{}",
        a.logs(),
        b.logs()
    );
    assert_every_slot_sent_once(&env);
    assert!(
        env.count("SELECT count(*) FROM events WHERE kind = 'database_fault'") >= 1,
        "the outage is on record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_nodes_stopped_and_one_started_only_the_slots_when_neither_ran_are_missed() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    let (config_a, config_b) = (node_config(&env, "node-a"), node_config(&env, "node-b"));
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "six slots sent", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 6
    })
    .await;
    // node-a stops first; node-b fires alone for a while, then stops too.
    a.stop().await;
    let alone = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "node-b firing alone", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= alone + 6
    })
    .await;
    b.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    eventually(WAIT, "node-a started again", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 3
    })
    .await;
    let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "node-a fires again", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= sent + 3
    })
    .await;
    a.stop().await;
    let stopped_b =
        env.column("SELECT max(at) FROM events WHERE kind = 'stopped' AND instance = 'node-b'");
    let restarted =
        env.column("SELECT max(at) FROM events WHERE kind = 'started' AND instance = 'node-a'");
    let missed =
        env.column("SELECT scheduled_at FROM sends WHERE status = 'missed' ORDER BY scheduled_at");
    assert!(
        missed.len() >= 3 * 2,
        "the slots of the five seconds neither ran are missed: {missed:?}"
    );
    for slot in &missed {
        assert!(
            slot.as_str() >= stopped_b[0].as_str() && slot.as_str() <= restarted[0].as_str(),
            "{slot} missed, but node-b ran until {} and node-a from {}",
            stopped_b[0],
            restarted[0]
        );
    }
    for name in ["a", "b", "c"] {
        env.assert_contiguous(name, 2);
    }
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status NOT IN ('sent', 'missed')"),
        0
    );
    env.assert_sent_rows_delivered_once();
}

/// A node killed just before another starts still looks alive to that start (its heartbeat is
/// fresh, and on another host its pid says nothing). The start leaves the past to it; once its
/// heartbeat goes stale without another beat, the slots between its last claims and the start
/// are recorded as missed: no slot is left without a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_left_by_a_node_that_died_just_before_another_started_are_recorded_missed() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    // Slots 6 s apart: the test runs past a minute, within the per-member limit (30 a minute).
    let schedules: String = ["a", "b"]
        .iter()
        .map(|name| every(name, "*/6 * * * * *", name, "duplicate_check_interval: 600"))
        .collect();
    let config_a = node_config_with(&env, "node-a", &schedules);
    let config_b = node_config_with(&env, "node-b", &schedules);
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "four slots sent by node-b", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 4
    })
    .await;
    b.signal(SIGKILL);
    b.wait_exit(WAIT).await;
    // Slots fall with no node running; then node-a starts while node-b's heartbeat is fresh.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    eventually(WAIT, "node-a started", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started' AND instance = 'node-a'") == 1
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status = 'missed'"),
        0,
        "node-b looked alive at node-a's start"
    );
    // node-b's heartbeat goes stale 60 s after its last beat.
    a.eventually(Duration::from_secs(120), || {
        match env.count("SELECT count(*) FROM sends WHERE status = 'missed'") {
            n if n >= 2 * 2 => Ok(()),
            n => Err(format!("{n} slots recorded missed")),
        }
    })
    .await;
    a.stop().await;
    for name in ["a", "b"] {
        env.assert_contiguous(name, 6);
    }
    let started =
        env.column("SELECT at FROM events WHERE kind = 'started' AND instance = 'node-a'");
    for slot in env.column("SELECT scheduled_at FROM sends WHERE status = 'missed'") {
        assert!(
            slot <= started[0],
            "{slot} missed after node-a started at {}",
            started[0]
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status NOT IN ('sent', 'missed')"),
        0
    );
    env.assert_sent_rows_delivered_once();
}

/// A node that cannot reach the database for longer than its lease stops sending the work it
/// claimed before the lease lapses: it never races a node that takes the row over. The row
/// says why once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_database_makes_no_attempt_past_its_lease() {
    let Some((server, env)) = env_on_postgres().await else {
        return;
    };
    // WeCom answers "system busy" to every send, so the send retries on and on.
    env.fake.set_chaos(Chaos {
        busy_fraction: 1.0,
        ..Default::default()
    });
    let slot = chrono::Utc::now() + chrono::Duration::seconds(3);
    env.write_config(&format!(
        "timezone: Asia/Shanghai\nclaim_lease: {LEASE}s\n{}schedules:\n{}",
        env.apps_yaml(),
        every("once", &cron_at(slot), "once", "")
    ));
    let policy = wecom_notify::retry::RetryPolicy {
        max_attempts: 1000,
        max_elapsed: Duration::from_secs(120),
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
        ..fast_policy()
    };
    let daemon = env.start_in_process(policy, Duration::from_secs(5));
    eventually(WAIT, "a first attempt", || env.fake.send_calls() >= 1).await;
    server.stop();
    let cut = std::time::SystemTime::now();
    // The send gives up once its lease may lapse (each statement first tries for 20 s to reach
    // the database); its outcome waits for the database.
    eventually(Duration::from_secs(90), "the send given up", || {
        daemon.dispatcher.unwritten_count() >= 1
    })
    .await;
    // The outcome is kept in the state directory given (the test's folder), not wherever the
    // process runs.
    let kept = std::fs::read_dir(env.dir.path())
        .expect("test folder")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".unrecorded-"));
    assert!(kept, "an unrecorded-sends file in the test's folder");
    let attempts = env.fake.send_calls();
    // Twice the lease: a send still retrying would have made about 10 more attempts.
    tokio::time::sleep(Duration::from_secs(2 * LEASE as u64)).await;
    assert_eq!(
        env.fake.send_calls(),
        attempts,
        "no attempt after the claim could not be renewed"
    );
    // The last renewal was at most a third of a lease before the cut, its lease ends within a
    // lease and a second (rounded up) of it: no attempt may come later. (Counting an attempt
    // waits for the database for up to 20 s: an attempt checked against the lease before that
    // wait came 20 s after the cut.)
    let latest = cut + Duration::from_secs(LEASE as u64 + 1);
    let late: Vec<_> = env
        .fake
        .all_requests()
        .iter()
        .filter(|r| r.at > latest)
        .map(|r| r.at.duration_since(cut).unwrap_or_default())
        .collect();
    assert!(
        late.is_empty(),
        "attempts this long after the cut: {late:?}"
    );
    server.start_again();
    eventually(Duration::from_secs(30), "the row closed", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'interrupted' AND errmsg LIKE '%could not be renewed%'") == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(env.count("SELECT count(*) FROM sends"), 1);
}
