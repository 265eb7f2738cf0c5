//! Footprint: the release binary's size, the daemon's memory and CPU at idle on the example
//! config (`run --dry-run` on `schedules.example.yaml`, whose demo schedule fires every 20 s),
//! the time of a few short commands, and, with `--cold-build`, a from-scratch
//! `cargo build --release` of a copy of the repository with its own target directory.
//!
//! ```sh
//! cargo bench --bench footprint -- --seconds 30 --runs 3
//! cargo bench --bench footprint -- --cold-build      # adds ~5 minutes on 2 cores
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USAGE: &str = "\
cargo bench --bench footprint -- [options]
  --seconds S     idle window of each run on the example config (default 30)
  --runs N        runs (default 3); medians are reported
  --cold-build    also time `cargo build --release --locked` of a fresh copy (once)";

fn main() {
    let args = Args::parse(USAGE, &["seconds", "runs"]);
    args.only_flags(&["cold-build"], USAGE);
    let seconds: u64 = args.num("seconds", 30);
    let runs: usize = args.num("runs", 3);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    print_machine();

    let size = std::fs::metadata(binary()).map(|m| m.len()).unwrap_or(0);
    let stripped = stripped_size(Path::new(binary()));
    let packages = std::fs::read_to_string(repo.join("Cargo.lock"))
        .map(|t| t.matches("[[package]]").count())
        .unwrap_or(0);
    println!(
        "binary: {:.2} MiB ({size} B), stripped {}; {packages} packages in Cargo.lock",
        size as f64 / 1048576.0,
        stripped.map_or("n/a (no strip)".to_string(), |s| format!(
            "{:.2} MiB",
            s as f64 / 1048576.0
        ))
    );

    let work = Workdir::new();
    std::fs::copy(repo.join("schedules.example.yaml"), work.config()).unwrap();
    for (label, argv) in [
        ("--version", vec!["--version"]),
        (
            "check --dry-run --next 3",
            vec!["check", "--dry-run", "--next", "3"],
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..runs.max(3) {
            let start = Instant::now();
            let status = Command::new(binary())
                .arg("--config")
                .arg(work.config())
                .args(&argv)
                .env_remove("WECOM_OPS_SECRET")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            if !status.success() {
                println!("  {label} exited {status}");
            }
        }
        println!("{label}: {} ms", summary(&times, 1));
    }

    println!("\nidle on schedules.example.yaml (run --dry-run), {seconds} s per run:");
    let mut ready = Vec::new();
    let mut rss_ready = Vec::new();
    let mut rss_end = Vec::new();
    let mut hwm = Vec::new();
    let mut cpu_pct = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_file(work.db());
        let mut daemon = Daemon::spawn(&work, &["--dry-run"], None, false);
        let Some(n) = daemon.wait_notice(0, "READY=1", Duration::from_secs(60)) else {
            println!("no READY=1; see the daemon log");
            return;
        };
        ready.push((n.at - daemon.spawned).as_secs_f64() * 1000.0);
        rss_ready.push(mib(daemon.memory_kib().0));
        let (cpu, _) = cpu_over(daemon.pid, Duration::from_secs(seconds));
        cpu_pct.push(cpu / seconds as f64 * 100.0);
        let (rss, peak) = daemon.memory_kib();
        rss_end.push(mib(rss));
        hwm.push(mib(peak));
        threads.push(daemon.threads() as f64);
        daemon.stop(Duration::from_secs(30));
    }
    println!("  start→READY: {} ms", summary(&ready, 1));
    println!("  RSS at READY: {} MiB", summary(&rss_ready, 1));
    println!("  RSS after {seconds} s: {} MiB", summary(&rss_end, 1));
    println!("  peak RSS (VmHWM): {} MiB", summary(&hwm, 1));
    println!("  CPU: {} % of a core", summary(&cpu_pct, 3));
    println!("  threads: {}", summary(&threads, 0));

    if args.flag("cold-build") {
        cold_build(&repo);
    }
}

fn stripped_size(binary: &Path) -> Option<u64> {
    let out = std::env::temp_dir().join(format!("wecom-notify-stripped-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    let size = std::fs::metadata(&out).ok().map(|m| m.len());
    let _ = std::fs::remove_file(&out);
    if ok { size } else { None }
}

/// Copies the repository without `target/` and `.git/` and builds it from scratch (the
/// registry cache is reused: this measures compiling, not downloading).
fn cold_build(repo: &Path) {
    let dir = tempfile::Builder::new()
        .prefix("wecom-cold-build-")
        .tempdir()
        .unwrap();
    let copy = dir.path().join("repo");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p '{0}' && cd '{1}' && tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C '{0}'",
            copy.display(),
            repo.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "copy failed");
    println!(
        "\ncold build: cargo build --release --locked --timings in {}",
        copy.display()
    );
    let start = Instant::now();
    let out = Command::new("cargo")
        .args(["build", "--release", "--locked", "--timings"])
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", copy.join("target"))
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    println!(
        "  {} in {wall:.0} s wall ({:.1} min)",
        if out.status.success() {
            "built"
        } else {
            "FAILED"
        },
        wall / 60.0
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        for line in err
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  | {line}");
        }
        return;
    }
    let built = copy.join("target/release/wecom-notify");
    if let Ok(m) = std::fs::metadata(&built) {
        println!("  binary {:.2} MiB", m.len() as f64 / 1048576.0);
    }
    // The slowest units, from cargo's timing report.
    let html = std::fs::read_to_string(copy.join("target/cargo-timings/cargo-timing.html"))
        .unwrap_or_default();
    let mut units = unit_durations(&html);
    units.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = units
        .iter()
        .take(10)
        .map(|(name, d)| format!("{name} {d:.1} s"))
        .collect();
    if !top.is_empty() {
        println!("  slowest units: {}", top.join(", "));
    }
}

/// (name, duration) of each unit in cargo's timing HTML (its `const UNIT_DATA = [...]`).
fn unit_durations(html: &str) -> Vec<(String, f64)> {
    let Some(start) = html.find("const UNIT_DATA = ") else {
        return Vec::new();
    };
    let rest = &html[start + "const UNIT_DATA = ".len()..];
    let Some(end) = rest.find("\n];") else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(units)) = serde_json::from_str(&rest[..end + 2]) else {
        return Vec::new();
    };
    units
        .iter()
        .filter_map(|u| {
            let name = u["name"].as_str()?;
            let build_script = u["mode"].as_str() == Some("run-custom-build");
            let label = if build_script {
                format!("{name} (build script)")
            } else {
                name.to_string()
            };
            Some((label, u["duration"].as_f64()?))
        })
        .collect()
}
