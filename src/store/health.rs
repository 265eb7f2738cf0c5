//! Storage faults as the rest of the daemon sees them: counted for `/metrics`, logged at ERROR
//! once per episode, and kept as an episode until the database takes a write again (the daemon
//! then records a `database_fault` event that describes it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use rusqlite::ErrorCode;

/// What kind of storage fault a statement reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SQLITE_CORRUPT: "database disk image is malformed".
    Corrupt,
    /// SQLITE_IOERR, any of its extended codes ("disk I/O error").
    IoError,
    /// SQLITE_NOTADB: the file is not (or no longer) a database.
    NotADatabase,
    /// SQLITE_FULL: no room left on the disk.
    DiskFull,
    /// PostgreSQL: the server could not be reached, or the connection broke (a restart, a
    /// network cut).
    Unreachable,
}

impl FaultKind {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Corrupt,
        FaultKind::IoError,
        FaultKind::NotADatabase,
        FaultKind::DiskFull,
        FaultKind::Unreachable,
    ];

    /// The kind of `error`, if it is a storage fault (not a constraint, a busy lock, ...).
    pub(super) fn of(error: &rusqlite::Error) -> Option<FaultKind> {
        match error.sqlite_error_code()? {
            ErrorCode::DatabaseCorrupt => Some(FaultKind::Corrupt),
            ErrorCode::SystemIoFailure => Some(FaultKind::IoError),
            ErrorCode::NotADatabase => Some(FaultKind::NotADatabase),
            ErrorCode::DiskFull => Some(FaultKind::DiskFull),
            _ => None,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Corrupt => "corrupt",
            FaultKind::IoError => "io_error",
            FaultKind::NotADatabase => "not_a_database",
            FaultKind::DiskFull => "disk_full",
            FaultKind::Unreachable => "unreachable",
        }
    }

    /// A connection that reported this is closed and opened again: its view of the file (the
    /// WAL index, cached pages) can no longer be trusted. A full disk says nothing about that.
    /// (A PostgreSQL connection that broke is replaced by the pool.)
    pub fn needs_reopen(self) -> bool {
        self != FaultKind::DiskFull
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A run of faults with no successful write in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The first error, as SQLite worded it, with its extended code.
    pub first_error: String,
    /// Statements that failed with a fault during the episode.
    pub faults: u64,
    /// Times the connection was closed and opened again.
    pub reopens: u64,
}

impl Episode {
    /// The `detail` of the `database_fault` event.
    pub fn describe(&self) -> String {
        format!(
            "{} statement(s) failed from {} to {}, the first with: {}; the connection was reopened {} time(s)",
            self.faults,
            crate::time::to_db(self.first_at),
            crate::time::to_db(self.last_at),
            self.first_error,
            self.reopens
        )
    }
}

/// Shared by every connection of a [`super::Store`].
#[derive(Debug, Default)]
pub struct Health {
    faults: [AtomicU64; FaultKind::ALL.len()],
    episode: Mutex<Option<Episode>>,
}

impl Health {
    /// Counts a fault; the first of an episode is logged at ERROR, the rest at DEBUG.
    pub(crate) fn record(&self, kind: FaultKind, text: String) {
        let reopened = kind.needs_reopen();
        self.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        let mut episode = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        match episode.as_mut() {
            Some(open) => {
                open.faults += 1;
                open.last_at = now;
                open.reopens += u64::from(reopened);
                tracing::debug!(error = %text, faults = open.faults, "another database fault in the same episode");
            }
            None => {
                let action = if kind == FaultKind::Unreachable {
                    "the statement is tried again on a new connection for a while"
                } else if reopened {
                    "the connection was closed and opened again"
                } else {
                    "the disk reserve, if any, is released and the write tried once more"
                };
                tracing::error!(
                    "database fault: {text}; {action}. Rows the database refuses are kept until it takes writes again; further faults are only counted (wecom_notify_database_faults_total) until then"
                );
                *episode = Some(Episode {
                    first_at: now,
                    last_at: now,
                    first_error: text,
                    faults: 1,
                    reopens: u64::from(reopened),
                });
            }
        }
    }

    /// Faults counted so far, by kind.
    pub fn faults(&self, kind: FaultKind) -> u64 {
        self.faults[kind.index()].load(Ordering::Relaxed)
    }

    /// The episode in progress, if any.
    pub fn episode(&self) -> Option<Episode> {
        self.episode
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ends `seen` once it was recorded: unless another fault came meanwhile, the next fault
    /// starts a new episode (and is logged at ERROR again).
    pub fn end_episode(&self, seen: &Episode) -> bool {
        let mut episode = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        if episode.as_ref() == Some(seen) {
            *episode = None;
            return true;
        }
        false
    }
}

/// "database disk image is malformed (SQLITE_CORRUPT, extended code 11)".
pub(super) fn describe_error(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(e, message) => format!(
            "{} ({:?}, extended code {})",
            message.as_deref().unwrap_or("no message"),
            e.code,
            e.extended_code
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn io_error() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(522),
            Some("disk I/O error".into()),
        )
    }

    #[test]
    fn an_episode_is_logged_at_error_once_and_a_new_one_after_it_ended() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let health = Health::default();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                health.record(FaultKind::IoError, describe_error(&io_error()));
            }
            let episode = health.episode().expect("an episode");
            assert_eq!((episode.faults, episode.reopens), (3, 3));
            assert!(
                episode
                    .describe()
                    .contains("disk I/O error (SystemIoFailure, extended code 522)"),
                "{}",
                episode.describe()
            );
            assert!(health.end_episode(&episode));
            assert!(health.episode().is_none());
            health.record(
                FaultKind::Corrupt,
                "database disk image is malformed".into(),
            );
        });
        let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        assert_eq!(log.matches(" ERROR ").count(), 2, "{log}");
        assert_eq!(health.faults(FaultKind::IoError), 3);
        assert_eq!(health.faults(FaultKind::Corrupt), 1);
        assert_eq!(FaultKind::of(&io_error()), Some(FaultKind::IoError));
    }

    #[test]
    fn an_episode_that_grew_meanwhile_is_not_ended() {
        let health = Health::default();
        health.record(FaultKind::DiskFull, "database or disk is full".into());
        let seen = health.episode().expect("an episode");
        health.record(FaultKind::DiskFull, "database or disk is full".into());
        assert!(!health.end_episode(&seen), "a fault came after it was read");
        assert!(health.episode().is_some());
    }
}
