//! Readers of the database in other processes and connections — the `sqlite3` CLI without
//! `-readonly`, a rusqlite connection in the test process, `wecom-notify history` and `send` —
//! open and close it at every phase of the daemon's life, and never cost it a row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{SubsecRound, Utc};

use crate::support::*;

/// `sqlite3 DB SQL` as an auditor's script runs it: read-write, no `-readonly`, and with a busy
/// timeout, as any script should have (SQLite answers "database is locked" at once without
/// one when a reader's turn to take a read mark collides with another connection's; Python and
/// rusqlite wait 5 s by default).
async fn sqlite3(db: &Path, sql: &str) -> String {
    let output = tokio::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .await
        .expect("the sqlite3 CLI (Debian package sqlite3)");
    assert!(output.status.success(), "sqlite3 {sql}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A rusqlite connection of the test process, opened read-write, used and closed.
fn rusqlite_read(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sends", [], |r| r.get(0))
        .expect("count");
    let mut statement = conn.prepare("SELECT payload FROM sends").expect("prepare");
    let _ = statement
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .count();
}

/// `wecom-notify history --json`, as a script would run it.
async fn history(config: &Path, db: &Path) -> usize {
    let output = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(db)
        .args(["history", "--json", "--limit", "100000"])
        .env_remove("STATE_DIRECTORY")
        .output()
        .await
        .expect("run history");
    assert!(output.status.success(), "history: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// One look by each kind of reader.
async fn look(config: &Path, db: &Path) {
    sqlite3(db, "SELECT count(*) FROM sends").await;
    rusqlite_read(db);
    history(config, db).await;
}

/// Readers opening and closing the database in turn, one every 50 ms, until stopped; and a
/// manual `send` every 1.2 s (a second apart, so that no two bodies are equal: WeCom's duplicate
/// check would swallow the second).
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

impl Readers {
    fn start(env: &Env, with_sends: bool) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let (config, db) = (env.config_path(), env.db_path());
        let mut tasks = vec![tokio::spawn(read_in_turn(
            config.clone(),
            db.clone(),
            stop.clone(),
        ))];
        if with_sends {
            tasks.push(tokio::spawn(send_now_and_then(config, db, stop.clone())));
        }
        Readers { stop, tasks }
    }

    /// Stops them; returns how many reads and sends they made.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = 0;
        for task in self.tasks {
            total += task.await.expect("reader task");
        }
        total
    }
}

async fn read_in_turn(config: PathBuf, db: PathBuf, stop: Arc<AtomicBool>) -> usize {
    let mut reads = 0;
    while !stop.load(Ordering::SeqCst) {
        match reads % 3 {
            0 => drop(sqlite3(&db, "SELECT count(*) FROM sends").await),
            1 => rusqlite_read(&db),
            _ => drop(history(&config, &db).await),
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reads
}

async fn send_now_and_then(config: PathBuf, db: PathBuf, stop: Arc<AtomicBool>) -> usize {
    let mut sends = 0;
    while !stop.load(Ordering::SeqCst) {
        let output = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&db)
            .args(["send", "adhoc"])
            .output()
            .await
            .expect("run send");
        assert!(output.status.success(), "send: {}", text(&output));
        sends += 1;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    sends
}

/// What a user checks after each phase: every message WeCom delivered has exactly one row that
/// says `sent`, no row says `sent` for a message that was not delivered, the database is intact
/// (checked by `sqlite3`, read-write), and the daemon never saw a damaged database.
async fn assert_history_whole(env: &Env, daemon: &Daemon, phase: &str) {
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for message in env.fake.messages() {
        *delivered.entry(message.raw).or_default() += 1;
    }
    let mut recorded: BTreeMap<String, usize> = BTreeMap::new();
    for payload in env.column("SELECT payload FROM sends WHERE status = 'sent'") {
        *recorded.entry(payload).or_default() += 1;
    }
    assert_eq!(
        recorded, delivered,
        "{phase}: the rows that say sent are exactly the messages WeCom delivered"
    );
    assert_eq!(
        sqlite3(&env.db_path(), "PRAGMA integrity_check").await,
        "ok",
        "{phase}"
    );
    let logs = daemon.logs();
    for damage in ["malformed", "I/O error", "database fault"] {
        assert!(!logs.contains(damage), "{phase}: {damage:?} in\n{logs}");
    }
}

/// Waits until the fake delivered `n` messages and each has its `sent` row.
async fn wait_recorded(env: &Env, daemon: &Daemon, n: usize, what: &str) {
    daemon
        .eventually(Duration::from_secs(40), || {
            let delivered = env.fake.messages().len();
            let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'") as usize;
            let pending = env.count("SELECT count(*) FROM sends WHERE status = 'pending'");
            if delivered >= n && sent >= delivered && pending == 0 {
                return Ok(());
            }
            Err(format!(
                "{what}: {delivered} delivered, {sent} sent rows, {pending} pending"
            ))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_running_sqlite3_while_the_daemon_writes_costs_no_row() {
    // The sequence that lost every row before the database's files were left to SQLite alone.
    let env = Env::new().await;
    let slot = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(4);
    let schedules: String = (0..10)
        .map(|i| every(&format!("s{i}"), &cron_at(slot), &format!("burst {i}"), ""))
        .collect();
    env.write_schedules(&schedules);
    let mut daemon = env.spawn_daemon(&[]);
    daemon.wait_log("schedules armed", WAIT).await;
    let db = env.db_path();
    assert_eq!(sqlite3(&db, "select count(*) from sends").await, "0");
    env.fake.wait_for_messages(10, WAIT).await;
    wait_recorded(&env, &daemon, 10, "ten sent rows while the daemon runs").await;
    assert_eq!(sqlite3(&db, "select count(*) from sends").await, "10");
    daemon.stop().await;
    assert_eq!(
        sqlite3(&db, "select count(*) from sends; pragma integrity_check").await,
        "10\nok"
    );
    assert_history_whole(&env, &daemon, "after stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_at_every_phase_of_the_daemons_life_cost_no_row() {
    let env = Env::new().await;
    let start = Utc::now().trunc_subsecs(0);
    let burst = start + chrono::Duration::seconds(8);
    // One recipient each: WeCom's 30-a-minute limit per member would spread the burst over
    // minutes otherwise (the daemon holds back the excess).
    let mut schedules: String = (0..50)
        .map(|i| {
            every(
                &format!("burst{i}"),
                &cron_at(burst),
                &format!("burst {i}"),
                "",
            )
            .replace("users: [u]", &format!("users: [u{i}]"))
        })
        .collect();
    // Every 3 s, for the phases that wait for "the next slot" whenever they begin.
    schedules.push_str(&every("tick", "*/3 * * * * *", "tick", "").replace("[u]", "[t]"));
    schedules.push_str(
        &every("adhoc", &cron_at(start), "by hand", "enabled: false").replace("[u]", "[a]"),
    );
    env.write_schedules(&schedules);
    let (config, db) = (env.config_path(), env.db_path());
    let mut daemon = env.spawn_daemon(&[]);

    // Right after start, before the first slot.
    daemon.wait_log("schedules armed", WAIT).await;
    look(&config, &db).await;
    assert_history_whole(&env, &daemon, "after start").await;

    // A 50-schedule burst with WeCom answering -1 (busy) to a quarter of the sends, readers
    // every 50 ms and a manual send now and then.
    env.fake.set_chaos(Chaos {
        busy_fraction: 0.25,
        ..Chaos::default()
    });
    let readers = Readers::start(&env, true);
    daemon
        .eventually(Duration::from_secs(60), || {
            let bursts = env
                .fake
                .messages()
                .iter()
                .filter(|m| m.raw.contains("burst "))
                .count();
            if bursts == 50 {
                return Ok(());
            }
            Err(format!("{bursts} of the 50 burst messages delivered"))
        })
        .await;
    // The readers and the manual sends stop, and WeCom answers normally again, before the
    // history is compared: sends still retrying would keep rows pending.
    let reads = readers.stop().await;
    env.fake.set_chaos(Chaos::default());
    assert!(reads >= 10, "readers ran during the burst ({reads})");
    let before = env.fake.messages().len();
    wait_recorded(&env, &daemon, before, "the burst recorded").await;
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE schedule LIKE 'burst%' AND status = 'sent'"),
        50
    );
    assert!(env.count("SELECT count(*) FROM sends WHERE trigger = 'manual'") >= 1);
    assert_history_whole(&env, &daemon, "during the burst").await;
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "one token for the daemon and the sends"
    );

    // Across a token refresh: WeCom expires the token, the next slot refreshes it.
    env.fake.expire_all_tokens();
    let readers = Readers::start(&env, false);
    let before = env.fake.messages().len();
    wait_recorded(
        &env,
        &daemon,
        before + 1,
        "the slot after the token expired",
    )
    .await;
    readers.stop().await;
    assert_eq!(env.fake.gettoken_calls(), 2, "exactly one refresh");
    assert_history_whole(&env, &daemon, "across a token refresh").await;

    // A reader holds a read transaction open over a slot, while others come and go.
    let holder = rusqlite::Connection::open(&db).expect("open");
    holder.execute_batch("BEGIN").expect("begin");
    let seen: i64 = holder
        .query_row("SELECT count(*) FROM sends", [], |r| r.get(0))
        .expect("read");
    let before = env.fake.messages().len();
    wait_recorded(&env, &daemon, before + 1, "the slot under the open read").await;
    look(&config, &db).await;
    let still: i64 = holder
        .query_row("SELECT count(*) FROM sends", [], |r| r.get(0))
        .expect("read again");
    assert_eq!(still, seen, "the open read sees its snapshot");
    holder.execute_batch("COMMIT").expect("end the read");
    drop(holder);
    assert_history_whole(&env, &daemon, "under an open read").await;

    // At stop: readers while the daemon shuts down, and after.
    daemon.signal(SIGTERM);
    while daemon.child.try_wait().expect("wait").is_none() {
        look(&config, &db).await;
    }
    let status = daemon.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.logs());
    look(&config, &db).await;
    assert_history_whole(&env, &daemon, "at stop").await;
    assert_eq!(
        env.column("SELECT kind FROM events ORDER BY id"),
        ["started", "stopped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_send_beside_a_running_daemon_records_both_with_one_token() {
    let env = Env::new().await;
    let slot = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(5);
    env.write_schedules(&format!(
        "{}{}",
        every("tick", &cron_at(slot), "from the daemon", ""),
        every("adhoc", &cron_at(slot), "by hand", "enabled: false")
    ));
    // A slow gettoken: the command starts while the daemon's fetch of the token is in
    // flight, so that both need the token at once.
    env.fake.set_gettoken_delay(Duration::from_millis(800));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "the daemon's gettoken in flight", || {
        env.fake.gettoken_calls() == 1
    })
    .await;
    let output = env.cli(&["send", "adhoc"]).await;
    assert!(output.status.success(), "{}", text(&output));
    wait_recorded(&env, &daemon, 2, "both messages delivered and recorded").await;
    daemon.stop().await;
    assert_eq!(
        env.column(
            "SELECT schedule || ' ' || trigger || ' ' || status FROM sends ORDER BY schedule"
        ),
        ["adhoc manual sent", "tick cron sent"]
    );
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "one gettoken for both processes"
    );
    assert_history_whole(&env, &daemon, "after both").await;
}
