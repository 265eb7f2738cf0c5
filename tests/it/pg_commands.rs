//! The commands on a PostgreSQL database, as an operator runs them: `send`, `history`, `check`
//! and `recall` on a `postgres://` URL; the password of a role that must give one (from
//! `database_password_file`) shown in no output, log, row or process listing, and a wrong or
//! missing one refused clearly; two daemons migrating one empty database at once. Each test
//! returns early (having said so) when PostgreSQL is not installed, unless CI requires it.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use serde_json::Value;

use crate::support::postgres::{PASSWORD_ROLE, Postgres};
use crate::support::*;

/// A schedule that never fires during a test: it is sent by hand.
const STANDUP: &str = r#"  - name: standup
    cron: "30 9 * * 1-5"
    to: { users: [ZhangSan, LiSi] }
    text: { content: "站会十分钟后开始" }
"#;

/// The `instance:` of the configs written here, so that rows can be checked for it.
const INSTANCE: &str = "pg-node";

/// The file in the test folder holding the password role's password.
const PASSWORD_FILE: &str = "pg.secret";

/// A throwaway server and a test folder whose `--db` is a fresh database on it (as the
/// superuser, no password); `None` (the test returns) when PostgreSQL is not installed.
async fn env_on_postgres() -> Option<(Arc<Postgres>, Env)> {
    let server = Arc::new(Postgres::start()?);
    let env = Env::on_postgres(&server).await;
    Some((server, env))
}

/// The URL of the test database (as the superuser, as `--db` gives it).
fn database_url(env: &Env) -> String {
    env.db_arg().into_string().expect("a URL")
}

/// Writes a config whose `database:` is the test database as the password role, its password
/// read from [`PASSWORD_FILE`], which holds `password` (mode 0600).
fn write_password_config(env: &Env, server: &Postgres, password: &str, schedules: &str) {
    use std::os::unix::fs::PermissionsExt;
    let file = env.path(PASSWORD_FILE);
    std::fs::write(&file, format!("{password}\n")).expect("write the password file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    env.write_config(&format!(
        "timezone: Asia/Shanghai\ninstance: {INSTANCE}\ndatabase: {}\ndatabase_password_file: {PASSWORD_FILE}\n{}schedules:\n{schedules}",
        server.url_as(PASSWORD_ROLE, &database_url(env)),
        env.apps_yaml()
    ));
}

/// The binary on this folder's config alone (no `--db`: the database is the config's),
/// with the environment [`Env::command`] gives and `RUST_LOG` at `log_level`.
fn config_command(env: &Env, args: &[&str], log_level: &str) -> tokio::process::Command {
    let mut command = env.command_on(&env.config_path(), None, args);
    command.env("RUST_LOG", log_level);
    command
}

/// Runs [`config_command`] to completion.
async fn run_on_config(env: &Env, args: &[&str], log_level: &str) -> Output {
    config_command(env, args, log_level)
        .output()
        .await
        .expect("run wecom-notify")
}

/// The JSON objects `history --json ARGS` prints, one per line.
async fn history_json(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let output = env.cli_ok(&all).await;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// WeCom's msgid for a delivered message.
fn delivered_msgid(received: &Received) -> String {
    match &received.outcome {
        Outcome::Delivered { msgid } => msgid.clone(),
        other => panic!("not delivered: {other:?}"),
    }
}

/// Every row of every table of the database, as text (`SELECT t::text FROM t`).
fn every_row(server: &Postgres, url: &str) -> String {
    ["sends", "events", "heartbeats", "access_tokens"]
        .iter()
        .map(|table| server.psql(url, &format!("SELECT t::text FROM {table} t")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn send_history_and_check_work_on_postgresql() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    env.write_config(&format!(
        "timezone: Asia/Shanghai\ninstance: {INSTANCE}\n{}schedules:\n{STANDUP}",
        env.apps_yaml()
    ));
    let output = env.cli_ok(&["send", "standup"]).await;

    let messages = env.fake.messages();
    assert_eq!(messages.len(), 1, "{:?}", env.fake.all_requests());
    assert_eq!(messages[0].json["touser"], "ZhangSan|LiSi");
    assert_eq!(messages[0].json["agentid"], AGENT);
    assert_eq!(messages[0].json["text"]["content"], "站会十分钟后开始");
    let msgid = delivered_msgid(&messages[0]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("history id 1: sent after 1 attempt(s)") && stdout.contains(&msgid),
        "{stdout}"
    );

    let rows = history_json(&env, &[]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], 1);
    assert_eq!(row["schedule"], "standup");
    assert_eq!(row["trigger"], "manual");
    assert_eq!(row["status"], "sent");
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["errcode"], 0);
    assert_eq!(row["msgid"], msgid.as_str());
    assert_eq!(row["instance"], INSTANCE);
    assert_eq!(
        row["payload"], messages[0].raw,
        "payload is the body exactly as POSTed"
    );
    for column in ["scheduled_at", "created_at", "finished_at"] {
        let at = row[column].as_str().expect(column);
        assert!(
            at.len() == 20 && at.ends_with('Z'),
            "{column} = {at}: RFC 3339, whole seconds, Z"
        );
    }

    // A manual send is no slot: the summary has no last slot for it, and counts no failure.
    let summary = history_json(&env, &["--summary"]).await;
    assert_eq!(summary.len(), 1, "{summary:?}");
    let standup = &summary[0];
    assert_eq!(standup["schedule"], "standup");
    assert_eq!(standup["in_config"], true);
    assert_eq!(standup["last_slot"], Value::Null);
    assert_eq!(standup["failed_24h"], 0);
    let next = standup["next_fire"].as_str().expect("a next fire");
    let local = chrono::DateTime::parse_from_rfc3339(next)
        .expect("RFC 3339")
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d %H:%M %:z")
        .to_string();
    let summary = env.cli_ok(&["history", "--summary"]).await;
    let table = String::from_utf8_lossy(&summary.stdout);
    assert!(table.starts_with("SCHEDULE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("standup") && l.contains(&local)),
        "{table}"
    );

    let check = env.cli_ok(&["check"]).await;
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains(&format!("database: {}", database_url(&env))),
        "check names the database: {report}"
    );

    let calls = env.fake.gettoken_calls() + env.fake.send_calls();
    let dry = env.cli_ok(&["send", "standup", "--dry-run"]).await;
    let body = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .next()
        .expect("body line")
        .to_string();
    let rows = history_json(&env, &["--status", "dry_run"]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], 2);
    assert_eq!(
        rows[0]["payload"], body,
        "the printed body is the recorded payload"
    );
    assert_eq!(
        env.fake.gettoken_calls() + env.fake.send_calls(),
        calls,
        "a dry run calls nothing"
    );
    assert_eq!(env.fake.messages().len(), 1);
}

#[tokio::test]
async fn recall_works_on_postgresql() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    env.write_schedules(STANDUP);
    env.cli_ok(&["send", "standup"]).await;
    let msgid = delivered_msgid(&env.fake.messages()[0]);

    let output = env.cli_ok(&["recall", "1"]).await;
    assert_eq!(env.fake.recall_calls(), std::slice::from_ref(&msgid));
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "the token cached by `send` was reused"
    );
    let at = env
        .column("SELECT recalled_at FROM sends WHERE id = 1")
        .pop()
        .expect("row 1");
    assert!(at.len() == 20 && at.ends_with('Z'), "recalled_at = {at:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("recalled at {at}")) && stdout.contains(&msgid),
        "{stdout}"
    );
    let rows = history_json(&env, &[]).await;
    assert_eq!(rows[0]["recalled_at"], at.as_str());
    let table = env.cli_ok(&["history"]).await;
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("sent (recalled)"),
        "{}",
        text(&table)
    );

    let again = env.cli(&["recall", "1"]).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(&format!("already recalled at {at}")),
        "{stderr}"
    );
    assert_eq!(
        env.fake.recall_calls().len(),
        1,
        "WeCom was not asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_is_shown_nowhere() {
    let Some((server, env)) = env_on_postgres().await else {
        return;
    };
    let (_, password) = server.password_role();
    let password = password.to_string();
    write_password_config(
        &env,
        &server,
        &password,
        &format!("{STANDUP}{}", every_two_seconds("tick", "tick")),
    );
    let mut seen = Vec::new();
    for (args, level) in [
        (&["send", "standup"][..], "trace"),
        (&["history", "--json"], "debug"),
        (&["check"], "debug"),
        (&["check", "--format", "json"], "debug"),
    ] {
        let output = run_on_config(&env, args, level).await;
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        seen.push((format!("{args:?}"), text(&output)));
    }
    assert_eq!(env.fake.messages().len(), 1, "send reached WeCom");
    let check = &seen[2].1;
    assert!(
        check.contains("(password from database_password_file)"),
        "check says where the password comes from: {check}"
    );

    let log = env.path("daemon.log");
    let mut command = config_command(&env, &["run"], "trace");
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut daemon = Daemon {
        child: command.spawn().expect("spawn daemon"),
        log,
    };
    daemon
        .eventually(WAIT, || {
            match env
                .count("SELECT count(*) FROM sends WHERE schedule = 'tick' AND status = 'sent'")
            {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} ticks sent")),
            }
        })
        .await;
    assert!(
        env.count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{PASSWORD_ROLE}'"
        )) >= 1,
        "the daemon is connected as the password role"
    );
    let proc = Path::new("/proc").join(daemon.pid().to_string());
    let cmdline = std::fs::read(proc.join("cmdline")).expect("read cmdline");
    let environ = std::fs::read(proc.join("environ")).expect("read environ");
    daemon.stop().await;
    seen.push(("the daemon's log".into(), daemon.logs()));
    seen.push((
        "the daemon's cmdline".into(),
        String::from_utf8_lossy(&cmdline).into_owned(),
    ));
    seen.push((
        "the daemon's environment".into(),
        String::from_utf8_lossy(&environ).into_owned(),
    ));
    seen.push((
        "the database's rows".into(),
        every_row(&server, &database_url(&env)),
    ));
    for entry in std::fs::read_dir(env.dir.path()).expect("list the test folder") {
        let path = entry.expect("entry").path();
        if path.is_file() && path.file_name() != Some(PASSWORD_FILE.as_ref()) {
            let bytes = std::fs::read(&path).expect("read a file of the test folder");
            seen.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }

    for (place, text) in &seen {
        assert!(
            !text.contains(&password),
            "the database password is shown in {place}:\n{text}"
        );
    }
    assert!(
        seen.iter()
            .any(|(place, text)| place == "the database's rows" && text.contains(INSTANCE)),
        "the rows were read"
    );
}

#[tokio::test]
async fn a_wrong_database_password_fails_clearly_without_showing_it() {
    let Some((server, env)) = env_on_postgres().await else {
        return;
    };
    let (_, password) = server.password_role();
    let wrong = "Wr0ngPassw0rdNotTheRealOne";
    write_password_config(&env, &server, wrong, STANDUP);
    for args in [&["send", "standup"][..], &["history"]] {
        let output = run_on_config(&env, args, "debug").await;
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: a database that cannot be opened is EXIT_FAILED: {}",
            text(&output)
        );
        let all = text(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "password authentication failed for user \"{PASSWORD_ROLE}\""
            )),
            "{args:?}: the error says, in PostgreSQL's words, that it refused the password: {all}"
        );
        assert!(
            !all.contains(wrong) && !all.contains(password),
            "{args:?}: a password is shown: {all}"
        );
    }
    assert_eq!(
        env.fake.send_calls(),
        0,
        "nothing was sent without a database"
    );
    assert!(env.fake.messages().is_empty());

    std::fs::remove_file(env.path(PASSWORD_FILE)).expect("remove the password file");
    for args in [&["send", "standup"][..], &["history"]] {
        let output = run_on_config(&env, args, "debug").await;
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot read the database password (database_password_file)")
                && stderr.contains(PASSWORD_FILE),
            "{args:?}: the error names the field and the file: {}",
            text(&output)
        );
    }
    assert_eq!(env.fake.send_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_slot_is_sent_once_by_two_daemons_started_at_once_on_a_new_database() {
    let Some((_server, env)) = env_on_postgres().await else {
        return;
    };
    assert_eq!(
        env.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        0,
        "the database starts empty"
    );
    let schedules: String = ["a", "b", "c"]
        .iter()
        .map(|name| every(name, "*/2 * * * * *", name, "duplicate_check_interval: 600"))
        .collect();
    let config = |instance: &str| {
        let path = env.path(&format!("{instance}.yaml"));
        std::fs::write(
            &path,
            format!(
                "timezone: Asia/Shanghai\ninstance: {instance}\n{}schedules:\n{schedules}",
                env.apps_yaml()
            ),
        )
        .expect("write node config");
        path
    };
    let (config_a, config_b) = (config("node-a"), config("node-b"));
    // Spawned back to back: both connect and migrate the empty database at once.
    let mut a = env.spawn_daemon_from(&config_a, &[], |_| {});
    let mut b = env.spawn_daemon_from(&config_b, &[], |_| {});
    eventually(WAIT, "both nodes started", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 2
    })
    .await;
    // Three slots of each schedule (about 6 s) fired by the pair.
    eventually(WAIT, "nine slots sent", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 9
    })
    .await;
    a.stop().await;
    b.stop().await;

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
    assert_eq!(
        env.count("SELECT count(*) FROM wecom_notify_schema"),
        1,
        "migrated once"
    );
    assert_eq!(
        env.column("SELECT DISTINCT instance FROM events WHERE kind = 'started' ORDER BY instance"),
        ["node-a", "node-b"]
    );
    for (node, daemon) in [("node-a", &a), ("node-b", &b)] {
        assert!(
            !daemon.logs().contains("cannot migrate"),
            "{node} failed to migrate:\n{}",
            daemon.logs()
        );
    }
}
