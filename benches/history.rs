//! History size: a database created by the binary (`send --dry-run`), filled with R synthetic
//! `sends` rows in one transaction, then the `history` command timed as a user runs it
//! (process start included, warm page cache), the database's bytes per row, and the daemon's
//! start-up on that database (it reads the history to find missed slots and crashed sends).
//!
//! ```sh
//! cargo bench --bench history -- --rows 1000000 --runs 5
//! ```

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;

const USAGE: &str = "\
cargo bench --bench history -- [options]
  --rows R        rows inserted into sends (default 1000000)
  --schedules S   schedules the rows are spread over, all in the config (default 100)
  --cron EXPR     their expression (default '0 30 9 * * Mon'; no slot may fall in the last minute)
  --runs N        runs per command; the median is reported (default 5)
  --keep          keep the temporary folder (config and database)";

fn main() {
    let args = Args::parse(USAGE, &["rows", "schedules", "runs", "cron"]);
    args.only_flags(&["keep"], USAGE);
    let rows: usize = args.num("rows", 1_000_000);
    let schedules: usize = args.num("schedules", 100);
    let runs: usize = args.num("runs", 5);
    let cron = args.str("cron", "0 30 9 * * Mon");
    print_machine();
    println!("history: {rows} rows over {schedules} schedules ('{cron}'), {runs} runs per command");

    let work = Workdir::new();
    let mut config = config_head("http://127.0.0.1:9");
    for i in 0..schedules {
        // No slot falls due while the benchmark runs, so start-up records nothing.
        config.push_str(&schedule_item(
            &format!("h{i:03}"),
            &cron,
            &format!("u{i:03}"),
        ));
    }
    std::fs::write(work.config(), config).unwrap();
    // An empty database made by the binary, as the baseline and the template.
    let empty = work.path("empty.db");
    let created = cli(&work, None, &empty, &["send", "h000", "--dry-run"]);
    assert!(created.0, "send --dry-run failed: {}", created.2);
    // Fold the WAL into the file before copying it (the binary may leave one behind).
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    std::fs::copy(&empty, work.db()).unwrap();

    let start = Instant::now();
    fill(&work.db(), rows, schedules);
    println!(
        "inserted {rows} rows in {:.1} s (one transaction)",
        start.elapsed().as_secs_f64()
    );
    sizes(&work.db(), rows);

    let probe = format!("h{:03}", 42 % schedules);
    let commands: Vec<(String, Vec<String>)> = vec![
        (
            format!("history --schedule {probe} --limit 50"),
            vec!["history", "--schedule", &probe, "--limit", "50"],
        ),
        ("history --summary".into(), vec!["history", "--summary"]),
        (
            "history --limit 50".into(),
            vec!["history", "--limit", "50"],
        ),
        (
            "history --status failed --limit 50".into(),
            vec!["history", "--status", "failed", "--limit", "50"],
        ),
        (
            "history --since 1d".into(),
            vec!["history", "--since", "1d"],
        ),
        (
            format!("history --schedule {probe} --json --limit 50"),
            vec!["history", "--schedule", &probe, "--json", "--limit", "50"],
        ),
        (
            format!("history --schedule {probe} --summary"),
            vec!["history", "--schedule", &probe, "--summary"],
        ),
    ]
    .into_iter()
    .map(|(label, argv)| (label, argv.into_iter().map(String::from).collect()))
    .collect();
    let version = time_command(&work, None, &empty, &["--version"], runs);
    println!("\nprocess start alone (--version): {version}");
    println!(
        "command, median of {runs} (min-max, output): A = {rows} rows, with the config | B = {rows} rows, no config (--config /nonexistent: UTC, no next fire times) | C = the empty database, with the config"
    );
    let missing = work.path("nonexistent.yaml");
    for (label, argv) in &commands {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let a = time_command(&work, None, &work.db(), &argv, runs);
        let b = time_command(&work, Some(&missing), &work.db(), &argv, runs);
        let c = time_command(&work, None, &empty, &argv, runs);
        println!("  {label}\n      A {a}\n      B {b}\n      C {c}");
    }
    sql_plans(&work.db(), &probe);

    println!("\ndaemon start (run --dry-run, spawn → READY=1), median of 3:");
    for (label, db) in [
        ("on the filled database", work.db()),
        ("on the empty database", empty.clone()),
    ] {
        let mut ready = Vec::new();
        for _ in 0..3 {
            let mut daemon =
                Daemon::spawn_with(&work, &work.config(), &db, &["--dry-run"], None, false);
            if let Some(n) = daemon.wait_notice(0, "READY=1", Duration::from_secs(600)) {
                ready.push((n.at - daemon.spawned).as_secs_f64() * 1000.0);
            }
            daemon.stop(Duration::from_secs(30));
        }
        println!("  {label}: {} ms", summary(&ready, 0));
    }
    if args.flag("keep") {
        println!("kept {}", work.keep().display());
    }
}

/// Runs the binary with this folder's config (or `config`) and `db`; (success, stdout bytes,
/// stderr).
fn cli(work: &Workdir, config: Option<&Path>, db: &Path, argv: &[&str]) -> (bool, usize, String) {
    let out = Command::new(binary())
        .arg("--config")
        .arg(config.unwrap_or(&work.config()))
        .arg("--db")
        .arg(db)
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("run wecom-notify");
    (
        out.status.success(),
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// "12.3 ms (runs 11.9-14.0, 4521 B out)" or why it failed.
fn time_command(
    work: &Workdir,
    config: Option<&Path>,
    db: &Path,
    argv: &[&str],
    runs: usize,
) -> String {
    let mut times = Vec::new();
    let mut out_bytes = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (ok, bytes, stderr) = cli(work, config, db, argv);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !ok {
            let first = stderr.lines().last().unwrap_or("").to_string();
            return format!("FAILED: {first}");
        }
        out_bytes = bytes;
        times.push(ms);
    }
    let (lo, hi) = min_max(&times);
    format!(
        "{:.1} ms ({lo:.1}-{hi:.1}, {out_bytes} B out)",
        median(&times)
    )
}

/// Inserts `rows` realistic rows: mostly sent, 1 % failed, 1 % partial, 1 % missed, 2 % manual.
fn fill(db: &Path, rows: usize, schedules: usize) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO sends (schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app,
                   agent_id, msgtype, payload, errcode, errmsg, msgid, invaliduser, invalidparty, invalidtag,
                   unlicenseduser, pid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'ops', ?8, 'text', ?9, ?10, ?11, ?12, ?13, '', '', '', 4242)",
            )
            .unwrap();
        // One row every 10 s, the newest a minute ago.
        let t0 = Utc::now() - chrono::Duration::seconds(10 * rows as i64 + 60);
        for i in 0..rows {
            let schedule = format!("h{:03}", i % schedules);
            let slot = t0 + chrono::Duration::seconds(10 * i as i64);
            let slot_text = slot.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let done = (slot + chrono::Duration::seconds(1))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let trigger = if i % 50 == 7 { "manual" } else { "cron" };
            let (status, errcode, errmsg, invalid): (&str, Option<i64>, &str, &str) = match i % 100
            {
                0 => (
                    "failed",
                    Some(60020),
                    "not allow to access from your ip, hint: [1764300000_1_abcdef], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020",
                    "",
                ),
                1 => ("partial", Some(0), "ok", "lisi"),
                2 => ("missed", None, "", ""),
                _ => ("sent", Some(0), "ok", ""),
            };
            let msgid = if errcode == Some(0) {
                Some(format!("{:043x}", i as u128 * 0x9e37_79b9_7f4a_7c15))
            } else {
                None
            };
            let payload = format!(
                "{{\"touser\":\"zhangsan|lisi\",\"msgtype\":\"text\",\"agentid\":{AGENT},\"text\":{{\"content\":\"站会十分钟后开始 ({}) #{i}\"}},\"safe\":0,\"enable_id_trans\":0,\"enable_duplicate_check\":1,\"duplicate_check_interval\":1800}}",
                slot.format("%Y年%m月%d日 %H:%M")
            );
            insert
                .execute(rusqlite::params![
                    schedule,
                    trigger,
                    slot_text,
                    slot_text,
                    done,
                    status,
                    1 + i64::from(status == "failed") * 5,
                    AGENT,
                    payload,
                    errcode,
                    (!errmsg.is_empty()).then_some(errmsg),
                    msgid,
                    invalid,
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .ok();
}

/// File size, bytes per row, and (when SQLite has dbstat) the share of each table and index.
fn sizes(db: &Path, rows: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").ok();
    let bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    println!(
        "database: {:.1} MiB, {:.0} bytes per row (page size {})",
        bytes as f64 / 1048576.0,
        bytes as f64 / rows.max(1) as f64,
        conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0)
    );
    let stat = conn
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC");
    match stat {
        Ok(mut stmt) => {
            let parts: Vec<String> = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .filter(|(_, b)| *b > 64 * 1024)
                .map(|(name, b)| format!("{name} {:.0} B/row", b as f64 / rows.max(1) as f64))
                .collect();
            println!("  by table/index: {}", parts.join(", "));
        }
        Err(e) => println!("  (no dbstat: {e})"),
    }
}

/// The plans SQLite picks for the obvious queries behind `history`, as evidence for the figures.
fn sql_plans(db: &Path, probe: &str) {
    let conn = open_db(db);
    let queries = [
        (
            "by schedule, newest 50",
            format!("SELECT * FROM sends WHERE schedule = '{probe}' ORDER BY id DESC LIMIT 50"),
        ),
        (
            "per-schedule counts (naive summary)",
            "SELECT schedule, count(*), max(scheduled_at) FROM sends GROUP BY schedule".to_string(),
        ),
    ];
    println!("\nSQL alone, in this process (warm cache):");
    for (label, sql) in queries {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut times = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let mut stmt = conn.prepare(&sql).unwrap();
            let n = stmt.query_map([], |_| Ok(())).unwrap().count();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(n);
        }
        println!(
            "  {label}: {:.1} ms; plan: {}",
            median(&times),
            plan.join(" / ")
        );
    }
}
