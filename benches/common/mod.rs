//! Shared by every benchmark: arguments, the fake WeCom (the very one the tests use), a
//! temporary folder with a config, the release binary as a child process with its own
//! `NOTIFY_SOCKET`, CPU and memory read from `/proc`, and small statistics helpers.
//!
//! Everything here is measurement plumbing: no figure is judged, only printed.
#![allow(dead_code)]

#[path = "../../tests/it/support/fake_wecom.rs"]
pub mod fake_wecom;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

pub use fake_wecom::FakeWeCom;

/// The fake app's credentials (any values: the fake and the config just have to agree).
pub const CORP: &str = "wwbenchcorp00001";
pub const SECRET: &str = "bench-secret-0123456789";
pub const AGENT: i64 = 1000002;

/// The release binary cargo built for this bench target.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wecom-notify")
}

// ---------------------------------------------------------------- arguments

/// `--key value` pairs and bare `--flag`s. `cargo bench` adds `--bench`, which is ignored.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `std::env::args`; `known` lists the keys that take a value.
    pub fn parse(usage: &str, known: &[&str]) -> Args {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(key) = arg.strip_prefix("--") else {
                eprintln!("unexpected argument {arg:?}\n{usage}");
                std::process::exit(2);
            };
            let (key, inline) = match key.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (key.to_string(), None),
            };
            if known.contains(&key.as_str()) {
                let value = inline.or_else(|| it.next()).unwrap_or_else(|| {
                    eprintln!("--{key} needs a value\n{usage}");
                    std::process::exit(2);
                });
                values.insert(key, value);
            } else {
                flags.push(key);
            }
        }
        Args { values, flags }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// Rejects unknown flags (typos must not silently change a benchmark).
    pub fn only_flags(&self, allowed: &[&str], usage: &str) {
        if let Some(f) = self.flags.iter().find(|f| !allowed.contains(&f.as_str())) {
            eprintln!("unknown option --{f}\n{usage}");
            std::process::exit(2);
        }
    }

    pub fn str(&self, key: &str, default: &str) -> String {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.values.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{key}: cannot read {v:?} as a number");
                std::process::exit(2);
            }),
        }
    }

    pub fn list<T: std::str::FromStr>(&self, key: &str, default: &str) -> Vec<T> {
        let text = self.str(key, default);
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim().parse().unwrap_or_else(|_| {
                    eprintln!("--{key}: cannot read {s:?}");
                    std::process::exit(2);
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------- the fake

/// A multi-threaded runtime serving the fake; the benchmark's own logic stays synchronous.
pub struct Fake {
    pub fake: FakeWeCom,
    pub runtime: tokio::runtime::Runtime,
}

impl Fake {
    pub fn start() -> Fake {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = runtime.block_on(FakeWeCom::start());
        fake.add_app(CORP, SECRET, AGENT);
        Fake { fake, runtime }
    }
}

// ---------------------------------------------------------------- the folder

/// A temporary folder with a secret file, a config and a database.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("wecom-bench-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("ops.secret"), format!("{SECRET}\n")).expect("secret");
        Workdir { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("schedules.yaml")
    }

    pub fn db(&self) -> PathBuf {
        self.path("wecom-notify.db")
    }

    pub fn log(&self) -> PathBuf {
        self.path("daemon.log")
    }

    /// Keeps the folder after the benchmark (for a look at the log and database).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// The config's head: UTC, the fake app. Append `schedules:` items to it.
pub fn config_head(api_base: &str) -> String {
    format!(
        "timezone: UTC\napps:\n  ops:\n    corp_id: {CORP}\n    agent_id: {AGENT}\n    secret_file: ops.secret\n    api_base: {api_base}\nschedules:\n"
    )
}

/// One schedule item whose body names its slot (so WeCom's duplicate check never hides one).
pub fn schedule_item(name: &str, cron: &str, user: &str) -> String {
    format!(
        "  - {{ name: {name}, cron: '{cron}', to: {{ users: [{user}] }}, duplicate_check_interval: 1, text: {{ content: 'bench {name} {{{{ slot:%Y-%m-%d %H:%M:%S }}}}' }} }}\n"
    )
}

// ---------------------------------------------------------------- the daemon

/// One sd_notify datagram as received.
#[derive(Debug, Clone)]
pub struct Notice {
    pub at: Instant,
    pub wall: SystemTime,
    pub text: String,
}

/// The release binary running `run`, with a notify socket of our own.
pub struct Daemon {
    pub child: Child,
    pub pid: i32,
    pub spawned: Instant,
    pub spawned_wall: SystemTime,
    pub notices: Arc<Mutex<Vec<Notice>>>,
    socket_path: PathBuf,
}

impl Daemon {
    /// Starts `wecom-notify --config C --db D [--log-format json] run [extra...]`, stderr to
    /// the folder's `daemon.log`. `rust_log` None keeps the daemon's default filter.
    pub fn spawn(work: &Workdir, extra: &[&str], rust_log: Option<&str>, json: bool) -> Daemon {
        Daemon::spawn_with(work, &work.config(), &work.db(), extra, rust_log, json)
    }

    pub fn spawn_with(
        work: &Workdir,
        config: &Path,
        db: &Path,
        extra: &[&str],
        rust_log: Option<&str>,
        json: bool,
    ) -> Daemon {
        let socket_path = work.path(&format!("notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
        let notices = Arc::new(Mutex::new(Vec::new()));
        {
            let notices = notices.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = socket.recv(&mut buf) {
                    let notice = Notice {
                        at: Instant::now(),
                        wall: SystemTime::now(),
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    };
                    notices.lock().unwrap().push(notice);
                }
            });
        }
        let log = std::fs::File::create(work.log()).expect("log file");
        let mut command = Command::new(binary());
        command.arg("--config").arg(config).arg("--db").arg(db);
        if json {
            command.args(["--log-format", "json"]);
        }
        command
            .arg("run")
            .args(extra)
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let spawned_wall = SystemTime::now();
        let spawned = Instant::now();
        let child = command.spawn().expect("spawn wecom-notify");
        let pid = child.id() as i32;
        Daemon {
            child,
            pid,
            spawned,
            spawned_wall,
            notices,
            socket_path,
        }
    }

    pub fn notice_count(&self) -> usize {
        self.notices.lock().unwrap().len()
    }

    /// The first notice from index `from` on whose text has `line` as one of its lines.
    pub fn wait_notice(&mut self, from: usize, line: &str, timeout: Duration) -> Option<Notice> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let notices = self.notices.lock().unwrap();
                if let Some(n) = notices[from.min(notices.len())..]
                    .iter()
                    .find(|n| n.text.lines().any(|l| l == line))
                {
                    return Some(n.clone());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("the daemon exited early ({status}); see its log");
                return None;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// user+system CPU seconds so far (threads that ended included).
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid).unwrap_or(f64::NAN)
    }

    /// VmRSS and VmHWM in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        proc_memory_kib(self.pid).unwrap_or((0, 0))
    }

    pub fn threads(&self) -> u64 {
        proc_status_field(self.pid, "Threads:").unwrap_or(0)
    }

    /// SIGTERM, then waits up to `timeout`; returns how long the stop took (None: killed).
    pub fn stop(mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        let deadline = start + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(start.elapsed());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

// ---------------------------------------------------------------- /proc

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn proc_cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 3; utime 14 and stime 15 (1-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

pub fn proc_status_field(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

pub fn proc_memory_kib(pid: i32) -> Option<(u64, u64)> {
    Some((
        proc_status_field(pid, "VmRSS:")?,
        proc_status_field(pid, "VmHWM:")?,
    ))
}

/// CPU seconds used by `pid` over `window`, sampled every second: (total, max per second).
pub fn cpu_over(pid: i32, window: Duration) -> (f64, f64) {
    let start = proc_cpu_seconds(pid).unwrap_or(0.0);
    let end_at = Instant::now() + window;
    let mut last = start;
    let mut peak: f64 = 0.0;
    while Instant::now() < end_at {
        let step = (end_at - Instant::now()).min(Duration::from_secs(1));
        std::thread::sleep(step);
        let now = proc_cpu_seconds(pid).unwrap_or(last);
        if step.as_secs_f64() > 0.5 {
            peak = peak.max((now - last) / step.as_secs_f64());
        }
        last = now;
    }
    (last - start, peak)
}

// ---------------------------------------------------------------- time

/// Waits until the wall clock reaches `at`.
pub fn sleep_until_wall(at: SystemTime) {
    if let Ok(d) = at.duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
}

pub fn utc(at: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(at)
}

/// Parses the database's `2026-11-30T01:30:00Z`.
pub fn parse_db_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Milliseconds from `slot` to `at` (negative when early).
pub fn ms_after(slot: DateTime<Utc>, at: DateTime<Utc>) -> f64 {
    (at - slot).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// The next whole multiple of `period_s` seconds (UTC) at or after `at`.
pub fn next_boundary(at: SystemTime, period_s: u64) -> SystemTime {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let next = (secs / period_s as f64).ceil() as u64 * period_s;
    SystemTime::UNIX_EPOCH + Duration::from_secs(next)
}

// ---------------------------------------------------------------- the daemon's log

/// The `firing` debug events of `wecom_notify::daemon::timer` in a JSON log:
/// (schedule, slot) → when the timer woke (the event's timestamp).
pub fn firing_events(log: &Path) -> HashMap<(String, String), DateTime<Utc>> {
    let mut out = HashMap::new();
    let Ok(file) = std::fs::File::open(log) else {
        return out;
    };
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains("\"firing\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(ts), Some(schedule), Some(slot)) = (
            v["timestamp"].as_str(),
            v["schedule"].as_str(),
            v["slot"].as_str(),
        ) else {
            continue;
        };
        if let Some(ts) = parse_db_time(ts) {
            out.insert((schedule.to_string(), slot.to_string()), ts);
        }
    }
    out
}

/// Lines of the log containing `needle`.
pub fn count_log_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

/// ERROR lines of the log grouped by target and message (numbers and ids blanked), most
/// frequent first.
pub fn error_kinds(log: &Path) -> Vec<(usize, String)> {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    for line in text.lines().filter(|l| l.contains("ERROR")) {
        let (target, message) = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => (
                v["target"].as_str().unwrap_or("").to_string(),
                v["message"].as_str().unwrap_or("").to_string(),
            ),
            // Text format: "<timestamp>  ERROR <target>: <message>".
            Err(_) => {
                let rest = line.split_once("ERROR ").map_or(line, |(_, r)| r).trim();
                match rest.split_once(": ") {
                    Some((t, m)) => (t.to_string(), m.to_string()),
                    None => (String::new(), rest.to_string()),
                }
            }
        };
        // Group by the message up to its first '(' (ids, counts and UUIDs follow it).
        let head = message.split('(').next().unwrap_or("");
        let blanked: String = head
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(140)
            .collect();
        *kinds.entry(format!("{target}: {blanked}")).or_default() += 1;
    }
    let mut kinds: Vec<(usize, String)> = kinds.into_iter().map(|(k, n)| (n, k)).collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.0));
    kinds
}

/// Prints the ERROR count and its most frequent kinds.
pub fn print_error_kinds(log: &Path) {
    let kinds = error_kinds(log);
    let total: usize = kinds.iter().map(|(n, _)| n).sum();
    println!("daemon log: {total} ERROR lines");
    for (n, kind) in kinds.iter().take(6) {
        println!("  {n:>7} × {kind}");
    }
}

/// The first line of the log containing `needle`, for the report.
pub fn first_log_line(log: &Path, needle: &str) -> Option<String> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .find(|l| l.contains(needle))
        .map(|l| l.chars().take(300).collect())
}

// ---------------------------------------------------------------- the database

/// A read-only connection to the daemon's database.
pub fn open_db(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open database read-only");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// payload → (schedule, scheduled_at, status) of every `sends` row.
pub fn rows_by_payload(path: &Path) -> HashMap<String, (String, String, String)> {
    let conn = open_db(path);
    let mut stmt = conn
        .prepare("SELECT payload, schedule, scheduled_at, status FROM sends")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

// ---------------------------------------------------------------- statistics

/// p50, p99 and max of `values` (nearest rank); NaN when empty.
pub fn percentiles(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.50), rank(0.99), *v.last().unwrap())
}

pub fn median(values: &[f64]) -> f64 {
    percentiles(values).0
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// "median 12.3 (runs: 11.0 12.3 14.1)".
pub fn summary(values: &[f64], decimals: usize) -> String {
    let runs: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    if values.len() == 1 {
        return runs[0].clone();
    }
    format!(
        "median {:.decimals$} (runs: {})",
        median(values),
        runs.join(" ")
    )
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints the machine the figures come from.
pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!(
        "machine: {cores} cores ({cpu}), {:.1} GiB RAM; binary {}",
        mem as f64 / 1024.0 / 1024.0,
        binary()
    );
}
