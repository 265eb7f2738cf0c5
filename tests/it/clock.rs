//! Steps of the wall clock, back and forward, during short waits and during a long alarm wait:
//! the real binary under libfaketime (the monotonic clock stays real). No slot the clock passes
//! ends without a row, and none is fired twice.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::support::*;

fn db_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn assert_delivered_at_most_once(env: &Env) {
    let count = env.deliveries();
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}

async fn wait_first_row(env: &Env, daemon: &Daemon) {
    daemon
        .eventually(WAIT, || match env.count("SELECT count(*) FROM sends") {
            0 => Err("no first send".into()),
            _ => Ok(()),
        })
        .await;
}

fn spawn_on(env: &Env, clock: &FakeClock) -> Daemon {
    env.spawn_daemon_with(&[], |command| clock.apply(command))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_then_restored_fires_every_slot_of_real_time_once() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "*/5 * * * * *", "tick", "catch_up: 1m"));
    let clock = FakeClock::new(&env);
    let mut daemon = spawn_on(&env, &clock);
    wait_first_row(&env, &daemon).await;

    // Back two minutes (the slots of that stretch were fired already), and 20 s later
    // restored: the slots of those 20 s are due at once.
    clock.set_offset(-120);
    tokio::time::sleep(Duration::from_secs(20)).await;
    clock.set_offset(0);
    let restored = Utc::now();
    daemon
        .eventually(WAIT, || {
            let latest = env.slots("tick").last().copied();
            match latest {
                Some(slot) if slot + chrono::Duration::seconds(5) > restored => Ok(()),
                _ => Err(format!(
                    "no row for the slots up to {} (the clock was restored then); rows: {:?}",
                    db_time(restored),
                    env.slots("tick")
                )),
            }
        })
        .await;
    daemon
        .eventually(WAIT, || {
            match env.count("SELECT count(*) FROM events WHERE kind = 'clock_step'") {
                2 => Ok(()),
                n => Err(format!("{n} clock_step events")),
            }
        })
        .await;
    daemon.stop().await;

    env.assert_contiguous("tick", 5);
    assert_delivered_at_most_once(&env);
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
        0,
        "every slot sent, late if need be: {:?}",
        env.column("SELECT scheduled_at || ' ' || status FROM sends")
    );
    let steps = env.column("SELECT detail FROM events WHERE kind = 'clock_step' ORDER BY id");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[0].contains("back by 1"), "{steps:?}");
    assert!(steps[1].contains("forward by 1"), "{steps:?}");
    assert!(
        daemon.logs().contains("stepped back by"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_forward_records_the_slots_it_jumped_and_catches_up_the_latest() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "*/5 * * * * *", "tick", "catch_up: 1m"));
    let clock = FakeClock::new(&env);
    let mut daemon = spawn_on(&env, &clock);
    wait_first_row(&env, &daemon).await;
    clock.set_offset(120);
    let stepped = Utc::now() + chrono::Duration::seconds(120);
    daemon
        .eventually(WAIT, || {
            let n = env.count(&format!(
                "SELECT count(*) FROM sends WHERE trigger = 'cron' AND status = 'sent' AND scheduled_at > '{}'",
                db_time(stepped)
            ));
            if n >= 1 {
                Ok(())
            } else {
                Err(format!(
                    "no slot fired after the step; rows: {:?}",
                    env.column("SELECT scheduled_at || ' ' || trigger || ' ' || status FROM sends")
                ))
            }
        })
        .await;
    daemon.stop().await;

    env.assert_contiguous("tick", 5);
    assert_delivered_at_most_once(&env);
    // The two minutes jumped over: more than 60 s late is missed, the latest one inside the
    // catch-up window is sent once, late.
    assert!(env.count("SELECT count(*) FROM sends WHERE status = 'missed'") >= 10);
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE trigger = 'catch_up' AND status = 'sent'"),
        1,
        "{:?}",
        env.column("SELECT scheduled_at || ' ' || trigger || ' ' || status FROM sends")
    );
    let steps = env.column("SELECT detail FROM events WHERE kind = 'clock_step'");
    assert!(
        steps.len() == 1 && steps[0].contains("forward by 1"),
        "{steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_during_a_long_alarm_wait_still_fires_the_slot_once_on_the_restored_clock() {
    let env = Env::new().await;
    // 75 s away: the binary keeps waits over a minute with a tokio-cron-scheduler alarm.
    let slot = DateTime::from_timestamp(Utc::now().timestamp() + 75, 0).expect("slot");
    env.write_schedules(&format!(
        "  - {{ name: once, cron: '{}', to: {{ users: [u] }}, text: {{ content: 'once' }} }}\n",
        cron_at(slot)
    ));
    let clock = FakeClock::new(&env);
    let mut daemon = spawn_on(&env, &clock);
    daemon.wait_log("schedules armed", WAIT).await;

    // Back two minutes during the alarm wait; restored 3 s after the slot's real time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    clock.set_offset(-120);
    sleep_until(slot + chrono::Duration::seconds(3)).await;
    clock.set_offset(0);
    daemon
        .eventually(WAIT, || {
            match env.column("SELECT status FROM sends WHERE schedule = 'once'")[..] {
                [ref status] if status == "sent" => Ok(()),
                ref rows => Err(format!(
                    "the slot of {} is not sent: {rows:?}",
                    db_time(slot)
                )),
            }
        })
        .await;
    daemon.stop().await;
    assert_eq!(env.texts(), ["once"], "sent once, on the restored clock");
}
