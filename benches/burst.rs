//! Burst fan-out: N schedules sharing every slot (`0/P * * * * *`), each to its own user (so
//! the per-member limiter never holds one back), with the fake WeCom answering after each
//! delay in turn. Per slot: slot → first and last arrival, sends per second, the daemon's CPU;
//! then gettoken calls, the most requests the fake had in flight at once and the TCP
//! connections it accepted, peak RSS, and whether every slot of every schedule has exactly one
//! row.
//!
//! ```sh
//! cargo bench --bench burst -- --schedules 1000 --slots 3 --period 10 --delays 0,50
//! ```

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use common::fake_wecom::Outcome;
use common::*;

const USAGE: &str = "\
cargo bench --bench burst -- [options]
  --schedules N   schedules sharing each slot (default 1000)
  --slots K       slots measured per delay (default 3)
  --period P      seconds between slots: cron '0/P * * * * *' (default 10)
  --delays LIST   the fake's answer delay in ms, one daemon run each (default 0,50)
  --trace         enable the timer's debug events: when each timer woke, per slot
  --keep          keep the temporary folders (config, database, daemon log)";

fn main() {
    let args = Args::parse(USAGE, &["schedules", "slots", "period", "delays"]);
    args.only_flags(&["trace", "keep"], USAGE);
    let n: usize = args.num("schedules", 1000);
    let slots: usize = args.num("slots", 3);
    let period: u64 = args.num("period", 10);
    let delays: Vec<u64> = args.list("delays", "0,50");
    let trace = args.flag("trace");
    print_machine();
    println!(
        "burst fan-out: {n} schedules on '0/{period} * * * * *', {slots} slot(s) per delay, delays {delays:?} ms, timer trace {}",
        if trace { "on" } else { "off" }
    );
    for delay in delays {
        one_delay(n, slots, period, delay, trace, args.flag("keep"));
    }
}

struct SlotFigures {
    slot: DateTime<Utc>,
    cpu: f64,
    done_ms: f64,
    finished: i64,
}

fn one_delay(n: usize, slots: usize, period: u64, delay_ms: u64, trace: bool, keep: bool) {
    println!("\n== fake answers after {delay_ms} ms ==");
    let fake = Fake::start();
    fake.fake.set_send_delay(Duration::from_millis(delay_ms));
    let work = Workdir::new();
    let mut config = config_head(&fake.fake.base_url());
    for i in 0..n {
        config.push_str(&schedule_item(
            &format!("b{i:05}"),
            &format!("0/{period} * * * * *"),
            &format!("user{i:05}"),
        ));
    }
    std::fs::write(work.config(), config).unwrap();
    let filter =
        trace.then_some("info,tokio_cron_scheduler=warn,wecom_notify::daemon::timer=debug");
    let mut daemon = Daemon::spawn(&work, &[], filter, trace);
    let ready = daemon
        .wait_notice(0, "READY=1", Duration::from_secs(300))
        .expect("READY=1");
    let (rss_ready, _) = daemon.memory_kib();
    println!(
        "start→READY {:.0} ms, RSS at READY {:.1} MiB, {} threads",
        (ready.at - daemon.spawned).as_secs_f64() * 1000.0,
        mib(rss_ready),
        daemon.threads()
    );
    let conn = open_db(&work.db());
    let mut figures = Vec::new();
    let mut boundary = next_boundary(ready.wall + Duration::from_secs(1), period);
    for _ in 0..slots {
        sleep_until_wall(boundary - Duration::from_millis(700));
        let cpu0 = daemon.cpu_seconds();
        let slot = utc(boundary);
        let slot_text = slot.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let deadline = Instant::now()
            + boundary
                .duration_since(SystemTime::now())
                .unwrap_or_default()
            + Duration::from_secs(period)
            - Duration::from_millis(800);
        let mut done_ms = f64::NAN;
        let mut finished = 0;
        while Instant::now() < deadline {
            finished = conn
                .query_row(
                    "SELECT count(*) FROM sends WHERE scheduled_at = ?1 AND status <> 'pending'",
                    [&slot_text],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            if finished as usize >= n {
                done_ms = ms_after(slot, Utc::now());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cpu = daemon.cpu_seconds() - cpu0;
        figures.push(SlotFigures {
            slot,
            cpu,
            done_ms,
            finished,
        });
        boundary += Duration::from_secs(period);
    }
    let (rss, hwm) = daemon.memory_kib();
    let threads = daemon.threads();
    let stop = daemon.stop(Duration::from_secs(60));
    drop(conn);

    // Arrivals per slot, from the fake, matched to rows by payload.
    let rows = rows_by_payload(&work.db());
    let mut arrivals: HashMap<String, Vec<f64>> = HashMap::new();
    let messages = fake.fake.messages();
    for m in &messages {
        if let Some((_, slot, _)) = rows.get(&m.raw) {
            let lag = ms_after(parse_db_time(slot).unwrap(), utc(m.at));
            arrivals.entry(slot.clone()).or_default().push(lag);
        }
    }
    let wakes = if trace {
        firing_events(&work.log())
    } else {
        HashMap::new()
    };
    let mut total_cpu = 0.0;
    let mut total_sends = 0;
    for f in &figures {
        let slot_text = f.slot.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut lags = arrivals.get(&slot_text).cloned().unwrap_or_default();
        lags.sort_by(|a, b| a.total_cmp(b));
        let (first, last) = min_max(&lags);
        let (p50, _, _) = percentiles(&lags);
        total_cpu += f.cpu;
        total_sends += lags.len();
        let arrivals = if lags.is_empty() {
            "no arrival".to_string()
        } else {
            format!(
                "slot→first {first:.1} ms, →median {p50:.1} ms, →last {last:.1} ms ({:.0} sends/s)",
                lags.len() as f64 / (last / 1000.0)
            )
        };
        let finished = if f.done_ms.is_nan() {
            format!(
                "only {} of {n} rows finished before the next slot",
                f.finished
            )
        } else {
            format!("all rows finished at +{:.0} ms", f.done_ms)
        };
        println!(
            "slot {}: {}/{n} arrived; {arrivals}; {finished}; daemon CPU {:.2} s{}",
            f.slot.format("%H:%M:%S"),
            lags.len(),
            f.cpu,
            per_thousand(f.cpu, lags.len())
        );
        if trace {
            let woke: Vec<f64> = wakes
                .iter()
                .filter(|((_, s), _)| *s == slot_text)
                .map(|(_, at)| ms_after(f.slot, *at))
                .collect();
            if woke.is_empty() {
                println!("           no timer woke for this slot");
            } else {
                let (w50, w99, wmax) = percentiles(&woke);
                let (wmin, _) = min_max(&woke);
                println!(
                    "           timers woke: {} of {n}, first {wmin:.1} ms, p50 {w50:.1}, p99 {w99:.1}, last {wmax:.1} ms after the slot",
                    woke.len()
                );
            }
        }
    }
    println!(
        "fake WeCom: at most {} requests in flight at once, {} TCP connections accepted",
        fake.fake.max_in_flight(),
        fake.fake.connections()
    );
    println!(
        "over the measured slots: daemon CPU {total_cpu:.2} s{}; gettoken calls: {}; RSS at the end {:.1} MiB, peak (VmHWM) {:.1} MiB, {threads} threads; stop took {}",
        per_thousand(total_cpu, total_sends),
        fake.fake.gettoken_calls(),
        mib(rss),
        mib(hwm),
        stop.map_or("too long (killed)".to_string(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        ))
    );
    // Exactly one row per (schedule, slot), every one sent, every one delivered once.
    let db = open_db(&work.db());
    let dup_slots: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT 1 FROM sends WHERE trigger = 'cron' GROUP BY schedule, scheduled_at HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut statuses = db
        .prepare("SELECT status, count(*) FROM sends GROUP BY status")
        .unwrap();
    let statuses: Vec<String> = statuses
        .query_map([], |r| {
            Ok(format!(
                "{} {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut per_slot = db
        .prepare("SELECT scheduled_at, count(*), count(DISTINCT schedule) FROM sends GROUP BY scheduled_at ORDER BY scheduled_at")
        .unwrap();
    let per_slot: Vec<String> = per_slot
        .query_map([], |r| {
            Ok(format!(
                "{} {}/{}",
                &r.get::<_, String>(0)?[11..19],
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let all = fake.fake.all_requests();
    let duplicates = all
        .iter()
        .filter(|r| r.outcome == Outcome::Duplicate)
        .count();
    println!(
        "rows: {} ({}); slots with more than one row for a schedule: {dup_slots}; rows/schedules per slot: {}; fake: {} send requests, {} delivered, {} dropped as duplicates",
        rows.len(),
        statuses.join(", "),
        per_slot.join(", "),
        all.len(),
        messages.len(),
        duplicates
    );
    let refused = count_log_lines(&work.log(), "refused a job");
    let held = count_log_lines(&work.log(), "held back");
    println!(
        "daemon log: {refused} 'tokio-cron-scheduler refused a job' fallbacks, {held} 'held back' lines from the limiter"
    );
    print_error_kinds(&work.log());
    if keep {
        println!("kept {}", work.keep().display());
    }
}

/// " (0.47 s per 1000 sends)", or nothing when there was no send to divide by.
fn per_thousand(cpu: f64, sends: usize) -> String {
    if sends == 0 {
        String::new()
    } else {
        format!(" ({:.2} s per 1000 sends)", cpu / sends as f64 * 1000.0)
    }
}
