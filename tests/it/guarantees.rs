//! Delivery guarantees under faults: nothing missed silently, nothing sent twice. Crashes
//! (kill -9), downtime, a flaky WeCom, rate limits, token invalidation, a database refusing
//! writes, and broken configs sent to a running daemon.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::{SubsecRound, Utc};

use crate::support::*;

/// How many times the fake delivered each body.
/// Every even second from the first to the last slot of `schedule` has exactly one row.
/// Starts the daemon again and stops it once no row is pending any more.
async fn restart_until_no_send_is_pending(env: &Env) -> Daemon {
    let mut restarted = env.spawn_daemon(&[]);
    eventually(WAIT, "the crashed sends resolved", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'pending'") == 0
    })
    .await;
    restarted.stop().await;
    restarted
}

fn integrity(env: &Env) -> String {
    env.db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

on_both_backends! {
    async fn kill_9_during_a_send_then_restart_delivers_exactly_once(env: Env) {
        env.write_schedules(&every("tick", "*/2 * * * * *", "tick", ""));
        let (mut daemon, hold) = env.spawn_daemon_with_a_held_send().await;
        daemon.signal(SIGKILL);
        daemon.wait_exit(WAIT).await;
        // The request had reached WeCom: released now, it is delivered although its sender died.
        hold.release();
        let crashed = env.column("SELECT payload FROM sends WHERE status = 'pending'");
        assert!(!crashed.is_empty(), "the crash left the send pending");
        eventually(WAIT, "the held sends delivered", || {
            crashed.iter().all(|p| env.deliveries().contains_key(p))
        })
        .await;

        let restarted = restart_until_no_send_is_pending(&env).await;

        for payload in &crashed {
            assert_eq!(
                env.deliveries()[payload],
                1,
                "delivered exactly once: {payload}"
            );
            let resent = env
                .fake
                .all_requests()
                .iter()
                .filter(|r| &r.raw == payload && r.outcome == Outcome::Duplicate)
                .count();
            assert_eq!(
                resent, 1,
                "resent byte for byte and dropped by the duplicate check"
            );
        }
        for payload in &crashed {
            let row = env.column(&format!(
                "SELECT status || ' ' || attempts FROM sends WHERE payload = '{payload}'"
            ));
            assert_eq!(
                row,
                ["sent 2"],
                "the crashed row ends sent, both attempts counted"
            );
        }
        assert!(
            restarted.logs().contains("resending the stored body"),
            "{}",
            restarted.logs()
        );
        if !env.is_postgres() {
        assert_eq!(integrity(&env), "ok", "the WAL survived kill -9");
    }
    }
}

on_both_backends! {
    async fn a_crashed_send_past_its_duplicate_check_interval_is_not_resent(env: Env) {
        // Resends stop 10 s before the interval ends: with 11 s, after 1 s it is too late.
        env.write_schedules(&every(
            "tick",
            "*/2 * * * * *",
            "tick",
            "duplicate_check_interval: 11",
        ));
        let (mut daemon, hold) = env.spawn_daemon_with_a_held_send().await;
        daemon.signal(SIGKILL);
        daemon.wait_exit(WAIT).await;
        hold.release();
        let crashed = env.column("SELECT id FROM sends WHERE status = 'pending'");
        let payloads = env.column("SELECT payload FROM sends WHERE status = 'pending'");
        // Let the resend window close: that is the point of the test.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let restarted = restart_until_no_send_is_pending(&env).await;
        let ids = crashed.join(",");
        assert_eq!(
            env.column(&format!(
                "SELECT DISTINCT status FROM sends WHERE id IN ({ids})"
            )),
            ["interrupted"]
        );
        for payload in &payloads {
            assert_eq!(
                env.fake
                    .all_requests()
                    .iter()
                    .filter(|r| &r.raw == payload)
                    .count(),
                1,
                "nothing was resent: only the crashed attempt reached WeCom"
            );
        }
        assert!(
            restarted.logs().contains("cannot be resent safely"),
            "{}",
            restarted.logs()
        );
    }
}

/// Runs the daemon until a slot is sent, stops it for `down`, runs it again until a slot is
/// sent after the restart; returns the restart time.
async fn run_stop_run(env: &Env, down: Duration) -> chrono::DateTime<Utc> {
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "a first send", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 1
    })
    .await;
    daemon.stop().await;
    // The downtime itself: slots fall while nothing runs.
    tokio::time::sleep(down).await;
    let restart = Utc::now();
    let mut daemon = env.spawn_daemon(&[]);
    let before = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "a send after the restart", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") > before + 1
    })
    .await;
    daemon.stop().await;
    restart
}

on_both_backends! {
    async fn slots_missed_while_stopped_get_missed_rows(env: Env) {
        env.write_schedules(&every_two_seconds("tick", "tick"));
        let restart = run_stop_run(&env, Duration::from_secs(7)).await;
        env.assert_contiguous("tick", 2);
        let missed = env.column("SELECT scheduled_at FROM sends WHERE status = 'missed'");
        assert!(
            missed.len() >= 3,
            "three slots fell in the downtime: {missed:?}"
        );
        let restart = wecom_notify::time::to_db(restart);
        assert!(
            missed.iter().all(|s| *s <= restart),
            "only slots before the restart are missed"
        );
        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE trigger = 'catch_up'"),
            0,
            "catch_up is off by default"
        );
        let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'") as usize;
        assert_eq!(
            env.fake.messages().len(),
            sent,
            "missed slots are recorded, not sent"
        );
    }
}

on_both_backends! {
    async fn with_catch_up_the_latest_missed_slot_is_sent_once_late(env: Env) {
        env.write_schedules(&every(
            "tick",
            "*/2 * * * * *",
            "tick",
            "duplicate_check_interval: 1, catch_up: 30s",
        ));
        run_stop_run(&env, Duration::from_secs(7)).await;
        env.assert_contiguous("tick", 2);
        let caught = env.column("SELECT scheduled_at FROM sends WHERE trigger = 'catch_up'");
        assert_eq!(caught.len(), 1, "{caught:?}");
        assert_eq!(
            env.column("SELECT status FROM sends WHERE trigger = 'catch_up'"),
            ["sent"]
        );
        let missed =
            env.column("SELECT scheduled_at FROM sends WHERE status = 'missed' ORDER BY scheduled_at");
        assert!(
            missed.len() >= 2,
            "the older missed slots stay missed: {missed:?}"
        );
        assert!(
            missed.iter().all(|m| caught[0] > *m),
            "the catch-up is the latest of the missed slots"
        );
        assert!(
            env.deliveries().values().all(|n| *n == 1),
            "each body delivered once"
        );
    }
}

on_both_backends! {
    async fn a_flaky_wecom_still_gets_every_slot_exactly_once(env: Env) {
        env.write_schedules(&every("tick", "* * * * * *", "tick", ""));
        // Some faults happen after WeCom delivered the message (the answer is lost): only the
        // duplicate check stands between those retries and a second delivery.
        env.fake.set_chaos(Chaos {
            busy_fraction: 0.25,
            drop_fraction: 0.1,
            bad_gateway_fraction: 0.1,
            lost_answer_fraction: 0.15,
        });
        let mut policy = fast_policy();
        policy.max_attempts = 15;
        let daemon = env.start_in_process(policy, Duration::from_secs(5));
        eventually(Duration::from_secs(40), "ten slots settled", || {
            env.count("SELECT count(*) FROM sends WHERE status <> 'pending'") >= 10
        })
        .await;
        daemon.stop().await;

        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE status = 'pending'"),
            0,
            "every row is final"
        );
        let statuses = env.column("SELECT DISTINCT status FROM sends");
        assert_eq!(statuses, ["sent"], "every slot was delivered");
        let rows = env.count("SELECT count(*) FROM sends") as usize;
        assert_eq!(env.deliveries().len(), rows, "one delivered body per slot");
        assert!(
            env.deliveries().values().all(|n| *n == 1),
            "nothing delivered twice"
        );
        env.assert_contiguous("tick", 1);
        let attempts = env.count("SELECT sum(attempts) FROM sends") as usize;
        assert!(
            attempts > rows,
            "faults were retried ({attempts} attempts for {rows} slots)"
        );
        assert_eq!(
            attempts,
            env.fake.send_calls(),
            "every attempt is counted in the rows"
        );
    }
}

on_both_backends! {
    async fn a_frequency_limit_pauses_every_send_of_the_app(env: Env) {
        env.write_schedules(&every("tick", "* * * * * *", "tick", ""));
        // Slots keep falling during the pause; they must wait for its end.
        let mut policy = fast_policy();
        policy.rate_limit_pause = Duration::from_secs(3);
        let pause = policy.rate_limit_pause;
        env.fake.script_send(Reply::Errcode(45009));
        let daemon = env.start_in_process(policy, Duration::from_secs(5));
        eventually(WAIT, "sends after the pause", || {
            env.fake.messages().len() >= 5
        })
        .await;
        daemon.stop().await;

        let requests = env.fake.all_requests();
        let limited = requests
            .iter()
            .find(|r| r.outcome == Outcome::Scripted)
            .expect("the 45009 answer");
        let during = requests
            .iter()
            .filter(|r| r.at > limited.at && r.at < limited.at + pause)
            .count();
        assert_eq!(
            during, 0,
            "no request of the app during the {pause:?} pause"
        );
        let after = requests
            .iter()
            .filter(|r| r.at >= limited.at + pause)
            .count();
        assert!(
            after >= 3,
            "the limited send and the slots held back by the pause went out after it"
        );
        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
            0
        );
        assert_eq!(
            env.count("SELECT max(attempts) FROM sends"),
            2,
            "the limited send succeeded on its second attempt"
        );
    }
}

on_both_backends! {
    async fn a_token_invalidated_mid_run_is_refreshed_once_and_nothing_is_lost(env: Env) {
        env.write_schedules(&every_two_seconds("tick", "tick"));
        let mut daemon = env.spawn_daemon(&[]);
        eventually(WAIT, "two sends", || env.fake.messages().len() >= 2).await;
        env.fake.invalidate_all_tokens();
        eventually(WAIT, "two more sends", || env.fake.messages().len() >= 4).await;
        daemon.stop().await;
        assert_eq!(env.fake.gettoken_calls(), 2, "one refresh");
        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
            0,
            "no message lost"
        );
        env.assert_contiguous("tick", 2);
        assert!(env.deliveries().values().all(|n| *n == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_writes_never_yields_a_false_sent_and_recovers() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "* * * * * *", "tick", ""));
    let daemon = env.start_in_process(fast_policy(), Duration::from_millis(200));
    daemon.wait_first_sent(&env).await;

    // Read-only, as on a remounted file system: every write fails with SQLITE_READONLY.
    daemon.refuse_writes(true).await;
    let rows_before = env.count("SELECT count(*) FROM sends");
    let delivered_before = env.fake.messages().len();
    eventually(WAIT, "sends during the outage", || {
        env.fake.messages().len() >= delivered_before + 3
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM sends"),
        rows_before,
        "no row could be written, and none claims a send"
    );
    let spill = daemon.wait_unrecorded(3).await;
    assert_eq!(
        spill
            .metadata()
            .expect("unrecorded file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Locked by another process as well, then writable again.
    let locker = env.db();
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    daemon.refuse_writes(false).await;
    let delivered = env.fake.messages().len();
    eventually(WAIT, "a send while the database is locked", || {
        env.fake.messages().len() > delivered
    })
    .await;
    locker.execute_batch("COMMIT").expect("unlock");
    eventually(WAIT, "the kept rows written", || {
        daemon.dispatcher.unwritten_count() == 0
    })
    .await;
    eventually(WAIT, "the unrecorded-sends file gone", || !spill.exists()).await;
    daemon.stop().await;

    let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'") as usize;
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
        0
    );
    assert_eq!(
        env.deliveries().len(),
        sent,
        "every delivered message has its row, and no row claims more"
    );
    env.assert_contiguous("tick", 1);
    assert_eq!(integrity(&env), "ok");
}

on_both_backends! {
    async fn no_broken_config_of_the_corpus_disturbs_a_running_daemon(env: Env) {
        env.write_schedules(&every_two_seconds("tick", "tick"));
        let good = read(&env.config_path());
        let mut daemon = env.spawn_daemon(&[]);
        eventually(WAIT, "a first send", || !env.fake.messages().is_empty()).await;
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/configs/invalid");
        let mut files: Vec<_> = std::fs::read_dir(corpus)
            .expect("corpus")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 25,
            "only {} broken configs in {corpus}",
            files.len()
        );
        for (n, file) in files.iter().enumerate() {
            std::fs::copy(file, env.config_path()).expect("copy");
            daemon.signal(SIGHUP);
            let what = format!("reload_failed for {}", file.display());
            eventually(WAIT, &what, || {
                env.count("SELECT count(*) FROM events WHERE kind = 'reload_failed'") as usize == n + 1
            })
            .await;
        }
        std::fs::write(env.config_path(), good).expect("restore");
        let before = env.fake.messages().len();
        eventually(WAIT, "firing goes on", || {
            env.fake.messages().len() >= before + 2
        })
        .await;
        daemon.stop().await;
        assert_eq!(
            env.count("SELECT count(*) FROM events WHERE kind = 'reloaded'"),
            0
        );
        env.assert_contiguous("tick", 2);
        assert_eq!(
            env.count("SELECT count(*) FROM sends WHERE status <> 'sent'"),
            0
        );
    }
}

/// Seeds a row as a crash would leave it: delivered to WeCom `age` ago, still `pending`, its
/// process gone. Returns its payload.
async fn crashed_row(env: &Env, age: Duration) -> String {
    env.cli_ok(&["send", "tick"]).await;
    let created = wecom_notify::time::to_db(Utc::now() - chrono::Duration::from_std(age).unwrap());
    env.db()
        .execute(
            "UPDATE sends SET status = 'pending', trigger = 'manual', created_at = ?1, finished_at = NULL, pid = 2147483646",
            [&created],
        )
        .expect("update");
    env.column("SELECT payload FROM sends").remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_send_never_retries_past_its_duplicate_check_window() {
    let env = Env::new().await;
    // Never fires on its own: only the crashed row is sent.
    env.write_schedules(&every(
        "tick",
        "0 0 1 1 *",
        "tick",
        "duplicate_check_interval: 30",
    ));
    // Written 19 s ago: still resent (the daemon keeps a 10 s margin before the 30 s end).
    let payload = crashed_row(&env, Duration::from_secs(19)).await;
    // The resend meets a frequency limit; its 12 s pause would carry a retry past the interval.
    env.fake.script_send(Reply::Errcode(45009));
    let mut policy = fast_policy();
    policy.rate_limit_pause = Duration::from_secs(12);
    let daemon = env.start_in_process(policy, Duration::from_secs(5));
    eventually(Duration::from_secs(40), "the resumed row settled", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'pending'") == 0
    })
    .await;
    daemon.stop().await;
    assert_eq!(env.deliveries()[&payload], 1, "delivered once");
    let requests = env
        .fake
        .all_requests()
        .iter()
        .filter(|r| r.raw == payload)
        .count();
    assert_eq!(
        requests, 2,
        "the original and the one resend that met 45009; no retry after the window"
    );
    assert_eq!(env.column("SELECT status FROM sends"), ["failed"]);
}

on_both_backends! {
    async fn the_retry_window_starts_when_a_timed_out_attempt_was_sent(env: Env) {
        env.write_schedules(&every(
            "tick",
            "0 0 1 1 *",
            "tick",
            "duplicate_check_interval: 20",
        ));
        let config = env.load();
        let mut policy = fast_policy();
        policy.rate_limit_pause = Duration::from_secs(6);
        policy.max_elapsed = Duration::from_secs(60);
        let dispatcher = env.dispatcher(policy);
        // The first attempt is delivered at once but its answer comes after the client's 15 s
        // timeout; the retry meets 45009 and a 6 s pause: 21 s after the delivery, too late.
        env.fake.set_send_delay(Duration::from_secs(16));
        let schedule = config.schedule("tick").expect("schedule").clone();
        let app = wecom_notify::channel::Channel::App(config.app("ops").expect("app").clone());
        let send = tokio::spawn(async move {
            let slot = Utc::now().trunc_subsecs(0);
            dispatcher
                .fire(
                    &schedule,
                    &app,
                    slot,
                    wecom_notify::store::history::Trigger::Manual,
                )
                .await
        });
        env.fake.wait_for_messages(1, WAIT).await;
        env.fake.set_send_delay(Duration::ZERO);
        env.fake.script_send(Reply::Errcode(45009));
        let fired = tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .expect("finishes")
            .expect("join")
            .expect("recorded");
        let wecom_notify::dispatch::Fired::Done(outcome) = fired else {
            panic!("not done")
        };
        assert_eq!(
            outcome.finish.status,
            wecom_notify::store::history::Status::Failed,
            "{outcome:?}"
        );
        assert_eq!(
            env.fake.messages().len(),
            1,
            "delivered once, never a second time after the interval"
        );
        assert_eq!(
            env.fake.send_calls(),
            2,
            "no attempt after the window closed"
        );
    }
}

on_both_backends! {
    async fn slots_that_fall_while_a_stop_waits_for_sends_are_not_lost(env: Env) {
        env.write_schedules(&every_two_seconds("tick", "tick"));
        let (mut daemon, hold) = env.spawn_daemon_with_a_held_send().await;
        daemon.signal(SIGTERM);
        daemon.wait_log("waiting for sends in flight", WAIT).await;
        // Slots keep falling while the stop waits for the held send.
        tokio::time::sleep(Duration::from_secs(5)).await;
        hold.release();
        assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
        let mut restarted = env.spawn_daemon(&[]);
        let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
        eventually(WAIT, "a send after the restart", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'sent'") > sent
        })
        .await;
        restarted.stop().await;
        env.assert_contiguous("tick", 2);
        assert!(
            env.count("SELECT count(*) FROM sends WHERE status = 'missed'") >= 2,
            "the slots of the wait are missed, not lost"
        );
    }
}

on_both_backends! {
    async fn a_stop_during_a_pause_records_the_sends_it_held_back_as_never_sent(env: Env) {
        env.write_schedules(&every("tick", "* * * * * *", "tick", ""));
        // The first send meets a frequency limit; the slots after it are claimed while the app
        // is paused, and wait. The stop gives up on them after a second.
        let mut policy = fast_policy();
        policy.rate_limit_pause = Duration::from_secs(10);
        env.fake.script_send(Reply::Errcode(45009));
        let options = wecom_notify::daemon::Options {
            stop_timeout: Duration::from_secs(1),
            scheduler_min_wait: Duration::ZERO,
            ..Default::default()
        };
        let daemon =
            env.start_in_process_with_options(env.load(), policy, Duration::from_secs(5), options);
        eventually(WAIT, "two slots claimed during the pause", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'pending'") >= 3
        })
        .await;
        daemon.stop().await;

        assert_eq!(
            env.fake.all_requests().len(),
            1,
            "no request but the limited one during the pause"
        );
        let rows = env.column(
            "SELECT status || ' ' || attempts || ' ' || coalesce(errmsg, '') FROM sends ORDER BY scheduled_at",
        );
        assert!(rows.len() >= 3, "{rows:?}");
        assert!(
            rows[0].starts_with("interrupted 1 the daemon stopped while it was being sent"),
            "the limited send had left: {rows:?}"
        );
        for row in &rows[1..] {
            assert!(
                row.starts_with("interrupted 0 not sent: the daemon stopped before its first attempt"),
                "a send held back by the pause is recorded as never sent, no attempt counted: {rows:?}"
            );
        }
    }
}
