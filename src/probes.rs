//! What `/healthz` and `/readyz` on the metrics listener answer, for container platforms and
//! load balancers:
//! - `/healthz`: 200 while the daemon's event loop turns (it does at least every 5 s), 503
//!   once it has not for [`STALL`]: a liveness probe restarts a daemon that hangs.
//! - `/readyz`: 200 once every schedule is armed and the database takes writes (the heartbeat
//!   every 5 s is the write that tells), 503 with the reason otherwise: starting, stopping, or
//!   the database's own words.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The event loop is taken to hang once it has not turned for this long (a statement waits up
/// to 30 s for a lock, and the loop waits for a few of them at most).
pub const STALL: Duration = Duration::from_secs(120);

/// The daemon's state as the probes report it.
#[derive(Debug)]
pub struct Probes {
    origin: Instant,
    /// Milliseconds after `origin` at which the event loop last turned; 0 before it started.
    turned_ms: AtomicU64,
    armed: AtomicBool,
    stopping: AtomicBool,
    /// Why the latest write failed; `None` once one succeeded (or none was tried).
    refused: Mutex<Option<String>>,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            origin: Instant::now(),
            turned_ms: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            refused: Mutex::new(None),
        }
    }
}

/// A probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub reason: String,
}

impl Probes {
    /// The event loop turned just now.
    pub fn turned(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.turned_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Every schedule is armed (READY).
    pub fn armed(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The outcome of the latest write to the database.
    pub fn wrote(&self, outcome: Result<(), String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = outcome.err();
    }

    /// `/healthz`.
    pub fn health(&self) -> Answer {
        let turned = self.turned_ms.load(Ordering::Relaxed);
        if turned == 0 {
            return answer(true, "starting".to_string());
        }
        let since = self
            .origin
            .elapsed()
            .saturating_sub(Duration::from_millis(turned));
        if since > STALL {
            answer(
                false,
                format!(
                    "the event loop has not turned for {} s; it hangs",
                    since.as_secs()
                ),
            )
        } else {
            answer(true, "the event loop runs".to_string())
        }
    }

    /// `/readyz`.
    pub fn readiness(&self) -> Answer {
        if self.stopping.load(Ordering::Relaxed) {
            return answer(false, "stopping".to_string());
        }
        if !self.armed.load(Ordering::Relaxed) {
            return answer(
                false,
                "starting: the schedules are not armed yet".to_string(),
            );
        }
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.as_deref() {
            Some(why) => answer(
                false,
                format!("the database refuses writes: {}", crate::shown::shown(why)),
            ),
            None => answer(
                true,
                "the schedules are armed and the database takes writes".to_string(),
            ),
        }
    }
}

fn answer(ok: bool, reason: String) -> Answer {
    Answer { ok, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_armed_and_writing_and_not_stopping() {
        let probes = Probes::default();
        assert!(probes.health().ok, "healthy while starting");
        assert!(!probes.readiness().ok);
        assert!(probes.readiness().reason.starts_with("starting"));
        probes.armed();
        probes.turned();
        assert!(probes.readiness().ok);
        probes.wrote(Err("attempt to write a readonly database".into()));
        let answer = probes.readiness();
        assert!(
            !answer.ok && answer.reason.contains("readonly"),
            "{answer:?}"
        );
        probes.wrote(Ok(()));
        assert!(probes.readiness().ok);
        probes.stopping();
        assert_eq!(probes.readiness().reason, "stopping");
        assert!(probes.health().ok);
    }
}
