//! Fire precision: N schedules firing every second (and, separately, every 5 s, which takes
//! the coarse-alarm path) for S seconds against the fake WeCom. Lag = arrival at the fake −
//! the slot (`scheduled_at` of the row whose payload the fake received), p50/p99/max, split
//! into the timer's wake-up (its `firing` debug event) and the dispatch that follows.
//!
//! A baseline shows what tokio-cron-scheduler's 500 ms poll would cost if its cron jobs fired
//! the sends directly: the same number of `* * * * * *` jobs run in this process.
//!
//! ```sh
//! cargo bench --bench fire_precision -- --schedules 20 --seconds 30 --runs 3
//! ```

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Timelike, Utc};
use common::*;

const USAGE: &str = "\
cargo bench --bench fire_precision -- [options]
  --schedules N       schedules per run (default 20), each to its own user
  --seconds S         how long each run fires (default 30; at 1/s, >30 meets the per-member limiter)
  --runs R            runs per phase (default 3); figures are per run and their median
  --cron EXPR         phase 1 expression (default '* * * * * *': slots 1 s apart, precise sleep only)
  --alarm-cron EXPR   phase 2 expression (default '*/5 * * * * *': slots 5 s apart, coarse alarm
                      + precise sleep); 'none' skips it
  --tcs-seconds S     seconds of the tokio-cron-scheduler baseline (default 10; 0 skips it)
  --no-trace          do not enable the timer's debug events (no wake/dispatch split)
  --keep              keep the temporary folders (config, database, daemon log)";

fn main() {
    let args = Args::parse(
        USAGE,
        &[
            "schedules",
            "seconds",
            "runs",
            "cron",
            "alarm-cron",
            "tcs-seconds",
        ],
    );
    args.only_flags(&["no-trace", "keep"], USAGE);
    let schedules: usize = args.num("schedules", 20);
    let seconds: u64 = args.num("seconds", 30);
    let runs: usize = args.num("runs", 3);
    let trace = !args.flag("no-trace");
    let keep = args.flag("keep");
    print_machine();
    println!(
        "fire precision: {schedules} schedules, {seconds} s per run, {runs} run(s) per phase, timer trace {}",
        if trace { "on" } else { "off" }
    );
    let mut phases = vec![args.str("cron", "* * * * * *")];
    let alarm = args.str("alarm-cron", "*/5 * * * * *");
    if alarm != "none" {
        phases.push(alarm);
    }
    for cron in &phases {
        println!("\n== phase: cron '{cron}' ==");
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut maxs = Vec::new();
        for run in 1..=runs {
            let r = one_run(cron, schedules, seconds, trace, keep);
            println!(
                "run {run}: {} sends ({} expected, {} missing, {} not 'sent'), lag ms p50 {:.2} p99 {:.2} max {:.2}",
                r.lags.len(),
                r.expected,
                r.missing,
                r.not_sent,
                r.p.0,
                r.p.1,
                r.p.2
            );
            if trace {
                println!(
                    "       timer wake (firing event − slot) ms p50 {:.2} p99 {:.2} max {:.2}; dispatch (arrival − wake) ms p50 {:.2} p99 {:.2} max {:.2}",
                    r.wake.0, r.wake.1, r.wake.2, r.dispatch.0, r.dispatch.1, r.dispatch.2
                );
            }
            println!(
                "       early arrivals {}; daemon CPU {:.2} s over the run; RSS {:.1} MiB (peak {:.1}); start→READY {:.0} ms",
                r.early,
                r.cpu,
                mib(r.rss.0),
                mib(r.rss.1),
                r.ready_ms
            );
            if !r.late_slots.is_empty() {
                println!(
                    "       lag by second of the run (ms, max): {}",
                    r.late_slots
                );
            }
            p50s.push(r.p.0);
            p99s.push(r.p.1);
            maxs.push(r.p.2);
        }
        println!(
            "phase '{cron}': lag p50 {} ms, p99 {} ms, max {} ms",
            summary(&p50s, 2),
            summary(&p99s, 2),
            summary(&maxs, 2)
        );
    }
    let tcs_seconds: u64 = args.num("tcs-seconds", 10);
    if tcs_seconds > 0 {
        tcs_baseline(schedules, tcs_seconds);
    }
}

struct RunResult {
    lags: Vec<f64>,
    p: (f64, f64, f64),
    wake: (f64, f64, f64),
    dispatch: (f64, f64, f64),
    expected: usize,
    missing: usize,
    not_sent: usize,
    early: usize,
    cpu: f64,
    rss: (u64, u64),
    ready_ms: f64,
    late_slots: String,
}

fn one_run(cron: &str, n: usize, seconds: u64, trace: bool, keep: bool) -> RunResult {
    let fake = Fake::start();
    let work = Workdir::new();
    let mut config = config_head(&fake.fake.base_url());
    for i in 0..n {
        config.push_str(&schedule_item(
            &format!("p{i:03}"),
            cron,
            &format!("u{i:03}"),
        ));
    }
    std::fs::write(work.config(), config).unwrap();
    let filter =
        trace.then_some("info,tokio_cron_scheduler=warn,wecom_notify::daemon::timer=debug");
    let mut daemon = Daemon::spawn(&work, &[], filter, true);
    let ready = daemon
        .wait_notice(0, "READY=1", Duration::from_secs(120))
        .expect("READY=1");
    let ready_ms = (ready.at - daemon.spawned).as_secs_f64() * 1000.0;
    let cpu0 = daemon.cpu_seconds();
    let started = utc(ready.wall);
    std::thread::sleep(Duration::from_secs(seconds));
    let stop_firing_at = utc(SystemTime::now());
    // Let the last sends arrive, then stop.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = daemon.cpu_seconds() - cpu0;
    let rss = daemon.memory_kib();
    daemon.stop(Duration::from_secs(30));

    let rows = rows_by_payload(&work.db());
    let firing = if trace {
        firing_events(&work.log())
    } else {
        HashMap::new()
    };
    let messages = fake.fake.messages();
    let mut lags = Vec::new();
    let mut wakes = Vec::new();
    let mut dispatches = Vec::new();
    let mut early = 0;
    let mut by_second: BTreeMap<i64, f64> = BTreeMap::new();
    for m in &messages {
        let Some((schedule, slot_text, _)) = rows.get(&m.raw) else {
            continue;
        };
        let slot = parse_db_time(slot_text).unwrap();
        if slot > stop_firing_at {
            continue;
        }
        let at = utc(m.at);
        let lag = ms_after(slot, at);
        if lag < 0.0 {
            early += 1;
        }
        lags.push(lag);
        let second = (slot - started).num_seconds();
        let e = by_second.entry(second).or_insert(f64::MIN);
        *e = e.max(lag);
        if let Some(woke) = firing.get(&(schedule.clone(), slot_text.clone())) {
            wakes.push(ms_after(slot, *woke));
            dispatches.push(ms_after(*woke, at));
        }
    }
    // Every slot of every schedule between the first and the last slot seen must have a row.
    let mut slots_by_schedule: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    let mut not_sent = 0;
    for (schedule, slot, status) in rows.values() {
        let slot = parse_db_time(slot).unwrap();
        if slot > stop_firing_at {
            continue;
        }
        if status != "sent" {
            not_sent += 1;
        }
        slots_by_schedule.entry(schedule).or_default().push(slot);
    }
    let period = cron_period_s(cron);
    let first = slots_by_schedule.values().flatten().min().copied();
    let last = slots_by_schedule.values().flatten().max().copied();
    let expected = match (first, last) {
        (Some(a), Some(b)) => n * (((b - a).num_seconds() / period) as usize + 1),
        _ => 0,
    };
    let missing = expected.saturating_sub(lags.len());
    // The worst lag per second of the run, to see whether it clusters (start-up, GC-like pauses).
    let worst: Vec<String> = by_second
        .iter()
        .filter(|(_, lag)| **lag > 20.0)
        .map(|(s, lag)| format!("t+{s}s:{lag:.0}"))
        .collect();
    if keep {
        println!("       kept {}", work.keep().display());
    }
    RunResult {
        p: percentiles(&lags),
        wake: percentiles(&wakes),
        dispatch: percentiles(&dispatches),
        lags,
        expected,
        missing,
        not_sent,
        early,
        cpu,
        rss,
        ready_ms,
        late_slots: worst.join(" "),
    }
}

/// Seconds between slots of the simple expressions this benchmark uses: `*`, `*/N` or `0/N` in
/// the seconds field, or a fixed second with `*`, `*/N` or `0/N` minutes (else an hour).
fn cron_period_s(cron: &str) -> i64 {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let step = |field: &str| -> Option<i64> {
        if field == "*" {
            return Some(1);
        }
        field
            .strip_prefix("*/")
            .or_else(|| field.strip_prefix("0/"))
            .and_then(|s| s.parse().ok())
    };
    match (fields.first(), fields.get(1)) {
        (Some(seconds), _) if step(seconds).is_some() => step(seconds).unwrap_or(1),
        (Some(_), Some(minutes)) => step(minutes).map_or(3600, |m| m * 60),
        _ => 1,
    }
}

/// What the crate's own cron jobs would give: `n` jobs `* * * * * *`, each run's lag behind the
/// whole second it belongs to. The lag is the phase of the crate's 500 ms poll, which is fixed
/// when its scheduler starts, so the time is split into 2-second runs of fresh schedulers
/// started at spread-out offsets within the second.
fn tcs_baseline(n: usize, seconds: u64) {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let restarts = (seconds / 2).max(1);
    println!(
        "\n== baseline: {n} tokio-cron-scheduler cron jobs '* * * * * *' in this process, {restarts} scheduler(s) x 2 s =="
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fired: Arc<Mutex<Vec<DateTime<Utc>>>> = Arc::default();
    for k in 0..restarts {
        // Start at whole second + k/restarts of the 500 ms poll period.
        let offset = Duration::from_millis(500 * k / restarts);
        sleep_until_wall(next_boundary(SystemTime::now(), 1) + offset);
        runtime.block_on(async {
            let mut scheduler = JobScheduler::new().await.unwrap();
            for _ in 0..n {
                let fired = fired.clone();
                let job = Job::new_async("* * * * * *", move |_, _| {
                    let fired = fired.clone();
                    Box::pin(async move {
                        fired.lock().unwrap().push(Utc::now());
                    })
                })
                .unwrap();
                scheduler.add(job).await.unwrap();
            }
            scheduler.start().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2000)).await;
            let _ = scheduler.shutdown().await;
        });
    }
    let fired = fired.lock().unwrap();
    // A job belongs to the last whole second before it ran (its lag is below a second).
    let lags: Vec<f64> = fired
        .iter()
        .map(|t| f64::from(t.nanosecond() % 1_000_000_000) / 1e6)
        .collect();
    let (p50, p99, max) = percentiles(&lags);
    println!(
        "{} job runs: lag behind the whole second ms p50 {p50:.1} p99 {p99:.1} max {max:.1}",
        fired.len()
    );
}
