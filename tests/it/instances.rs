//! Several daemons on one database, each with its own `instance:`: every claim names its
//! instance and holds a lease the sending daemon renews; a daemon that dies with sends in
//! flight has them resolved by another once their lease lapsed (resent inside the
//! duplicate-check window), and no slot is lost or sent twice.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// The `claim_lease:` of these nodes, in seconds (the shortest allowed).
const LEASE: i64 = 3;

/// Schedules every 2 s whose bodies name their slot, with a duplicate-check window long
/// enough for a crashed send to be resent.
fn schedules() -> String {
    ["a", "b", "c"]
        .iter()
        .map(|name| every(name, "*/2 * * * * *", name, "duplicate_check_interval: 600"))
        .collect()
}

/// Writes the config of node `instance` beside the test's own (same app, same database).
fn node_config(env: &Env, instance: &str) -> PathBuf {
    let path = env.path(&format!("{instance}.yaml"));
    std::fs::write(
        &path,
        format!(
            "timezone: Asia/Shanghai\ninstance: {instance}\nclaim_lease: {LEASE}s\n{}schedules:\n{}",
            env.apps_yaml(),
            schedules()
        ),
    )
    .expect("write node config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sends_in_flight_has_them_resolved_by_the_other_after_its_lease() {
    let env = Env::new().await;
    let (config_a, config_b) = (node_config(&env, "node-a"), node_config(&env, "node-b"));
    let hold = env.fake.hold_sends();
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "both nodes started", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 2
    })
    .await;
    eventually(WAIT, "a send of node-a held by WeCom", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'pending' AND instance = 'node-a'")
            >= 1
            && env.fake.sends_waiting() >= 1
    })
    .await;
    // Held longer than two leases and a look for lapsed claims: node-a renews its claims, so
    // node-b takes none of them while node-a lives.
    tokio::time::sleep(Duration::from_secs(2 * LEASE as u64 + 5)).await;
    assert!(
        !b.logs().contains("taking it over"),
        "node-b took over a claim node-a was renewing:\n{}",
        b.logs()
    );
    a.signal(SIGKILL);
    a.wait_exit(WAIT).await;
    let victims = env.column(
        "SELECT id || ' ' || lease_until FROM sends WHERE status = 'pending' AND instance = 'node-a' ORDER BY id",
    );
    assert!(!victims.is_empty(), "node-a died with sends in flight");
    hold.release();
    b.eventually(WAIT, || {
        match env.count("SELECT count(*) FROM sends WHERE status = 'pending'") {
            0 => Ok(()),
            n => Err(format!("{n} sends still pending")),
        }
    })
    .await;
    // Two more slots of node-b alone, then a clean stop.
    let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "node-b fires on", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= sent + 6
    })
    .await;
    b.stop().await;

    for victim in &victims {
        let (id, lease_until) = victim.split_once(' ').expect("id and lease");
        let row = env.column(&format!(
            "SELECT status || ' ' || instance || ' ' || (finished_at >= '{lease_until}') FROM sends WHERE id = {id}"
        ));
        assert_eq!(
            row,
            ["sent node-b 1"],
            "row #{id} (lease until {lease_until}) was resolved by node-b, after the lease: {}",
            b.logs()
        );
    }
    assert!(b.logs().contains("taking it over"));
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
        env.column("SELECT schedule || ' ' || scheduled_at || ' ' || status FROM sends WHERE status <> 'sent'")
    );
    let delivered = env.deliveries();
    assert!(
        delivered.values().all(|n| *n == 1),
        "a body was delivered twice: {delivered:?}"
    );
    for payload in env.column("SELECT payload FROM sends") {
        assert!(
            delivered.contains_key(&payload),
            "sent but not delivered: {payload}"
        );
    }
    assert_eq!(
        env.column("SELECT DISTINCT instance FROM events WHERE kind = 'started' ORDER BY instance"),
        ["node-a", "node-b"],
        "events name their instance"
    );
}
