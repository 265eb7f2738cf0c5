//! `run`: the real binary firing seconds-level schedules against the fake WeCom, reloading on
//! SIGHUP, stopping on SIGTERM, and talking sd_notify to a socket the test binds.

use std::collections::BTreeMap;

use chrono::Utc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slot_is_fired_once_at_the_instant_the_cron_names() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "three sent slots", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 3
    })
    .await;
    daemon.stop().await;

    let slots = env.slots("tick");
    assert!(slots.len() >= 3);
    for pair in slots.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            2,
            "consecutive slots, none skipped or doubled: {slots:?}"
        );
    }
    assert!(
        slots.iter().all(|s| s.timestamp() % 2 == 0),
        "scheduled_at is the cron's instant: {slots:?}"
    );
    // After a clean stop every row is final: no send is left pending.
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE trigger = 'cron' AND status <> 'sent'"),
        0
    );
    // One message per slot, and the body names that very slot.
    let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'") as usize;
    assert_eq!(env.fake.send_calls(), sent);
    let payloads = env.column("SELECT payload FROM sends WHERE status = 'sent' ORDER BY id");
    let raws: Vec<String> = env.fake.messages().iter().map(|m| m.raw.clone()).collect();
    assert_eq!(payloads, raws);
    assert_eq!(
        env.column("SELECT kind FROM events ORDER BY id"),
        ["started", "stopped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_send_each_slot_once() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut first = env.spawn_daemon(&[]);
    let mut second = env.spawn_daemon(&[]);
    // Four slots while both are armed (a start slowed by a loaded machine must not leave one
    // daemon firing alone).
    eventually(WAIT, "both daemons started", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 2
    })
    .await;
    let before = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "four sent slots", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= before + 4
    })
    .await;
    first.stop().await;
    second.stop().await;

    let rows = env.count("SELECT count(*) FROM sends") as usize;
    let distinct = env.count("SELECT count(DISTINCT scheduled_at) FROM sends") as usize;
    assert_eq!(rows, distinct, "one row per slot");
    assert_eq!(
        env.fake.send_calls(),
        rows,
        "one request per slot: {:?}; rows: {:?}",
        env.texts(),
        env.column("SELECT scheduled_at || ' ' || status || ' ' || pid FROM sends ORDER BY id")
    );
    let mut per_text: BTreeMap<String, usize> = BTreeMap::new();
    for text in env.texts() {
        *per_text.entry(text).or_default() += 1;
    }
    assert!(
        per_text.values().all(|n| *n == 1),
        "one message per slot: {per_text:?}"
    );
    // Both daemons were really armed: each logged the slot it lost to the other at debug level.
    let (first, second) = (first.logs(), second.logs());
    let lost = first.matches("slot already claimed").count()
        + second.matches("slot already claimed").count();
    assert!(
        lost >= 1,
        "the second daemon offered the same slots; first log:\n{first}\nsecond log:\n{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_send_does_not_delay_the_next_slot() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let hold = env.fake.hold_sends();
    let mut daemon = env.spawn_daemon(&[]);
    // Two slots of one schedule in flight at once: the second was not held back by the first.
    eventually(WAIT, "two sends held at once", || {
        env.fake.sends_waiting() >= 2
    })
    .await;
    hold.release();
    eventually(WAIT, "the held sends finish", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 2
    })
    .await;
    daemon.stop().await;
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status = 'pending'"),
        0
    );
    env.assert_contiguous("tick", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_changes_schedules() {
    let env = Env::new().await;
    // `quiet` has no slot during the test: the reload takes it over as it was read.
    let quiet = every("quiet", "0 0 3 1 1 *", "quiet", "");
    let before = [
        every_two_seconds("keep", "keep"),
        every_two_seconds("drop", "drop"),
        every_two_seconds("change", "old"),
        quiet.clone(),
    ]
    .concat();
    env.write_schedules(&before);
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "all three fire", || {
        let t = env.texts();
        ["keep", "drop", "old"]
            .iter()
            .all(|p| t.iter().any(|x| x.starts_with(p)))
    })
    .await;
    // The daemon runs without transparent huge pages (see `daemon::memory`); kernels before
    // 6.x do not show the flag. None was faulted before it was set either: where the kernel
    // grants them (`madvise` or `always`), mimalloc's first arena had one.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", daemon.pid())).unwrap();
    let huge = rollup.lines().find(|l| l.starts_with("AnonHugePages:"));
    assert_eq!(
        huge.and_then(|l| l.split_whitespace().nth(1)),
        Some("0"),
        "{rollup}"
    );

    let after = [
        every_two_seconds("keep", "keep"),
        every_two_seconds("change", "new"),
        every_two_seconds("add", "add"),
        quiet,
    ]
    .concat();
    env.write_schedules(&after);
    daemon.signal(SIGHUP);
    eventually(WAIT, "the reload event", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'reloaded'") == 1
    })
    .await;
    let reloaded_at = Utc::now();
    // After the reload (and a slot of grace for a send already in flight), exactly the new set.
    let grace = reloaded_at + chrono::Duration::seconds(2);
    let late = |schedule: &str| {
        env.slots(schedule)
            .into_iter()
            .filter(|s| *s > grace)
            .count()
    };
    eventually(
        WAIT,
        "added, changed and kept schedules fire twice after the reload",
        || late("add") >= 2 && late("change") >= 2 && late("keep") >= 2,
    )
    .await;
    daemon.stop().await;

    assert_eq!(late("drop"), 0, "a removed schedule stops");
    let old_late = env
        .fake
        .messages()
        .iter()
        .filter(|m| m.at > std::time::SystemTime::from(grace) && m.raw.contains("old "))
        .count();
    assert_eq!(old_late, 0, "a changed schedule sends its new text");
    // An unchanged schedule keeps its rhythm.
    env.assert_contiguous("keep", 2);
    assert_eq!(
        env.column("SELECT detail FROM events WHERE kind = 'reloaded'"),
        ["added add; removed drop; changed change; 2 unchanged"]
    );
    let digests = env.column(
        "SELECT config_digest FROM events WHERE kind IN ('started', 'reloaded') ORDER BY id",
    );
    assert_ne!(digests[0], digests[1], "events name the config in force");
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "an app whose credentials did not change keeps its token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_old_config_running() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "a first send", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 1
    })
    .await;

    env.write_schedules("  - name: tick\n    cron: '*/2 * * * * *'\n    to: { users: [u] }\n    text: { content: x }\n    colour: blue\n");
    daemon.signal(SIGHUP);
    eventually(WAIT, "reload_failed", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'reload_failed'") == 1
    })
    .await;
    let failed_at = env.count("SELECT count(*) FROM sends");
    eventually(WAIT, "two more sends", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= failed_at + 2
    })
    .await;
    daemon.stop().await;

    let detail = env
        .column("SELECT detail FROM events WHERE kind = 'reload_failed'")
        .join("");
    assert!(
        detail.contains("schedule \"tick\"") && detail.contains("colour"),
        "the reason names schedule and field: {detail}"
    );
    assert!(
        daemon.logs().contains("reload rejected"),
        "{}",
        daemon.logs()
    );
    // Firing went on untouched.
    env.assert_contiguous("tick", 2);
    assert!(
        env.texts().iter().all(|t| t.starts_with("tick")),
        "the old text is still sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_send_in_flight_finish() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let (mut daemon, hold) = env.spawn_daemon_with_a_held_send().await;
    daemon.signal(SIGTERM);
    daemon.wait_log("waiting for sends in flight", WAIT).await;
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "exited with a send in flight"
    );
    hold.release();
    let status = daemon.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.logs());
    assert_eq!(
        env.column("SELECT status FROM sends"),
        ["sent"],
        "the send finished and was recorded; nothing new fired"
    );
    assert_eq!(env.fake.messages().len(), 1);
    assert_eq!(
        env.column("SELECT detail FROM events WHERE kind = 'stopped'"),
        ["clean"]
    );
}

/// sd_notify datagrams from the daemon, on a socket the test binds. A task reads the socket
/// all the time, as systemd does: the daemon's sends block when the socket's queue is full.
struct Notifications {
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    received: Vec<String>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let socket = tokio::net::UnixDatagram::bind(path).expect("bind notify socket");
        let (sender, arrived) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let message = String::from_utf8_lossy(&buf[..n]).to_string();
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        Notifications {
            arrived,
            received: Vec::new(),
        }
    }

    /// The next datagram, failing the test when none comes in time.
    async fn next(&mut self) -> String {
        let message = tokio::time::timeout(WAIT, self.arrived.recv())
            .await
            .unwrap_or_else(|_| panic!("no datagram in time; so far: {:?}", self.received))
            .expect("the socket reader ended");
        self.received.push(message.clone());
        message
    }

    /// Reads datagrams until one contains `needle`, and returns it.
    async fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let message = self.next().await;
            if message.contains(needle) {
                return message;
            }
        }
    }
}

/// The real binary with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set, as systemd starts it.
fn spawn_notifying(env: &Env, socket: &std::path::Path, watchdog_usec: &str) -> Daemon {
    // WATCHDOG_PID must be the daemon's own pid: let the shell exec into it.
    let command = format!(
        "WATCHDOG_PID=$$ exec '{}' --config '{}' --db '{}' run",
        binary(),
        env.config_path().display(),
        env.db_path().display()
    );
    let log = env.path("notify-daemon.log");
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec)
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    Daemon { child, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_reloading_stopping_and_watchdog() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let socket = env.path("notify.sock");
    let mut notes = Notifications::bind(&socket);
    let mut daemon = spawn_notifying(&env, &socket, "400000");

    let ready = notes.next().await;
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=1 schedules armed, next: tick at"),
        "{ready}"
    );

    daemon.signal(SIGHUP);
    let reloading = notes.wait_for("RELOADING=1").await;
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .expect("a number");
    assert!(usec > 0);
    notes.wait_for("READY=1").await;
    // The watchdog is still fed after the reload.
    notes.wait_for("WATCHDOG=1").await;

    daemon.signal(SIGTERM);
    notes.wait_for("STOPPING=1").await;
    assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
}

/// Makes `path` a named pipe: each read of it waits until [`feed`] writes to it.
/// How many of this process's threads named `reload` are in the openat system call (blocked
/// opening a named pipe nobody writes).
fn reload_threads_opening() -> usize {
    let openat = libc::SYS_openat.to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            let path = task.path();
            let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap_or_default();
            read("comm").trim() == "reload"
                && read("syscall").split_whitespace().next() == Some(openat.as_str())
        })
        .count()
}

/// Writes `text` to the named pipe once a reader opens it (on a thread: opening blocks).
fn feed(path: std::path::PathBuf, text: String) {
    std::thread::spawn(move || std::fs::write(path, text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_for_its_file_keeps_firing_feeding_the_watchdog_and_stopping() {
    let env = Env::new().await;
    // The config file is a named pipe, so the test decides how long each reload reads it.
    let config = |schedules: &str| {
        format!(
            "timezone: Asia/Shanghai\n{}schedules:\n{schedules}",
            env.apps_yaml()
        )
    };
    let tick = every_two_seconds("tick", "tick");
    let tock = every_two_seconds("tock", "tock");
    let tack = every_two_seconds("tack", "tack");
    make_fifo(&env.config_path());
    feed(env.config_path(), config(&tick));
    let socket = env.path("notify.sock");
    let mut notes = Notifications::bind(&socket);
    let mut daemon = spawn_notifying(&env, &socket, "200000");
    notes.wait_for("READY=1").await;

    // A reload that cannot read its file yet, and a second SIGHUP meanwhile.
    daemon.signal(SIGHUP);
    notes.wait_for("RELOADING=1").await;
    daemon.signal(SIGHUP);
    let sent = env.fake.send_calls();
    for _ in 0..3 {
        let message = notes.next().await;
        assert!(
            message.contains("WATCHDOG=1"),
            "only watchdog pings while the reload waits: {message}"
        );
    }
    eventually(WAIT, "a send while the reload waits", || {
        env.fake.send_calls() > sent
    })
    .await;

    // The file arrives: the reload finishes, and the second SIGHUP reads the file once more.
    feed(env.config_path(), config(&format!("{tick}{tock}")));
    notes.wait_for("READY=1").await;
    notes.wait_for("RELOADING=1").await;
    feed(env.config_path(), config(&format!("{tick}{tack}")));
    notes.wait_for("READY=1").await;
    assert_eq!(
        env.column("select detail from events where kind = 'reloaded' order by id"),
        [
            "added tock; 1 unchanged",
            "added tack; removed tock; 1 unchanged"
        ]
    );
    eventually(WAIT, "a message from the schedule added last", || {
        env.texts().iter().any(|t| t.starts_with("tack"))
    })
    .await;

    // A stop during a reload that never gets its file is not held up by it.
    daemon.signal(SIGHUP);
    notes.wait_for("RELOADING=1").await;
    daemon.signal(SIGTERM);
    notes.wait_for("STOPPING=1").await;
    assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
    assert_eq!(
        env.column("select kind from events order by id desc limit 1"),
        ["stopped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once_and_records_the_send_as_interrupted() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let (mut daemon, _hold) = env.spawn_daemon_with_a_held_send().await;
    daemon.signal(SIGTERM);
    daemon.wait_log("waiting for sends in flight", WAIT).await;
    daemon.signal(SIGTERM);
    assert_eq!(
        daemon.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        daemon.logs()
    );
    assert_eq!(env.column("SELECT status FROM sends"), ["interrupted"]);
    assert_eq!(
        env.column("SELECT detail FROM events WHERE kind = 'stopped'"),
        ["second stop request, 1 send(s) interrupted"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_kept_by_tokio_cron_scheduler_alarms_fire_on_time() {
    let env = Env::new().await;
    // Slots 5 s apart: each wait is a 3 s tokio-cron-scheduler alarm, then a precise sleep.
    env.write_schedules(
        &[
            every("a", "*/5 * * * * *", "a", ""),
            every("b", "*/5 * * * * *", "b", ""),
        ]
        .concat(),
    );
    let daemon = env.start_in_process(fast_policy(), std::time::Duration::from_secs(5));
    eventually(WAIT, "three slots of each", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 6
    })
    .await;
    daemon.stop().await;
    for schedule in ["a", "b"] {
        let slots = env.slots(schedule);
        assert!(
            slots.len() >= 3 && slots.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 5),
            "{schedule}: {slots:?}"
        );
        assert!(slots.iter().all(|s| s.timestamp() % 5 == 0));
    }
    // Never before the slot: the alarm only wakes the timer ahead of time.
    for message in env.fake.messages() {
        let slot = env.column(&format!(
            "SELECT scheduled_at FROM sends WHERE payload = '{}'",
            message.raw.replace('\'', "''")
        ));
        let slot = wecom_notify::time::from_db(&slot[0]).expect("slot");
        assert!(
            chrono::DateTime::<Utc>::from(message.at) >= slot,
            "sent before its slot {slot}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_armed_on_reload_before_the_one_waited_for_fires_and_a_removed_one_does_not() {
    // One timer task waits for the earliest deadline of all schedules: here a yearly slot, a
    // long tokio-cron-scheduler alarm. A schedule added by a reload, due long before it, must
    // wake that wait; once removed, its deadline must not fire.
    let env = Env::new().await;
    let yearly = every("yearly", "0 0 0 1 1 *", "yearly", "");
    env.write_schedules(&yearly);
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "the daemon is up", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 1
    })
    .await;
    env.write_schedules(&[yearly.clone(), every_two_seconds("soon", "soon")].concat());
    daemon.signal(SIGHUP);
    eventually(WAIT, "the added schedule fires twice", || {
        env.slots("soon").len() >= 2
    })
    .await;
    // The same reload adds a witness on the same rhythm: its slots show time passing, so the
    // test waits for them rather than for a fixed time.
    env.write_schedules(&[yearly.clone(), every_two_seconds("witness", "witness")].concat());
    daemon.signal(SIGHUP);
    eventually(WAIT, "the second reload event", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'reloaded'") == 2
    })
    .await;
    // A send already started when the reload came may still finish: allow one slot of grace.
    let removed_at = Utc::now() + chrono::Duration::seconds(2);
    eventually(WAIT, "two witness slots after the removal", || {
        env.slots("witness")
            .into_iter()
            .filter(|s| *s > removed_at)
            .count()
            >= 2
    })
    .await;
    daemon.stop().await;
    let after: Vec<_> = env
        .slots("soon")
        .into_iter()
        .filter(|s| *s > removed_at)
        .collect();
    assert!(
        after.is_empty(),
        "a removed schedule's deadline fired: {after:?}"
    );
    env.assert_contiguous("soon", 2);
    assert_eq!(env.slots("yearly").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reload_is_reported_and_a_later_sighup_applies_the_fixed_config() {
    let env = Env::new().await;
    let tick = every_two_seconds("tick", "tick");
    let tock = every_two_seconds("tock", "tock");
    let tack = every_two_seconds("tack", "tack");
    env.write_schedules(&tick);
    let options = wecom_notify::daemon::Options {
        reload_limit: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let daemon = env.start_in_process_with_options(
        env.load(),
        fast_policy(),
        std::time::Duration::from_secs(5),
        options,
    );
    let events = |kind: &str| {
        env.column(&format!(
            "SELECT detail FROM events WHERE kind = '{kind}' ORDER BY id"
        ))
    };
    // A reload that can never read its file: a named pipe nobody writes (as a secret_file on
    // a stalled mount would be). Kept under another name afterwards, to be closed at the end.
    let stuck = |n: usize| {
        let pipe = env.path(&format!("stuck-{n}.fifo"));
        make_fifo(&pipe);
        std::fs::remove_file(env.config_path()).expect("config out of the way");
        std::fs::hard_link(&pipe, env.config_path()).expect("pipe in place");
        daemon.reload();
        pipe
    };
    let fixed = |schedules: String| {
        let staged = env.path("fixed.yaml");
        std::fs::write(
            &staged,
            format!(
                "timezone: Asia/Shanghai\n{}schedules:\n{schedules}",
                env.apps_yaml()
            ),
        )
        .expect("fixed config");
        std::fs::rename(&staged, env.config_path()).expect("fixed config in place");
    };

    // Stuck, reported, then a SIGHUP after the fix applies it.
    let first = stuck(1);
    eventually(WAIT, "the stuck reload reported", || {
        events("reload_failed").len() == 1
    })
    .await;
    assert!(
        events("reload_failed")[0].contains("has not been read within 2 s"),
        "{:?}",
        events("reload_failed")
    );
    let sent = env.fake.send_calls();
    eventually(WAIT, "sends go on meanwhile", || {
        env.fake.send_calls() > sent
    })
    .await;
    fixed(format!("{tick}{tock}"));
    daemon.reload();
    eventually(WAIT, "the fixed config applied", || {
        events("reloaded") == ["added tock; 1 unchanged"]
    })
    .await;

    // Stuck again, and fixed with a SIGHUP before the limit: that one is not left waiting
    // behind the stuck read either.
    let second = stuck(2);
    // The new reload's thread is blocked opening the pipe (beside the first, still blocked)
    // before the fix lands: else it would read the fixed file at once.
    eventually(WAIT, "the second reload blocked on its pipe", || {
        reload_threads_opening() == 2
    })
    .await;
    fixed(format!("{tick}{tack}"));
    daemon.reload();
    eventually(WAIT, "the second fix applied", || {
        events("reloaded").last().map(String::as_str)
            == Some("added tack; removed tock; 1 unchanged")
    })
    .await;
    assert_eq!(
        events("reload_failed").len(),
        2,
        "the second stuck reload reported too"
    );
    eventually(WAIT, "a message from the schedule added last", || {
        env.texts().iter().any(|t| t.starts_with("tack"))
    })
    .await;
    daemon.stop().await;
    // Let the abandoned reads end (their results go nowhere).
    for pipe in [first, second] {
        let _ = std::fs::OpenOptions::new().write(true).open(&pipe);
    }
}
