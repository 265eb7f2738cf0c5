//! SQLite: opening the database (mode 0600, WAL, migrations) and running queries off the async
//! threads. One connection behind a mutex is plenty for a write-light daemon.

pub mod events;
pub mod history;
pub mod query;
pub mod tokens;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

/// How long a statement waits for another connection's write lock (another process's token
/// refresh holds it for at most one gettoken call).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, one entry per folder under `migrations/`.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/01-initial/up.sql")),
    M::up(include_str!("../../migrations/02-recall/up.sql")),
];

/// The database, shared by every task of the process: one connection on a thread of its own.
#[derive(Clone)]
pub struct Store {
    worker: Arc<Worker>,
    path: PathBuf,
    busy_timeout: Duration,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread that owns a connection and runs queries in order. A burst of a thousand sends
/// queues here, instead of parking a thousand blocking-pool threads on a mutex (and starving
/// the pool that other database work would need to finish).
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread; it ends when the `Worker` is dropped.
    pub fn spawn(mut conn: Connection) -> anyhow::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wecom-notify-db".to_string())
            .spawn(move || {
                for job in queue {
                    job(&mut conn);
                }
            })
            .context("cannot start the database thread")?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the connection and waits for its result without blocking the runtime.
    pub async fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(f(conn));
        });
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("the database thread has stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("the database thread has stopped"))?
            .map_err(anyhow::Error::from)
    }
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Store::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`] with another [`BUSY_TIMEOUT`] (tests of a locked database).
    pub fn open_with_busy_timeout(path: &Path, busy_timeout: Duration) -> anyhow::Result<Store> {
        // The file holds live access tokens: nobody else may read it. SQLite gives the -wal
        // and -shm files the same mode as the database file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open or create database {}", path.display()))?;
        if let Ok(meta) = file.metadata()
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the database holds access tokens but other users may read it; chmod 600 it");
        }
        // Two processes opening a new file at once would race for the switch to WAL and for the
        // migration, which SQLite reports as "busy" without waiting. An flock (independent of
        // SQLite's own fcntl locks) makes the second wait until the first is done.
        file.lock()
            .with_context(|| format!("cannot lock database {}", path.display()))?;
        let mut conn = connect(path, busy_timeout)?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        drop(file);
        Ok(Store {
            worker: Arc::new(Worker::spawn(conn)?),
            path: path.to_path_buf(),
            busy_timeout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the shared connection, on the database thread.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.worker.run(f).await
    }

    /// A second connection on a thread of its own, for work that must hold a transaction
    /// across an await (the cross-process token refresh) without blocking the shared one.
    pub fn separate_worker(&self) -> anyhow::Result<Worker> {
        Worker::spawn(connect(&self.path, self.busy_timeout)?)
    }
}

fn connect(path: &Path, busy_timeout: Duration) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn database_is_created_private_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let (mode, tables) = store
            .call(|conn| {
                let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let tables: i64 = conn.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sends', 'access_tokens', 'events')",
                    [],
                    |r| r.get(0),
                )?;
                Ok((mode, tables))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(tables, 3);
    }
}
