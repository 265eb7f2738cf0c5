//! Several daemons on one database, each with its own `instance:`: every claim names its
//! instance and holds a lease the sending daemon renews; a daemon that dies with sends in
//! flight has them resolved by another once their lease lapsed (resent inside the
//! duplicate-check window), and no slot is lost or sent twice.

use std::path::PathBuf;
use std::time::Duration;

use wecom_notify::retry::RetryPolicy;

use crate::support::*;

/// The `claim_lease:` of these nodes, in seconds (the shortest allowed).
pub(crate) const LEASE: i64 = 3;

/// Schedules every 2 s whose bodies name their slot, with a duplicate-check window long
/// enough for a crashed send to be resent.
///
/// Each to a member of its own: WeCom takes 30 messages a minute per member, and every node
/// holds back what would exceed that (three schedules to one member every 2 s would be held
/// back within a minute, and a stop would wait for them).
pub(crate) fn schedules() -> String {
    ["a", "b", "c"]
        .iter()
        .map(|name| {
            every(name, "*/2 * * * * *", name, "duplicate_check_interval: 600")
                .replace("users: [u]", &format!("users: [u{name}]"))
        })
        .collect()
}

/// Writes the config of node `instance`: the same app, schedules and database as the others.
pub(crate) fn node_config(env: &Env, instance: &str) -> PathBuf {
    node_config_with(env, instance, &schedules())
}

/// [`node_config`] with these `schedules:` items.
pub(crate) fn node_config_with(env: &Env, instance: &str, schedules: &str) -> PathBuf {
    let path = env.path(&format!("{instance}.yaml"));
    std::fs::write(
        &path,
        format!(
            "timezone: Asia/Shanghai\ninstance: {instance}\nclaim_lease: {LEASE}s\n{}schedules:\n{}",
            env.apps_yaml(),
            schedules
        ),
    )
    .expect("write node config");
    path
}

on_both_backends! {
    async fn a_node_killed_with_sends_in_flight_has_them_resolved_by_the_other_after_its_lease(env: Env) {
        let (config_a, config_b) = (node_config(&env, "node-a"), node_config(&env, "node-b"));
        let hold = env.fake.hold_sends();
        let a = env.spawn_daemon_from(&config_a, &[], |_| {});
        let b = env.spawn_daemon_from(&config_b, &[], |_| {});
        eventually(WAIT, "both nodes started", || {
            env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 2
        })
        .await;
        eventually(WAIT, "a send held by WeCom", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'pending'") >= 1
                && env.fake.sends_waiting() >= 1
        })
        .await;
        // The node whose claim WeCom holds first dies; which one won the slot is the race's.
        let id = env.count("SELECT min(id) FROM sends WHERE status = 'pending'");
        let victim = env.column(&format!("SELECT instance FROM sends WHERE id = {id}"));
        let (mut dead, mut survivor, dead_name, survivor_name) = if victim == ["node-a"] {
            (a, b, "node-a", "node-b")
        } else {
            (b, a, "node-b", "node-a")
        };
        // Held until the victim renewed its claim past two leases and the survivor has looked
        // for lapsed claims since the first lease would have lapsed: the survivor takes none of
        // them while the victim lives.
        let at = |sql: &str| {
            env.column(sql)
                .first()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        let first_lease =
            at(&format!("SELECT lease_until FROM sends WHERE id = {id}")).expect("a lease");
        let lapsed = first_lease + chrono::Duration::seconds(LEASE);
        eventually(WAIT, "the victim renewing past two leases, the survivor looking since", || {
            let renewed = at(&format!("SELECT lease_until FROM sends WHERE id = {id}"));
            let looked = at(&format!(
                "SELECT max(alive_at) FROM heartbeats WHERE instance = '{survivor_name}'"
            ));
            renewed.is_some_and(|r| r >= lapsed + chrono::Duration::seconds(LEASE))
                && looked.is_some_and(|l| l > lapsed + chrono::Duration::seconds(5))
        })
        .await;
        assert!(
            !survivor.logs().contains("taking it over"),
            "{survivor_name} took over a claim {dead_name} was renewing:\n{}",
            survivor.logs()
        );
        dead.signal(SIGKILL);
        dead.wait_exit(WAIT).await;
        let victims = env.column(&format!(
            "SELECT id || ' ' || lease_until FROM sends WHERE status = 'pending' AND instance = '{dead_name}' ORDER BY id"
        ));
        assert!(!victims.is_empty(), "{dead_name} died with sends in flight");
        hold.release();
        survivor
            .eventually(WAIT, || {
                match env.count("SELECT count(*) FROM sends WHERE status = 'pending'") {
                    0 => Ok(()),
                    n => Err(format!("{n} sends still pending")),
                }
            })
            .await;
        // Two more slots of the survivor alone, then a clean stop.
        let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
        eventually(WAIT, "the survivor fires on", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= sent + 6
        })
        .await;
        survivor.stop().await;

        for victim in &victims {
            let (id, lease_until) = victim.split_once(' ').expect("id and lease");
            let row = env.column(&format!(
                "SELECT status || ' ' || instance || ' ' || CASE WHEN finished_at >= '{lease_until}' THEN 'after' ELSE 'before' END
                 FROM sends WHERE id = {id}"
            ));
            assert_eq!(
                row,
                [format!("sent {survivor_name} after")],
                "row #{id} (lease until {lease_until}) was resolved by {survivor_name}, after the lease: {}",
                survivor.logs()
            );
        }
        assert!(survivor.logs().contains("taking it over"));
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
        env.assert_sent_rows_delivered_once();
        assert_eq!(
            env.column("SELECT DISTINCT instance FROM events WHERE kind = 'started' ORDER BY instance"),
            ["node-a", "node-b"],
            "events name their instance"
        );
    }
}

/// A daemon that cannot renew its claim (the database refuses its writes) stops sending the
/// claimed work before the lease lapses: it never races a daemon that takes the row over. The
/// row says why once the database takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_lease_cannot_be_renewed_is_not_attempted_again() {
    let env = Env::new().await;
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
    let policy = RetryPolicy {
        max_attempts: 1000,
        max_elapsed: Duration::from_secs(120),
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
        ..fast_policy()
    };
    let daemon = env.start_in_process(policy, Duration::from_millis(200));
    eventually(WAIT, "a first attempt", || env.fake.send_calls() >= 1).await;
    daemon.refuse_writes(true).await;
    // The send gives up once its lease may lapse; its outcome waits for the database.
    eventually(WAIT, "the send given up", || {
        daemon.dispatcher.unwritten_count() >= 1
    })
    .await;
    let attempts = env.fake.send_calls();
    // Twice the lease: a send still retrying would have made about 10 more attempts.
    tokio::time::sleep(Duration::from_secs(2 * LEASE as u64)).await;
    assert_eq!(
        env.fake.send_calls(),
        attempts,
        "no attempt after the claim could not be renewed"
    );
    daemon.refuse_writes(false).await;
    eventually(WAIT, "the row closed", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'interrupted' AND errmsg LIKE '%could not be renewed%'") == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(env.count("SELECT count(*) FROM sends"), 1);
}
