//! Prometheus metrics: counted in memory always (it is cheap), served as text at `/metrics` only
//! when `metrics.listen` is configured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Schedule;
use crate::probes::Probes;
use crate::store::health::{FaultKind, Health};
use crate::store::history::Status;

/// Bucket bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// A scrape request larger than this is not a scrape.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The schedules a daemon has armed.
pub trait ArmedSchedules: Send + Sync + std::fmt::Debug {
    /// The armed schedules, by name.
    fn schedules(&self) -> Vec<Arc<Schedule>>;
}

/// Everything the daemon counts.
#[derive(Debug, Default)]
pub struct Metrics {
    sends: Mutex<BTreeMap<(String, &'static str), u64>>,
    gettoken: Mutex<BTreeMap<String, u64>>,
    last_success: Mutex<BTreeMap<String, i64>>,
    send_seconds: Histogram,
    fire_lag_seconds: Histogram,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// The daemon's armed schedules, asked at each scrape: a list kept here would hold one
    /// more pointer per schedule (800 KB at 100,000).
    armed: RwLock<Option<Arc<dyn ArmedSchedules>>>,
    /// The database's fault counts.
    store: Arc<Health>,
    /// Sends waiting for the database to take them.
    unrecorded: AtomicU64,
}

impl Metrics {
    /// A finished row of `schedule` with `status` (sent, failed, missed, skipped, ...).
    pub fn count_send(&self, schedule: &str, status: Status) {
        *self
            .sends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((schedule.to_string(), status.as_str()))
            .or_default() += 1;
        if matches!(status, Status::Sent | Status::Partial) {
            self.last_success
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(schedule.to_string(), Utc::now().timestamp());
        }
    }

    /// How long a send took, from its first attempt to its outcome.
    pub fn observe_send(&self, took: Duration) {
        self.send_seconds.observe(took);
    }

    /// How late a send started after its slot was due.
    pub fn observe_fire_lag(&self, lag: Duration) {
        self.fire_lag_seconds.observe(lag);
    }

    /// A gettoken call made for `app`.
    pub fn count_gettoken(&self, app: &str) {
        *self
            .gettoken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app.to_string())
            .or_default() += 1;
    }

    pub fn count_reload(&self, ok: bool) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Metrics that report the faults counted by the database's connections.
    pub fn for_store(health: Arc<Health>) -> Metrics {
        Metrics {
            store: health,
            ..Metrics::default()
        }
    }

    /// How many sends are waiting for the database to take them.
    pub fn set_unrecorded(&self, waiting: usize) {
        self.unrecorded.store(waiting as u64, Ordering::Relaxed);
    }

    /// Where the schedules armed now are, for the next-fire gauge.
    pub fn watch_armed(&self, armed: Arc<dyn ArmedSchedules>) {
        *self.armed.write().unwrap_or_else(|p| p.into_inner()) = Some(armed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "wecom_notify_sends_total",
            "counter",
            "Finished sends by schedule and status.",
        );
        for ((schedule, status), n) in self.sends.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "wecom_notify_sends_total{{schedule=\"{}\",status=\"{status}\"}} {n}",
                escape(schedule)
            );
        }
        header(
            &mut out,
            "wecom_notify_gettoken_total",
            "counter",
            "gettoken calls made by this process, by app.",
        );
        let gettoken = self.gettoken.lock().unwrap_or_else(|p| p.into_inner());
        labelled(
            &mut out,
            "wecom_notify_gettoken_total",
            "app",
            gettoken.iter(),
        );
        drop(gettoken);
        self.send_seconds.render(
            &mut out,
            "wecom_notify_send_seconds",
            "Time from a send's first attempt to its outcome.",
        );
        self.fire_lag_seconds.render(
            &mut out,
            "wecom_notify_fire_lag_seconds",
            "Send start minus the slot's due time.",
        );
        let next_fire = "wecom_notify_next_fire_timestamp_seconds";
        header(
            &mut out,
            next_fire,
            "gauge",
            "Next slot of each armed schedule (Unix time).",
        );
        let now = Utc::now();
        let armed = self.armed.read().unwrap_or_else(|p| p.into_inner()).clone();
        let armed = armed.map(|a| a.schedules()).unwrap_or_default();
        let next = armed.iter().filter_map(|schedule| {
            let next = schedule.next_after(now)?;
            Some((&schedule.name, schedule.due(next).timestamp()))
        });
        labelled(&mut out, next_fire, "schedule", next);
        drop(armed);
        let last_success = "wecom_notify_last_success_timestamp_seconds";
        header(
            &mut out,
            last_success,
            "gauge",
            "Last sent or partial send of each schedule since start (Unix time).",
        );
        let successes = self.last_success.lock().unwrap_or_else(|p| p.into_inner());
        labelled(&mut out, last_success, "schedule", successes.iter());
        drop(successes);
        for (name, help, value) in [
            (
                "wecom_notify_reloads_total",
                "SIGHUP reloads.",
                &self.reloads,
            ),
            (
                "wecom_notify_reload_failures_total",
                "Reloads rejected because the new config was invalid.",
                &self.reload_failures,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        self.render_store(&mut out);
        out
    }

    fn render_store(&self, out: &mut String) {
        let faults = "wecom_notify_database_faults_total";
        header(
            out,
            faults,
            "counter",
            "Statements that failed with a storage fault (the connection is reopened after corrupt, io_error and not_a_database; disk_full releases the disk reserve; unreachable: PostgreSQL could not be reached, the statement is tried again).",
        );
        let counts = FaultKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), self.store.faults(*kind)));
        labelled(out, faults, "kind", counts);
        let episode = self.store.episode().is_some();
        let open = "wecom_notify_database_fault";
        header(
            out,
            open,
            "gauge",
            "1 from a storage fault until the database takes a write again.",
        );
        let _ = writeln!(out, "{open} {}", u8::from(episode));
        let waiting = "wecom_notify_unrecorded_sends";
        header(
            out,
            waiting,
            "gauge",
            "Sends the database refused to record, waiting until it takes them.",
        );
        let _ = writeln!(out, "{waiting} {}", self.unrecorded.load(Ordering::Relaxed));
    }
}

/// The `# HELP` and `# TYPE` lines of a metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One line per value, each with one label: `name{label="key"} value`.
fn labelled<K: AsRef<str>, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    label: &str,
    values: impl Iterator<Item = (K, V)>,
) {
    for (key, value) in values {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{}\"}} {value}",
            escape(key.as_ref())
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `address` until the task is dropped.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "serving metrics at /metrics, probes at /healthz and /readyz");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, metrics.clone(), probes.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Answers one HTTP/1.1 request and closes the connection.
async fn answer(mut stream: TcpStream, metrics: Arc<Metrics>, probes: Arc<Probes>) {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let probe = |answer: crate::probes::Answer| {
        let status = if answer.ok {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        (status, format!("{}\n", answer.reason))
    };
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", metrics.render()),
        (Some("GET"), Some("/healthz")) => probe(probes.health()),
        (Some("GET"), Some("/readyz")) => probe(probes.readiness()),
        (Some("GET"), _) => (
            "404 Not Found",
            "served here: /metrics, /healthz, /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "use GET /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.count_send("standup", Status::Sent);
        metrics.count_send("standup", Status::Sent);
        metrics.count_send("weekly", Status::Failed);
        metrics.count_gettoken("ops");
        metrics.observe_send(Duration::from_millis(30));
        metrics.count_reload(false);
        let text = metrics.render();
        assert!(
            text.contains("wecom_notify_sends_total{schedule=\"standup\",status=\"sent\"} 2"),
            "{text}"
        );
        assert!(text.contains("wecom_notify_sends_total{schedule=\"weekly\",status=\"failed\"} 1"));
        assert!(text.contains("wecom_notify_gettoken_total{app=\"ops\"} 1"));
        assert!(text.contains("wecom_notify_send_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("wecom_notify_send_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("wecom_notify_send_seconds_count 1"));
        assert!(text.contains("wecom_notify_reload_failures_total 1"));
        assert!(text.contains("wecom_notify_last_success_timestamp_seconds{schedule=\"standup\"}"));
    }
}
