//! The `events` table: started, reloaded, reload_failed, database_fault, clock_step, stopped.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::Store;

/// A row of `events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Started,
    Reloaded,
    ReloadFailed,
    /// Storage faults happened, and the database takes writes again (the detail says which).
    DatabaseFault,
    /// The wall clock stepped (the detail says which way and how far).
    ClockStep,
    Stopped,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Reloaded => "reloaded",
            EventKind::ReloadFailed => "reload_failed",
            EventKind::DatabaseFault => "database_fault",
            EventKind::ClockStep => "clock_step",
            EventKind::Stopped => "stopped",
        }
    }
}

impl Store {
    /// Records an event with the digest of the config in force and a free-text detail.
    pub async fn record_event(
        &self,
        kind: EventKind,
        digest: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        self.record_event_at(kind, Utc::now(), digest, detail).await
    }

    /// Records an event that happened at `at` (a stop is dated when firing stopped, not when
    /// the sends in flight were done: slots after that instant were not the daemon's any more).
    pub async fn record_event_at(
        &self,
        kind: EventKind,
        at: DateTime<Utc>,
        digest: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        let digest = digest.to_string();
        let detail = detail.to_string();
        let instance = self.owner().instance;
        if let Some(pg) = self.pg() {
            let instance = instance.as_deref().map(str::to_string);
            return pg.record_event(kind, at, &digest, &detail, instance).await;
        }
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO events (at, kind, config_digest, pid, version, detail, instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    crate::time::to_db(at),
                    kind.as_str(),
                    digest,
                    std::process::id(),
                    env!("CARGO_PKG_VERSION"),
                    detail,
                    instance.as_deref()
                ],
            )
            .map(|_| ())
        })
        .await
    }
}
