//! SQLite beside PostgreSQL: the same daemon, the same fake WeCom, the history in a SQLite file
//! or in a throwaway PostgreSQL server on 127.0.0.1 (started here, as the tests start theirs).
//! Two measures per backend:
//! - a burst: N schedules on one slot every 10 s; how long after the slot the first, the
//!   median and the last message reach the fake, and when every row is finished;
//! - fire lag: M schedules every second; arrival at the fake − the slot, p50/p99/max.
//!
//! The slot of an arrival is read from its body (`bench NAME YYYY-MM-DD HH:MM:SS`). At the end
//! each backend's rows are counted: one per slot, every one `sent`.
//!
//! ```sh
//! cargo bench --bench backends -- --burst 1000 --slots 2 --lag-schedules 20 --lag-seconds 20
//! ```

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{NaiveDateTime, Utc};
use common::*;

/// The tests' throwaway server, used as it is.
#[path = "../tests/it/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

/// What a failed tool printed (the server's messages use it).
fn text(output: &std::process::Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const USAGE: &str = "\
cargo bench --bench backends -- [options]
  --burst N           schedules on one slot every 10 s (default 1000)
  --slots S           burst slots measured (default 2)
  --lag-schedules M   schedules every second for the lag (default 20)
  --lag-seconds T     seconds of the lag run (default 20)
  --only NAME         sqlite or postgres (default both)";

fn main() {
    let args = Args::parse(
        USAGE,
        &["burst", "slots", "lag-schedules", "lag-seconds", "only"],
    );
    args.only_flags(&[], USAGE);
    let burst: usize = args.num("burst", 1000);
    let slots: usize = args.num("slots", 2);
    let lag_schedules: usize = args.num("lag-schedules", 20);
    let lag_seconds: u64 = args.num("lag-seconds", 20);
    let only = args.str("only", "both");
    print_machine();
    for backend in ["sqlite", "postgres"] {
        if only != "both" && only != backend {
            continue;
        }
        let server = if backend == "postgres" {
            match postgres::Postgres::start() {
                Some(server) => Some(server),
                None => continue,
            }
        } else {
            None
        };
        println!("\n== {backend} ==");
        let database = |work: &Workdir| match &server {
            Some(server) => server.create_database(),
            None => work.db().display().to_string(),
        };
        run_burst(burst, slots, &database);
        run_lag(lag_schedules, lag_seconds, &database);
        if let Some(server) = &server {
            println!("(PostgreSQL server on 127.0.0.1:{})", server.port());
        }
    }
}

/// The slot a body names, and how long after it `at` is, in ms.
fn lag_of(content: &str, at: chrono::DateTime<Utc>) -> Option<f64> {
    let stamp = content.rsplitn(3, ' ').collect::<Vec<_>>();
    let text = format!("{} {}", stamp.get(1)?, stamp.first()?);
    let slot = NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S")
        .ok()?
        .and_utc();
    Some(ms_after(slot, at))
}

/// Arrival lags from the fake, per slot (by the body's slot text).
fn arrivals(fake: &Fake) -> Vec<(String, f64)> {
    fake.fake
        .messages()
        .iter()
        .filter_map(|m| {
            let content = m.json["text"]["content"].as_str()?;
            let slot = content.get(content.len().checked_sub(19)?..)?.to_string();
            Some((slot, lag_of(content, utc(m.at))?))
        })
        .collect()
}

fn spawn(fake: &Fake, work: &Workdir, database: &str, schedules: &str) -> Daemon {
    let config = format!("{}{schedules}", config_head(&fake.fake.base_url()));
    std::fs::write(work.config(), config).unwrap();
    let mut daemon =
        Daemon::spawn_with(work, &work.config(), Path::new(database), &[], None, false);
    daemon
        .wait_notice(0, "READY=1", Duration::from_secs(120))
        .expect("READY=1");
    daemon
}

fn run_burst(n: usize, slots: usize, database: &dyn Fn(&Workdir) -> String) {
    let fake = Fake::start();
    let work = Workdir::new();
    let db = database(&work);
    let schedules: String = (0..n)
        .map(|i| {
            schedule_item(
                &format!("b{i:05}"),
                "0/10 * * * * *",
                &format!("user{i:05}"),
            )
        })
        .collect();
    let daemon = spawn(&fake, &work, &db, &schedules);
    let first = next_boundary(SystemTime::now() + Duration::from_secs(1), 10);
    sleep_until_wall(first + Duration::from_secs(10 * slots as u64 - 1));
    // The last slot's sends: wait until every one arrived (or 9 s).
    let last_slot = utc(first + Duration::from_secs(10 * (slots as u64 - 1)));
    let last_text = last_slot.format("%Y-%m-%d %H:%M:%S").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(9);
    while std::time::Instant::now() < deadline
        && arrivals(&fake)
            .iter()
            .filter(|(s, _)| *s == last_text)
            .count()
            < n
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = daemon.stop(Duration::from_secs(60));
    let all = arrivals(&fake);
    for k in 0..slots {
        let slot = utc(first + Duration::from_secs(10 * k as u64))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let mut lags: Vec<f64> = all
            .iter()
            .filter(|(s, _)| *s == slot)
            .map(|(_, l)| *l)
            .collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        let (first_ms, last_ms) = min_max(&lags);
        println!(
            "burst slot {slot}: {}/{n} arrived; slot→first {first_ms:.1} ms, →median {:.1} ms, →last {last_ms:.1} ms",
            lags.len(),
            median(&lags)
        );
    }
    println!(
        "burst: {} gettoken call(s), at most {} requests in flight; stop {}",
        fake.fake.gettoken_calls(),
        fake.fake.max_in_flight(),
        stop.map_or("killed".to_string(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        ))
    );
}

fn run_lag(m: usize, seconds: u64, database: &dyn Fn(&Workdir) -> String) {
    let fake = Fake::start();
    let work = Workdir::new();
    let db = database(&work);
    let schedules: String = (0..m)
        .map(|i| schedule_item(&format!("l{i:03}"), "* * * * * *", &format!("user{i:03}")))
        .collect();
    let daemon = spawn(&fake, &work, &db, &schedules);
    // The first two seconds warm up (token, connections); then `seconds` of slots.
    let from = next_boundary(SystemTime::now() + Duration::from_secs(2), 1);
    sleep_until_wall(from + Duration::from_secs(seconds) + Duration::from_millis(900));
    let stop = daemon.stop(Duration::from_secs(60));
    let from = utc(from).format("%Y-%m-%d %H:%M:%S").to_string();
    let lags: Vec<f64> = arrivals(&fake)
        .into_iter()
        .filter(|(slot, _)| *slot >= from)
        .map(|(_, lag)| lag)
        .collect();
    let (p50, p99, max) = percentiles(&lags);
    println!(
        "fire lag, {m} schedules every second for {seconds} s: {} arrivals, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; stop {}",
        lags.len(),
        stop.map_or("killed".to_string(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        ))
    );
}
