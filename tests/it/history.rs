//! `history`: filters, newest first, the JSON Lines keys, slots in each schedule's zone, the
//! summary, usage errors, and working without a config — against a seeded database.

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, TimeZone, Utc};
use serde_json::Value;
use wecom_notify::store::Store;

use crate::support::*;

const STANDUP: &str = r#"  - name: standup
    cron: "30 9 * * 1-5"
    to: { users: [ZhangSan] }
    text: { content: "站会十分钟后开始" }
"#;

const WEEKLY_BERLIN: &str = r#"  - name: weekly
    cron: "0 16 * * Fri"
    timezone: Europe/Berlin
    to: { parties: ["2"] }
    text: { content: "Wochenbericht" }
"#;

const PAUSED: &str = r#"  - name: paused
    cron: "0 18 * * *"
    enabled: false
    to: { users: [ZhangSan] }
    text: { content: "paused" }
"#;

/// Creates the schema without writing a row.
fn create_schema(env: &Env) {
    Store::open(&env.db_path()).expect("create the database");
}

/// Inserts a finished row and returns its id; other columns are set with `update`.
fn insert(env: &Env, schedule: &str, trigger: &str, slot: DateTime<Utc>, status: &str) -> i64 {
    let slot = wecom_notify::time::to_db(slot);
    let conn = env.db();
    conn.execute(
        "INSERT INTO sends (schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app, agent_id, msgtype, payload)
         VALUES (?1, ?2, ?3, ?3, ?3, ?4, 1, 'ops', ?5, 'text', '{\"msgtype\":\"text\"}')",
        rusqlite::params![schedule, trigger, slot, status, AGENT],
    )
    .expect("insert");
    conn.last_insert_rowid()
}

fn update(env: &Env, id: i64, set: &str) {
    env.db()
        .execute(&format!("UPDATE sends SET {set} WHERE id = ?1"), [id])
        .expect("update");
}

/// The JSON objects `history --json ARGS` prints, one per line.
async fn json_lines(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let output = env.cli_ok(&all).await;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

async fn ids(env: &Env, args: &[&str]) -> Vec<i64> {
    json_lines(env, args)
        .await
        .iter()
        .map(|row| row["id"].as_i64().expect("id"))
        .collect()
}

/// `--now` for the binary: the instant `history` takes as now.
fn now_arg(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn stdout_of(env: &Env, args: &[&str]) -> String {
    let output = env.cli_ok(args).await;
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn filters_select_rows_newest_first() {
    let env = Env::new().await;
    env.write_schedules(&format!("{STANDUP}{WEEKLY_BERLIN}"));
    create_schema(&env);
    let base = Utc.with_ymd_and_hms(2026, 11, 2, 1, 30, 0).unwrap();
    let day = |n| base + Duration::days(n);
    insert(&env, "standup", "cron", day(0), "sent");
    insert(&env, "weekly", "cron", day(1), "failed");
    insert(&env, "standup", "cron", day(2), "failed");
    insert(&env, "standup", "manual", day(3), "sent");
    insert(&env, "weekly", "cron", day(4), "sent");

    assert_eq!(ids(&env, &[]).await, [5, 4, 3, 2, 1]);
    assert_eq!(ids(&env, &["--schedule", "standup"]).await, [4, 3, 1]);
    assert_eq!(ids(&env, &["--status", "failed"]).await, [3, 2]);
    assert_eq!(
        ids(&env, &["--schedule", "standup", "--status", "failed"]).await,
        [3]
    );
    assert_eq!(ids(&env, &["--limit", "2"]).await, [5, 4]);
    assert_eq!(
        ids(&env, &["--schedule", "weekly", "--limit", "1"]).await,
        [5]
    );
    assert!(ids(&env, &["--status", "missed"]).await.is_empty());
    let table = stdout_of(&env, &["history", "--status", "missed"]).await;
    assert_eq!(table.trim(), "no sends match");
}

#[tokio::test]
async fn since_filters_on_the_slot_by_duration_date_or_timestamp() {
    let env = Env::new().await;
    env.write_schedules(STANDUP); // top-level zone Asia/Shanghai
    create_schema(&env);
    // `history` takes this instant as now (`--now`): the rows are placed around it exactly.
    let now = Utc::now().trunc_subsecs(0);
    let at = now_arg(now);
    let since = |when: &'static str| ["--now", at.as_str(), "--since", when];
    let hour_ago = insert(&env, "standup", "cron", now - Duration::hours(1), "sent");
    let days_ago = insert(&env, "standup", "cron", now - Duration::days(2), "sent");
    let week_ago = insert(&env, "standup", "cron", now - Duration::days(10), "sent");
    // 23:59:59 and 00:00:00 in Shanghai, on either side of 2020-03-10's midnight.
    let before_midnight = Utc.with_ymd_and_hms(2020, 3, 9, 15, 59, 59).unwrap();
    insert(&env, "standup", "cron", before_midnight, "sent");
    let midnight = insert(
        &env,
        "standup",
        "cron",
        before_midnight + Duration::seconds(1),
        "sent",
    );
    // A catch-up of an old slot, written just now: --since looks at the slot, not the write.
    let caught_up = insert(
        &env,
        "standup",
        "catch_up",
        now - Duration::days(30),
        "sent",
    );
    update(
        &env,
        caught_up,
        &format!("created_at = '{}'", wecom_notify::time::to_db(now)),
    );

    assert_eq!(ids(&env, &since("30m")).await, Vec::<i64>::new());
    assert_eq!(ids(&env, &since("12h")).await, [hour_ago]);
    assert_eq!(ids(&env, &since("3d")).await, [days_ago, hour_ago]);
    assert_eq!(
        ids(&env, &since("2w")).await,
        [week_ago, days_ago, hour_ago]
    );
    // A duration counts back from --now to the second: a slot exactly that long ago is in.
    assert_eq!(ids(&env, &since("1h")).await, [hour_ago]);
    let from_midnight = [caught_up, midnight, week_ago, days_ago, hour_ago];
    assert_eq!(ids(&env, &["--since", "2020-03-10"]).await, from_midnight);
    // A duration counts back from --now, not from the clock: half an hour after that midnight,
    // 30m reaches back to it exactly.
    let after_midnight = ["--now", "2020-03-10T00:30:00+08:00", "--since", "30m"];
    assert_eq!(ids(&env, &after_midnight).await, from_midnight);
    assert_eq!(
        ids(&env, &["--since", "2020-03-10T00:00:00+08:00"]).await,
        from_midnight
    );
    assert_eq!(
        ids(&env, &["--since", "2020-03-09T16:00:00Z"]).await,
        from_midnight
    );
    assert_eq!(
        ids(
            &env,
            &["--now", &at, "--since", "12h", "--schedule", "other"]
        )
        .await,
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn json_lines_carry_every_column_under_its_own_name() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    create_schema(&env);
    let slot = Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap();
    let id = insert(&env, "standup", "cron", slot, "partial");
    update(
        &env,
        id,
        "errcode = 0, errmsg = 'ok', msgid = 'msg-1', invaliduser = 'lisi', invalidparty = '9',
         invalidtag = '7', unlicenseduser = 'wangwu', recalled_at = '2026-11-30T02:00:00Z'",
    );
    insert(&env, "standup", "manual", slot, "dry_run");

    let rows = json_lines(&env, &[]).await;
    assert_eq!(rows.len(), 2, "one line per row");
    let expected = [
        "id",
        "schedule",
        "trigger",
        "scheduled_at",
        "created_at",
        "finished_at",
        "status",
        "attempts",
        "app",
        "agent_id",
        "msgtype",
        "payload",
        "errcode",
        "errmsg",
        "msgid",
        "invaliduser",
        "invalidparty",
        "invalidtag",
        "unlicenseduser",
        "recalled_at",
        "robot",
        "instance",
    ];
    let columns = env.column("SELECT name FROM pragma_table_info('sends')");
    for row in &rows {
        let keys: Vec<&str> = row
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_expected = expected.to_vec();
        sorted_expected.sort_unstable();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, sorted_expected);
        for key in keys {
            assert!(
                columns.iter().any(|c| c == key),
                "{key} is not a column of sends"
            );
        }
    }
    let row = &rows[1];
    assert_eq!(row["id"], id);
    assert_eq!(row["scheduled_at"], "2026-11-30T01:30:00Z");
    assert_eq!(row["status"], "partial");
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["agent_id"], AGENT);
    assert_eq!(row["payload"], "{\"msgtype\":\"text\"}");
    assert_eq!(row["errcode"], 0);
    assert_eq!(row["msgid"], "msg-1");
    assert_eq!(row["unlicenseduser"], "wangwu");
    assert_eq!(row["recalled_at"], "2026-11-30T02:00:00Z");
    assert_eq!(rows[0]["errcode"], Value::Null, "NULL stays null");
}

#[tokio::test]
async fn table_shows_slots_in_each_schedules_zone_and_errcodes_in_words() {
    let env = Env::new().await;
    env.write_schedules(&format!("{STANDUP}{WEEKLY_BERLIN}"));
    create_schema(&env);
    let slot = Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap();
    let sent = insert(&env, "standup", "cron", slot, "partial");
    update(
        &env,
        sent,
        "errcode = 0, msgid = 'msg-partial', invaliduser = 'lisi|wangwu', invalidparty = '9'",
    );
    let friday = Utc.with_ymd_and_hms(2026, 11, 27, 15, 0, 0).unwrap();
    let failed = insert(&env, "weekly", "cron", friday, "failed");
    update(
        &env,
        failed,
        "errcode = 60020, errmsg = 'not allow to access from your ip'",
    );
    insert(&env, "retired", "cron", slot, "sent");

    let table = stdout_of(&env, &["history"]).await;
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0];
    for column in [
        "ID", "SCHEDULE", "TRIGGER", "SLOT", "STATUS", "ATTEMPTS", "ERRCODE", "MSGID", "INVALID",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let line = |schedule: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(schedule))
            .unwrap_or_else(|| panic!("no line for {schedule}:\n{table}"))
    };
    let standup = line("standup");
    assert!(standup.contains("2026-11-30 09:30 +08:00"), "{table}");
    assert!(
        standup.contains("msg-partial") && standup.contains("user:lisi|wangwu party:9"),
        "{table}"
    );
    let weekly = line("weekly");
    assert!(weekly.contains("2026-11-27 16:00 +01:00"), "{table}");
    assert!(weekly.contains("60020 IP not trusted"), "{table}");
    let retired = line("retired");
    assert!(retired.contains("2026-11-30 01:30 +00:00"), "{table}");
    assert!(
        table.contains("retired are in UTC"),
        "a slot shown in UTC is explained: {table}"
    );
    // Aligned: every row's slot starts under the SLOT header.
    let column = header.find("SLOT").expect("SLOT");
    for row in [standup, weekly, retired] {
        assert!(row[column..].starts_with("2026-11-"), "{table}");
    }
}

#[tokio::test]
async fn summary_shows_last_slot_next_fire_and_failures_of_the_last_day() {
    let env = Env::new().await;
    env.write_schedules(&format!("{STANDUP}{PAUSED}"));
    create_schema(&env);
    // `history` takes this instant as now (`--now`): the next fire and the failure window
    // follow from it exactly.
    let now = Utc::now().trunc_subsecs(0);
    let at = now_arg(now);
    let ago = |hours| now - Duration::hours(hours);
    insert(&env, "standup", "cron", ago(50), "failed"); // too old to count
    insert(&env, "standup", "cron", ago(26), "sent");
    // The window is the 24 h up to --now, its start included.
    insert(
        &env,
        "standup",
        "cron",
        ago(24) - Duration::seconds(1),
        "failed",
    );
    insert(&env, "standup", "cron", ago(24), "failed");
    let last = insert(&env, "standup", "catch_up", ago(5), "partial");
    insert(&env, "standup", "manual", ago(2), "failed"); // manual: counts, but is no slot
    insert(&env, "standup", "manual", ago(1), "failed");
    let gone = insert(&env, "retired", "cron", ago(3), "failed");

    let config = env.load();
    let standup = config.schedule("standup").expect("standup");
    let next = standup.cron.next_after(now, standup.zone).expect("next");
    let lines = json_lines(&env, &["--now", &at, "--summary"]).await;

    let names: Vec<&str> = lines
        .iter()
        .map(|l| l["schedule"].as_str().expect("schedule"))
        .collect();
    assert_eq!(
        names,
        ["standup", "paused", "retired"],
        "config order, then history-only schedules"
    );
    let s = &lines[0];
    assert_eq!(s["in_config"], true);
    assert_eq!(s["last_id"], last);
    assert_eq!(s["last_slot"], wecom_notify::time::to_db(ago(5)));
    assert_eq!(s["last_status"], "partial");
    assert_eq!(s["failed_24h"], 3);
    assert_eq!(s["next_fire"], wecom_notify::time::to_db(next));
    let p = &lines[1];
    assert_eq!(
        (p["enabled"].clone(), p["next_fire"].clone()),
        (Value::Bool(false), Value::Null)
    );
    assert_eq!(p["last_slot"], Value::Null);
    let r = &lines[2];
    assert_eq!(r["in_config"], false);
    assert_eq!(r["last_id"], gone);
    assert_eq!(r["next_fire"], Value::Null);
    assert_eq!(r["failed_24h"], 1);

    let table = stdout_of(&env, &["--now", &at, "history", "--summary"]).await;
    assert!(table.starts_with("SCHEDULE"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}: {table}"))
            .to_string()
    };
    let local_next = next
        .with_timezone(&standup.zone)
        .format("%Y-%m-%d %H:%M %:z")
        .to_string();
    assert!(
        row("standup").contains("partial") && row("standup").ends_with(" 3"),
        "{table}"
    );
    assert!(row("standup").contains(&local_next), "{table}");
    assert!(row("paused").contains("- (disabled)"), "{table}");
    assert!(row("retired").contains("- (not in config)"), "{table}");

    let only = json_lines(&env, &["--now", &at, "--summary", "--schedule", "retired"]).await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["schedule"], "retired");

    // 23 hours on, the window holds only the last hour's failure, and the next fire moves on:
    // both follow --now, not the clock.
    let later = now + Duration::hours(23);
    let lines = json_lines(&env, &["--now", &now_arg(later), "--summary"]).await;
    let s = &lines[0];
    assert_eq!(s["schedule"], "standup");
    assert_eq!(s["failed_24h"], 1);
    let next = standup.cron.next_after(later, standup.zone).expect("next");
    assert_eq!(s["next_fire"], wecom_notify::time::to_db(next));
}

#[tokio::test]
async fn bad_values_are_usage_errors_that_name_the_flag_and_the_accepted_forms() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--since", "yesterday"],
            &["--since", "7d", "2026-11-30", "RFC 3339"],
        ),
        (&["--since", "7x"], &["--since", "30m", "12h", "2w"]),
        (
            &["--status", "delivered"],
            &["--status", "sent", "dry_run", "skipped"],
        ),
        (&["--limit", "0"], &["--limit"]),
        (
            &["--summary", "--status", "sent"],
            &["--summary", "--status"],
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["history"];
        all.extend_from_slice(args);
        let output = env.cli(&all).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in words {
            assert!(
                stderr.contains(word),
                "{args:?} should mention {word}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn history_works_without_a_config_in_utc() {
    let env = Env::new().await; // no config written
    create_schema(&env);
    let slot = Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap();
    insert(&env, "standup", "cron", slot, "sent");
    insert(&env, "standup", "cron", slot - Duration::hours(2), "sent");

    let output = env.cli_ok(&["history"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains("UTC"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("2026-11-30 01:30 +00:00"),
        "{}",
        text(&output)
    );
    // A date is midnight UTC then: 2026-11-30T00:00Z falls between the two slots.
    assert_eq!(ids(&env, &["--since", "2026-11-30"]).await, [1]);
    let summary = stdout_of(&env, &["history", "--summary"]).await;
    assert!(summary.contains("- (not in config)"), "{summary}");

    // An invalid config is a warning too.
    env.write_config("schedules: [");
    let output = env.cli_ok(&["history"]).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("wecom-notify check"),
        "{}",
        text(&output)
    );
}

/// A config that names its database but cannot be loaded leaves `history` not knowing which
/// database to read: it says so, rather than read (or create) the default one.
#[tokio::test]
async fn a_broken_config_naming_a_database_is_not_read_from_another() {
    let env = Env::new().await;
    env.write_config(&format!(
        "database: elsewhere.db\ntimezone: Nowhere/Else\n{}schedules: []\n",
        env.apps_yaml()
    ));
    let output = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(env.config_path())
        .arg("history")
        .current_dir(env.dir.path())
        .output()
        .await
        .expect("run history");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not know which database"),
        "{}",
        text(&output)
    );
    for name in ["wecom-notify.db", "elsewhere.db"] {
        assert!(!env.path(name).exists(), "{name} was created");
    }
    // With --db, the reader says which database; that works whatever the config.
    env.cli_ok(&["history"]).await;
}
