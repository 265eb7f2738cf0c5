//! A crash in the same second as a slot: the real binary, a few hundred schedules on one slot,
//! kill -9 a few milliseconds after it, and a restart (at once, or after systemd's RestartSec).
//! Every slot that fell due before the crash ends with exactly one row and at most one
//! delivery.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::support::*;

const SCHEDULES: usize = 300;
/// Every schedule fires every this many seconds.
const PERIOD: i64 = 5;

/// The next slot of `*/5 * * * * *` at least 1.5 s away (time to be ready for it).
fn next_slot() -> DateTime<Utc> {
    let soon = Utc::now() + chrono::Duration::milliseconds(1500);
    let seconds = soon.timestamp().div_euclid(PERIOD) * PERIOD + PERIOD;
    DateTime::from_timestamp(seconds, 0).expect("a slot")
}

on_both_backends! {
    async fn a_crash_in_the_same_second_as_a_slot_loses_no_schedules_slot(env: Env) {
        // One member each: 12 messages a minute stays within WeCom's 30 per member, so the
        // limiter holds nothing back.
        let schedules: String = (0..SCHEDULES)
            .map(|i| {
                format!(
                    "  - {{ name: s{i:03}, cron: '*/5 * * * * *', catch_up: 1m, to: {{ users: [u{i:03}] }}, text: {{ content: 's{i:03} {{{{ slot:%H:%M:%S }}}}' }} }}\n"
                )
            })
            .collect();
        env.write_schedules(&schedules);

        // Kill at several offsets after a slot; restart at once, except the last time, which
        // waits as systemd's RestartSec=5s would, so that a slot falls while nothing runs.
        let mut daemon = env.spawn_daemon(&[]);
        daemon.wait_log("schedules armed", WAIT).await;
        let mut killed_after = Vec::new();
        for (offset_ms, restart_after_ms) in [(4, 0), (15, 0), (40, 0), (60, 5_500)] {
            let slot = next_slot();
            sleep_until(slot + chrono::Duration::milliseconds(offset_ms)).await;
            daemon.signal(SIGKILL);
            daemon.wait_exit(WAIT).await;
            let rows = env.count(&format!(
                "SELECT count(*) FROM sends WHERE scheduled_at = '{}'",
                slot.format("%Y-%m-%dT%H:%M:%SZ")
            ));
            killed_after.push((slot, offset_ms, rows));
            tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
            daemon = env.spawn_daemon(&[]);
            daemon.wait_log("schedules armed", WAIT).await;
        }
        // Let the last restart resolve what the crash left in flight, then stop cleanly.
        daemon
            .eventually(WAIT, || {
                match env.count("SELECT count(*) FROM sends WHERE status = 'pending'") {
                    0 => Ok(()),
                    n => Err(format!("{n} sends still pending")),
                }
            })
            .await;
        daemon.stop().await;

        let (last_slot, _, _) = killed_after[killed_after.len() - 1];
        for i in 0..SCHEDULES {
            let name = format!("s{i:03}");
            let slots = env.slots(&name);
            env.assert_contiguous(&name, PERIOD);
            for (slot, offset_ms, rows_at_kill) in &killed_after {
                assert!(
                    slots.contains(slot),
                    "{name} has no row for the slot of {slot}, killed {offset_ms} ms after it (then {rows_at_kill} of {SCHEDULES} schedules had a row); its rows: {slots:?}"
                );
            }
            assert!(slots.iter().any(|s| *s > last_slot), "{name} fired on");
        }
        env.assert_sent_rows_delivered_once();
        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE status NOT IN ('sent', 'missed')"),
            0,
            "{:?}",
            env.column("SELECT schedule || ' ' || scheduled_at || ' ' || status FROM sends WHERE status NOT IN ('sent', 'missed')")
        );
        // The slot that fell while nothing ran was caught up once (or missed) for every schedule.
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM sends WHERE scheduled_at = '{}'",
                (last_slot + chrono::Duration::seconds(PERIOD)).format("%Y-%m-%dT%H:%M:%SZ")
            )),
            SCHEDULES as i64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_daemons_heartbeat_under_a_reused_pid_still_gets_its_downtime_recorded() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut first = env.spawn_daemon(&[]);
    first.wait_log("schedules armed", WAIT).await;
    first.signal(SIGKILL);
    first.wait_exit(WAIT).await;
    // As after a reboot: the dead daemon's row names a pid that another process now has (this
    // test's own), and has not been rewritten for minutes.
    let now = Utc::now();
    let stamp = |at: DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    env.db()
        .execute(
            "UPDATE heartbeats SET pid = ?1, alive_at = ?2, fired_through = ?3",
            rusqlite::params![
                std::process::id(),
                stamp(now - chrono::Duration::minutes(5)),
                stamp(now - chrono::Duration::seconds(20)),
            ],
        )
        .expect("age the heartbeat");
    env.db().execute("DELETE FROM sends", []).expect("no rows");
    let mut second = env.spawn_daemon(&[]);
    second.wait_log("schedules armed", WAIT).await;
    second.stop().await;
    let missed = env.count("SELECT count(*) FROM sends WHERE status = 'missed'");
    assert!(
        missed >= 9,
        "the 20 s since the dead daemon's heartbeat are recorded missed, not taken for another daemon's: {missed} missed; rows: {:?}",
        env.column("SELECT scheduled_at || ' ' || status FROM sends")
    );
    env.assert_contiguous("tick", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_without_a_row_before_slots_with_rows_is_recorded_by_the_next_start() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "four sent slots", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 4
    })
    .await;
    daemon.signal(SIGKILL);
    daemon.wait_exit(WAIT).await;
    // A slot whose row could not be written (the heartbeat held back before it), followed by
    // slots whose rows were.
    let slots = env.column("SELECT scheduled_at FROM sends ORDER BY scheduled_at");
    let lost = slots[1].clone();
    env.db()
        .execute("DELETE FROM sends WHERE scheduled_at = ?1", [&lost])
        .expect("delete");
    env.db()
        .execute("UPDATE heartbeats SET fired_through = ?1", [&slots[0]])
        .expect("heartbeat");
    let mut restarted = env.spawn_daemon(&[]);
    restarted.wait_log("schedules armed", WAIT).await;
    restarted.stop().await;
    assert_eq!(
        env.column(&format!(
            "SELECT status FROM sends WHERE scheduled_at = '{lost}'"
        )),
        ["missed"],
        "{:?}",
        env.column("SELECT scheduled_at || ' ' || status FROM sends ORDER BY scheduled_at")
    );
    env.assert_contiguous("tick", 2);
}
