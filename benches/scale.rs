//! Scale in schedules: for each size, a config of that many schedules with varied expressions
//! (none due during the benchmark) plus a few canaries firing every 5 s. Figures: `check` time,
//! start → `READY=1` (and how much of it is loading the config), CPU until the daemon settles,
//! idle CPU, RSS, SIGHUP reloads that change 1 % of the schedules (RELOADING=1 → READY=1), the
//! canaries' deliveries and lag, and the stop.
//!
//! ```sh
//! cargo bench --bench scale -- --sizes 1000,10000,100000 --idle-seconds 30
//! ```

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Timelike, Utc};
use common::*;

const USAGE: &str = "\
cargo bench --bench scale -- [options]
  --sizes LIST         schedule counts (default 1000,10000,100000)
  --idle-seconds S     idle CPU window after start-up settles (default 30)
  --reloads R          SIGHUP reloads per size, each changing 1 % of the schedules (default 3)
  --canaries K         extra schedules firing every 5 s, to check the daemon still fires (default 2)
  --timeout S          give up on a size whose start, reload or stop takes longer (default 600)
  --keep               keep the temporary folders (config, database, daemon log)";

fn main() {
    let args = Args::parse(
        USAGE,
        &["sizes", "idle-seconds", "reloads", "canaries", "timeout"],
    );
    args.only_flags(&["keep"], USAGE);
    let sizes: Vec<usize> = args.list("sizes", "1000,10000,100000");
    let idle: u64 = args.num("idle-seconds", 30);
    let reloads: usize = args.num("reloads", 3);
    let canaries: usize = args.num("canaries", 2);
    let timeout = Duration::from_secs(args.num("timeout", 600));
    print_machine();
    println!(
        "scale: sizes {sizes:?}, idle window {idle} s, {reloads} reload(s) of 1 %, {canaries} canaries '*/5 * * * * *'"
    );
    let mut table = Vec::new();
    for size in sizes {
        println!("\n== {size} schedules ==");
        match one_size(size, idle, reloads, canaries, timeout, args.flag("keep")) {
            Some(row) => table.push(row),
            None => {
                println!("stopping here: {size} schedules did not finish within the timeout");
                break;
            }
        }
    }
    println!("\nsummary:");
    println!(
        "{:>8} | {:>9} | {:>10} | {:>10} | {:>11} | {:>13} | {:>10} | {:>9} | {:>9} | {:>8}",
        "size",
        "check s",
        "→READY s",
        "settle s",
        "idle CPU %",
        "reload s",
        "RSS MiB",
        "peak MiB",
        "canaries",
        "stop s"
    );
    for r in &table {
        println!(
            "{:>8} | {:>9.2} | {:>10.2} | {:>10.1} | {:>11.2} | {:>13} | {:>10.1} | {:>9.1} | {:>9} | {:>8.2}",
            r.size,
            r.check_s,
            r.ready_s,
            r.settle_s,
            r.idle_cpu_pct,
            r.reload,
            r.rss_mib,
            r.peak_mib,
            r.canaries,
            r.stop_s
        );
    }
}

struct Row {
    size: usize,
    check_s: f64,
    ready_s: f64,
    settle_s: f64,
    idle_cpu_pct: f64,
    reload: String,
    rss_mib: f64,
    peak_mib: f64,
    canaries: String,
    stop_s: f64,
}

/// Hours (UTC) no generated schedule may fire in: now and the next two.
fn busy_hours() -> [u32; 3] {
    let h = Utc::now().hour();
    [h, (h + 1) % 24, (h + 2) % 24]
}

/// A small deterministic generator, so a size always gets the same config.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `size` schedules with varied expressions, zones, recipients and message kinds; schedule `i`
/// carries a version mark once `reload` has reached `i % 100 + 1` (so each reload changes 1 %).
fn config_text(base_url: &str, size: usize, reload: usize, canaries: usize) -> String {
    let busy = busy_hours();
    let mut rng = Lcg(42);
    let mut text = config_head(base_url);
    for i in 0..size {
        let (zone, offset) = match rng.next(4) {
            0 => (Some("Asia/Shanghai"), 8),
            1 => (Some("Asia/Tokyo"), 9),
            _ => (None, 0),
        };
        // A UTC hour outside the busy ones, written in the schedule's zone.
        let pick_hour = |rng: &mut Lcg| loop {
            let utc_hour = rng.next(24) as u32;
            if !busy.contains(&utc_hour) {
                return (utc_hour + offset) % 24;
            }
        };
        let h = pick_hour(&mut rng);
        let h2 = pick_hour(&mut rng);
        let m = rng.next(60);
        let s = rng.next(60);
        let cron = match rng.next(10) {
            0 => format!("{s} {m} {h} * * *"),
            1 => format!("{m} {h} * * 1-5"),
            2 => format!("0 {m} {h} * * Mon,Wed,Fri"),
            3 => format!("{s} */15 {h} * * *"),
            4 => format!("0 {m} {h} 1,15 * *"),
            5 => format!("{m} {h},{h2} * * *"),
            6 => format!("0 0/20 {h} * * Sat,Sun"),
            7 => format!("{s} {m} {h} * 1-6 *"),
            8 => format!("{m} {h} 28-31 * *"),
            _ => format!("30 {m} {h} * * 0"),
        };
        let mark = if i % 100 < reload {
            format!(" v{}", i % 100 + 1)
        } else {
            String::new()
        };
        let to = match rng.next(3) {
            0 => format!("users: [u{}, u{}]", rng.next(5000), rng.next(5000)),
            1 => format!("parties: ['{}']", rng.next(300)),
            _ => format!("users: [u{}], tags: ['{}']", rng.next(5000), rng.next(50)),
        };
        let message = match rng.next(4) {
            0 => format!(
                "textcard: {{ title: '周报提醒 {{{{ date }}}}{mark}', description: '<div class=\"gray\">{{{{ date_cn }}}}</div>请提交', url: 'https://example.com/r/{i}' }}"
            ),
            1 => {
                format!("text: {{ content: '站会 {{{{ date_cn }}}} {{{{ weekday_cn }}}}{mark}' }}")
            }
            2 => format!("text: {{ content: 'reminder {i} at {{{{ time }}}}{mark}' }}"),
            _ => format!("text: {{ content: 'on-call {{{{ slot:%Y年第%V周 }}}}{mark}' }}"),
        };
        let zone = zone.map_or(String::new(), |z| format!(", timezone: {z}"));
        text.push_str(&format!(
            "  - {{ name: s{i:06}, cron: '{cron}'{zone}, to: {{ {to} }}, {message} }}\n"
        ));
    }
    for k in 0..canaries {
        text.push_str(&schedule_item(
            &format!("canary-{k}"),
            "*/5 * * * * *",
            &format!("canary{k}"),
        ));
    }
    text
}

fn one_size(
    size: usize,
    idle: u64,
    reloads: usize,
    canaries: usize,
    timeout: Duration,
    keep: bool,
) -> Option<Row> {
    let fake = Fake::start();
    let work = Workdir::new();
    let text = config_text(&fake.fake.base_url(), size, 0, canaries);
    std::fs::write(work.config(), &text).unwrap();
    println!("config: {:.1} MiB", text.len() as f64 / 1048576.0);

    // `check` loads and validates exactly as `run` does (plus printing the schedules).
    let start = Instant::now();
    let check = Command::new(binary())
        .arg("--config")
        .arg(work.config())
        .args(["check", "--next", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run check");
    let check_s = start.elapsed().as_secs_f64();
    println!("check --next 1: {check_s:.2} s (exit {check})");

    let mut daemon = Daemon::spawn(&work, &[], None, true);
    let Some(ready) = daemon.wait_notice(0, "READY=1", timeout) else {
        println!("no READY=1 within {} s", timeout.as_secs());
        if keep {
            println!("kept {}", work.keep().display());
        }
        return None;
    };
    let ready_s = (ready.at - daemon.spawned).as_secs_f64();
    let loaded_s = log_time(&work, "database open")
        .map(|at| ms_after(utc(daemon.spawned_wall), at) / 1000.0)
        .unwrap_or(f64::NAN);
    let (rss_ready, _) = daemon.memory_kib();
    println!(
        "start→READY {ready_s:.2} s (config loaded and database open at {loaded_s:.2} s); CPU {:.2} s; RSS at READY {:.1} MiB",
        daemon.cpu_seconds(),
        mib(rss_ready)
    );

    let (settle_s, settle_cpu) = settle(&daemon, Duration::from_secs(300));
    println!(
        "after READY the daemon stayed busy for {settle_s:.1} s ({settle_cpu:.2} CPU s) arming its timers; {} threads",
        daemon.threads()
    );
    let (idle_cpu, peak) = cpu_over(daemon.pid, Duration::from_secs(idle));
    let idle_cpu_pct = idle_cpu / idle as f64 * 100.0;
    let (rss, hwm) = daemon.memory_kib();
    println!(
        "idle over {idle} s: {idle_cpu:.2} CPU s ({idle_cpu_pct:.2} % of a core, worst second {:.1} %); RSS {:.1} MiB ({:.1} anonymous), peak {:.1} MiB ({:.2} KiB per schedule)",
        peak * 100.0,
        mib(rss),
        mib(proc_status_field(daemon.pid, "RssAnon:").unwrap_or(0)),
        mib(hwm),
        rss as f64 / size as f64
    );

    let mut reload_s = Vec::new();
    let mut timed_out = false;
    for k in 1..=reloads {
        std::fs::write(
            work.config(),
            config_text(&fake.fake.base_url(), size, k, canaries),
        )
        .unwrap();
        let from = daemon.notice_count();
        let cpu0 = daemon.cpu_seconds();
        let sent = Instant::now();
        daemon.signal(libc::SIGHUP);
        let Some(reloading) = daemon.wait_notice(from, "RELOADING=1", timeout) else {
            timed_out = true;
            break;
        };
        let Some(done) = daemon.wait_notice(from, "READY=1", timeout) else {
            println!("reload {k}: no READY=1 within {} s", timeout.as_secs());
            timed_out = true;
            break;
        };
        let (busy_s, _) = settle(&daemon, Duration::from_secs(120));
        let secs = (done.at - reloading.at).as_secs_f64();
        reload_s.push(secs);
        let anon = proc_status_field(daemon.pid, "RssAnon:").unwrap_or(0);
        println!(
            "reload {k} ({} schedules changed): SIGHUP→RELOADING {:.0} ms, RELOADING→READY {:.2} s; busy {busy_s:.1} s after; CPU {:.2} s in all; RSS {:.1} MiB ({:.1} anonymous)",
            size / 100,
            (reloading.at - sent).as_secs_f64() * 1000.0,
            secs,
            daemon.cpu_seconds() - cpu0,
            mib(daemon.memory_kib().0),
            mib(anon)
        );
    }
    let (rss_after, hwm_after) = daemon.memory_kib();
    if reloads > 0 {
        println!(
            "after the reloads: RSS {:.1} MiB, peak {:.1} MiB",
            mib(rss_after),
            mib(hwm_after)
        );
        std::thread::sleep(Duration::from_secs(idle));
        println!(
            "{idle} s later: RSS {:.1} MiB ({:.1} anonymous)",
            mib(daemon.memory_kib().0),
            mib(proc_status_field(daemon.pid, "RssAnon:").unwrap_or(0))
        );
    }
    let stopped_at = SystemTime::now();
    let stop = daemon.stop(timeout);
    let stop_s = stop.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "stop (SIGTERM → exit): {}",
        stop.map_or("did not exit; killed".to_string(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    );

    // The canaries: every 5-second slot from READY to the stop, per canary.
    let rows = rows_by_payload(&work.db());
    let mut lags = Vec::new();
    for m in fake.fake.messages() {
        if let Some((_, slot, _)) = rows.get(&m.raw) {
            lags.push(ms_after(parse_db_time(slot).unwrap(), utc(m.at)));
        }
    }
    let first = next_boundary(ready.wall + Duration::from_millis(100), 5);
    let span = stopped_at
        .duration_since(first)
        .unwrap_or_default()
        .as_secs();
    let expected = canaries * (span / 5 + 1) as usize;
    let (p50, _, max) = percentiles(&lags);
    let canary = format!("{}/{}", lags.len(), expected);
    println!(
        "canaries: {} of ~{expected} slots delivered, lag p50 {p50:.1} ms, max {max:.1} ms",
        lags.len()
    );
    let refused = count_log_lines(&work.log(), "refused a job");
    println!("daemon log: {refused} 'tokio-cron-scheduler refused a job' fallbacks");
    print_error_kinds(&work.log());
    if keep {
        println!("kept {}", work.keep().display());
    }
    if timed_out {
        return None;
    }
    let reload = if reload_s.is_empty() {
        "-".to_string()
    } else {
        let (lo, hi) = min_max(&reload_s);
        format!("{:.2} ({lo:.2}-{hi:.2})", median(&reload_s))
    };
    Some(Row {
        size,
        check_s,
        ready_s,
        settle_s,
        idle_cpu_pct,
        reload,
        rss_mib: mib(rss),
        peak_mib: mib(hwm),
        canaries: canary,
        stop_s,
    })
}

/// Waits until a whole second passes with the daemon under 2 % of a core (or `limit`);
/// returns how long that took (excluding the quiet second) and the CPU seconds used.
fn settle(daemon: &Daemon, limit: Duration) -> (f64, f64) {
    let start = Instant::now();
    let cpu0 = daemon.cpu_seconds();
    let mut last = cpu0;
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        let now = daemon.cpu_seconds();
        if now - last < 0.02 {
            return ((start.elapsed().as_secs_f64() - 1.0).max(0.0), last - cpu0);
        }
        last = now;
    }
    (start.elapsed().as_secs_f64(), last - cpu0)
}

/// The timestamp of the first JSON log event whose message is `message`.
fn log_time(work: &Workdir, message: &str) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(work.log()).ok()?;
    let needle = format!("\"message\":\"{message}\"");
    let line = text.lines().find(|l| l.contains(&needle))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    parse_db_time(v["timestamp"].as_str()?)
}
