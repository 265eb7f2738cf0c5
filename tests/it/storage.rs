//! The database's own troubles: a full disk, a database that refuses writes until the daemon
//! dies, a row that vanishes in flight, a storage fault, files others could read. In every case
//! a delivered slot ends with one `sent` row, and is never `missed` nor sent again.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::SubsecRound;

use crate::support::*;

/// How many times the fake delivered each body.
/// Every delivered body was delivered once and has exactly one row, which says `sent`; no
/// row says `sent` for a body that was not delivered; no `missed` row is a delivered slot's.
fn assert_delivered_once_and_recorded_sent(env: &Env) {
    let delivered = env.deliveries();
    for (body, n) in &delivered {
        assert_eq!(*n, 1, "delivered once: {body}");
        let rows = env.column(&format!(
            "SELECT status FROM sends WHERE payload = '{}'",
            body.replace('\'', "''")
        ));
        assert_eq!(rows, ["sent"], "one row, sent: {body}");
    }
    let sent = env.column("SELECT payload FROM sends WHERE status = 'sent'");
    for body in &sent {
        assert!(
            delivered.contains_key(body),
            "a sent row that was not delivered: {body}"
        );
    }
    let integrity: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
}

/// The slot a log line names as `slot=...Z`, for the line containing `needle`.
fn slot_in_log(logs: &str, needle: &str) -> String {
    let line = logs
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in\n{logs}"));
    let at = line.find("slot=").expect("slot field") + 5;
    line[at..at + 20].to_string()
}

async fn full_disk_then_freed_then_restarted(catch_up: bool) {
    let mut env = Env::new().await;
    let disk = SmallDisk::mount(env.path("disk"), 32);
    env.move_db_to(disk.path.join("wecom-notify.db"));
    let extra = if catch_up {
        "catch_up: 1m, duplicate_check_interval: 1"
    } else {
        "duplicate_check_interval: 1"
    };
    env.write_schedules(&every("tick", "*/2 * * * * *", "tick", extra));
    let reserve = disk.path.join("wecom-notify.db.reserve");
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "a first sent row and the disk reserve", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 1 && reserve.exists()
    })
    .await;

    // The disk fills up: the next slot is delivered, and the reserve makes room for its row.
    let first_filler = disk.fill();
    let before = env.fake.messages().len();
    let sent_before = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    daemon
        .wait_log("released the 8 MiB kept in reserve", WAIT)
        .await;
    let on_full_disk = env.fake.wait_for_messages(before + 1, WAIT).await[before]
        .raw
        .clone();
    eventually(WAIT, "the row of the slot sent on the full disk", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") > sent_before
    })
    .await;
    assert!(!reserve.exists(), "the reserve was used");

    // Full again, with no reserve left: a slot whose claim nothing takes is not sent.
    let second_filler = disk.fill();
    daemon.wait_log("NOT SENT", WAIT).await;
    let not_sent = slot_in_log(&daemon.logs(), "NOT SENT");
    daemon.stop().await;

    // The operator frees the disk and starts the daemon again.
    std::fs::remove_file(first_filler).expect("free the disk");
    std::fs::remove_file(second_filler).expect("free the disk");
    let mut restarted = env.spawn_daemon(&[]);
    let delivered = env.fake.messages().len();
    env.fake.wait_for_messages(delivered + 2, WAIT).await;
    eventually(WAIT, "no send pending", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'pending'") == 0
    })
    .await;
    restarted.stop().await;

    assert_delivered_once_and_recorded_sent(&env);
    assert_eq!(
        env.column(&format!(
            "SELECT trigger || ' ' || status FROM sends WHERE payload = '{on_full_disk}'"
        )),
        ["cron sent"],
        "the slot delivered on the full disk"
    );
    // It was not delivered then; with catch_up, as the latest slot missed, it may go out now.
    let expected = if catch_up {
        vec!["catch_up sent", "cron missed"]
    } else {
        vec!["cron missed"]
    };
    let row = env.column(&format!(
        "SELECT trigger || ' ' || status FROM sends WHERE schedule = 'tick' AND scheduled_at = '{not_sent}'"
    ));
    assert!(
        row.len() == 1 && expected.contains(&row[0].as_str()),
        "the slot that could not be claimed was not sent then: {row:?}"
    );
    env.assert_contiguous("tick", 2);
    // What the first daemon could not record at its stop is only the note about the unsent
    // slot, never the slot it delivered.
    let content: serde_json::Value = serde_json::from_str(&on_full_disk).expect("json");
    let content = content["text"]["content"]
        .as_str()
        .expect("text")
        .to_string();
    for line in daemon
        .logs()
        .lines()
        .filter(|l| l.contains("UNRECORDED SEND"))
    {
        assert!(
            !line.contains(&content),
            "the delivered slot was left unrecorded: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_delivered_on_a_full_disk_is_recorded_sent_once_after_a_restart() {
    full_disk_then_freed_then_restarted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_catch_up_a_slot_delivered_on_a_full_disk_is_not_sent_again() {
    full_disk_then_freed_then_restarted(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_the_database_refused_are_recorded_by_the_next_start_after_a_crash() {
    let env = Env::new().await;
    env.write_schedules(&every(
        "tick",
        "* * * * * *",
        "tick",
        "catch_up: 1m, duplicate_check_interval: 1",
    ));
    let daemon = env.start_in_process(fast_policy(), Duration::from_millis(200));
    daemon.wait_first_sent(&env).await;
    // Every write refused from now on: the claims and outcomes go to the unrecorded file.
    daemon.refuse_writes(true).await;
    let rows = env.count("SELECT count(*) FROM sends");
    let delivered = env.fake.messages().len();
    env.fake.wait_for_messages(delivered + 3, WAIT).await;
    let spill = daemon.wait_unrecorded(3).await;
    assert_eq!(env.count("SELECT count(*) FROM sends"), rows);
    // It dies before the database took them.
    daemon.crash().await;
    assert!(spill.exists(), "the file outlives its process");
    let output = env.cli_ok(&["history"]).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "sends made while the database refused writes wait in {}",
            spill.display()
        )),
        "history tells the auditor: {}",
        text(&output)
    );

    let mut restarted = env.spawn_daemon(&[]);
    restarted
        .wait_log("recorded a send that the database had refused", WAIT)
        .await;
    let delivered = env.fake.messages().len();
    env.fake.wait_for_messages(delivered + 2, WAIT).await;
    restarted.stop().await;
    assert!(!spill.exists(), "replayed and deleted");
    assert_delivered_once_and_recorded_sent(&env);
    env.assert_contiguous("tick", 1);
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status = 'pending'"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_vanishes_in_flight_is_written_again_not_reported_recorded() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "*/2 * * * * *", "tick", ""));
    let (mut daemon, hold) = env.spawn_daemon_with_a_held_send().await;
    let pending = env.column("SELECT payload FROM sends WHERE status = 'pending'");
    assert_eq!(pending.len(), 1);
    // Someone deletes the claimed row while WeCom holds the send.
    env.db()
        .execute("DELETE FROM sends WHERE status = 'pending'", [])
        .expect("delete");
    drop(hold);
    daemon.wait_log("is missing from the database", WAIT).await;
    eventually(WAIT, "the row written again", || {
        env.count(&format!(
            "SELECT count(*) FROM sends WHERE status = 'sent' AND payload = '{}'",
            pending[0]
        )) == 1
    })
    .await;
    daemon.stop().await;
    assert_delivered_once_and_recorded_sent(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_fault_reopens_the_connection_and_is_counted_and_recorded() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "* * * * * *", "tick", ""));
    let daemon = env.start_in_process(fast_policy(), Duration::from_secs(5));
    daemon.wait_first_sent(&env).await;
    let store = daemon.dispatcher.store().clone();
    // A mark that lives and dies with the connection.
    store
        .call(|c| c.execute_batch("CREATE TEMP TABLE mark (x)"))
        .await
        .expect("mark");
    // The connection reports what a deleted WAL made it report (SQLITE_IOERR_SHORT_READ).
    let fault = store
        .call(|_| -> rusqlite::Result<()> {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(522),
                Some("disk I/O error".into()),
            ))
        })
        .await;
    assert!(fault.is_err());
    let marks: i64 = store
        .call(|c| {
            c.query_row(
                "SELECT count(*) FROM sqlite_temp_master WHERE name = 'mark'",
                [],
                |r| r.get(0),
            )
        })
        .await
        .expect("the new connection answers");
    assert_eq!(marks, 0, "the connection was closed and opened again");
    let metrics = daemon.dispatcher.metrics().render();
    assert!(
        metrics.contains("wecom_notify_database_faults_total{kind=\"io_error\"} 1"),
        "{metrics}"
    );
    eventually(WAIT, "the database_fault event", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'database_fault'") == 1
    })
    .await;
    let detail = env.column("SELECT detail FROM events WHERE kind = 'database_fault'");
    assert!(
        detail[0].contains("disk I/O error") && detail[0].contains("reopened 1 time(s)"),
        "{detail:?}"
    );
    // The episode ends once the event is written.
    eventually(WAIT, "the fault gauge back to 0", || {
        daemon
            .dispatcher
            .metrics()
            .render()
            .contains("wecom_notify_database_fault 0")
    })
    .await;
    let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
    eventually(WAIT, "sends recorded after the fault", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") > sent + 1
    })
    .await;
    daemon.stop().await;
    env.assert_contiguous("tick", 1);
    assert_delivered_once_and_recorded_sent(&env);
}

/// Every file beside the database that belongs to it (the database, -wal, -shm, the reserve,
/// unrecorded-sends files), with its mode.
fn database_files(env: &Env) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(env.dir.path()).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("wecom-notify.db") {
            let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
            found.push((name, mode));
        }
    }
    found.sort();
    found
}

async fn a_database_others_could_read_is_made_private(mode: u32) {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "*/2 * * * * *", "tick", ""));
    // An existing database and its -wal and -shm, made by a process with a loose umask.
    let db = env.db_path();
    drop(env.db());
    for (suffix, content) in [("", None), ("-wal", Some(b"")), ("-shm", Some(b""))] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if let Some(content) = content {
            std::fs::write(&path, content).expect("create");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let output = env.cli_ok(&["send", "tick"]).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "had mode {mode:04o}, which let other users read the access tokens"
        )),
        "{}",
        text(&output)
    );
    assert_eq!(
        env.count("SELECT count(*) FROM access_tokens"),
        1,
        "a token is stored"
    );
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "a slot sent by the daemon", || {
        env.count("SELECT count(*) FROM sends WHERE trigger = 'cron' AND status = 'sent'") >= 1
    })
    .await;
    let files = database_files(&env);
    daemon.stop().await;
    assert!(files.len() >= 4, "database, -wal, -shm, reserve: {files:?}");
    for (name, mode) in files.iter().chain(&database_files(&env)) {
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:04o}: {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_with_mode_0644_is_made_private_before_a_token_is_written() {
    a_database_others_could_read_is_made_private(0o644).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_with_mode_0666_is_made_private_before_a_token_is_written() {
    a_database_others_could_read_is_made_private(0o666).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doubled_fire_while_the_database_refuses_writes_sends_once() {
    use wecom_notify::dispatch::{Dispatcher, Fired};
    use wecom_notify::store::Store;
    use wecom_notify::store::history::Trigger;
    let env = Env::new().await;
    env.write_schedules(&every("tick", "0 0 9 * * *", "tick", ""));
    let config = env.load();
    let store =
        Store::open_with_busy_timeout(&env.db_path(), Duration::from_millis(200)).expect("store");
    let client = wecom_notify::wecom::Client::new().expect("client");
    let tokens = wecom_notify::wecom::token::TokenCache::new(store.clone(), client.clone());
    let dispatcher = std::sync::Arc::new(
        Dispatcher::new(store.clone(), client, tokens, fast_policy(), false)
            .sending_unrecorded(true),
    );
    store
        .call(|c| c.pragma_update(None, "query_only", true))
        .await
        .expect("query_only on");
    let schedule = config.schedules[0].clone();
    let app = wecom_notify::channel::Channel::App(config.app(schedule.app()).expect("app").clone());
    let slot = chrono::Utc::now().trunc_subsecs(0);
    let fire = || dispatcher.fire(&schedule, &app, slot, Trigger::Cron);
    let (first, second) = tokio::join!(fire(), fire());
    let outcomes = [first.expect("fired"), second.expect("fired")];
    assert_eq!(
        outcomes
            .iter()
            .filter(|f| matches!(f, Fired::Taken))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(env.fake.send_calls(), 1, "one request to WeCom");
    assert_eq!(env.fake.messages().len(), 1, "one delivery");
    store
        .call(|c| c.pragma_update(None, "query_only", false))
        .await
        .expect("query_only off");
    assert_eq!(dispatcher.flush_unwritten().await, 0);
    assert_eq!(
        env.column("SELECT trigger || ' ' || status FROM sends"),
        ["cron sent"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_unrecorded_file_stops_the_start_rather_than_hide_its_sends() {
    let env = Env::new().await;
    env.write_schedules(&every("tick", "*/2 * * * * *", "tick", "catch_up: 1m"));
    // Unreadable even for root: a folder where the file should be.
    let blocked = env.path("wecom-notify.db.unrecorded-4242-0badf00d");
    std::fs::create_dir(&blocked).expect("folder");
    let mut daemon = env.spawn_daemon(&[]);
    let status = daemon.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(
        logs.contains("holds sends an earlier process made but could not record")
            && logs.contains("Make it readable and writable by this daemon's user"),
        "{logs}"
    );
    assert_eq!(env.fake.send_calls(), 0, "nothing was sent");
    assert_eq!(
        env.count("SELECT count(*) FROM sends"),
        0,
        "nothing recorded missed"
    );
}
