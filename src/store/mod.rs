//! SQLite: opening the database (private files, WAL, migrations) and running queries off the
//! async threads. One connection on a thread of its own is plenty for a write-light daemon.
//!
//! What keeps the history whole: no descriptor of the database's files is ever opened outside
//! SQLite ([`files`]); a connection that reports a storage fault is replaced ([`worker`],
//! [`health`]); a full disk finds room kept in [`reserve`]; and sends the database refuses wait
//! in a file of their own until it takes them ([`unrecorded`], written back by [`replay`]).

pub mod events;
pub mod files;
pub mod health;
pub mod heartbeats;
pub mod history;
pub mod location;
mod pg;
pub mod query;
pub mod recall;
pub mod replay;
pub mod reserve;
pub mod tokens;
pub mod unrecorded;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use rusqlite_migration::{M, Migrations};
use sha2::Digest;

use health::Health;
pub use location::{Location, PgTarget};
use reserve::Reserve;
use unrecorded::UnrecordedFiles;
use worker::Shared;
pub use worker::Worker;

/// How long a statement waits for another connection's write lock (another process's token
/// refresh holds it for at most one gettoken call).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, one entry per folder under `migrations/`.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../migrations/sqlite/01-initial/up.sql")),
    M::up(include_str!("../../migrations/sqlite/02-recall/up.sql")),
    M::up(include_str!("../../migrations/sqlite/03-heartbeats/up.sql")),
    M::up(include_str!(
        "../../migrations/sqlite/04-recall-claim/up.sql"
    )),
    M::up(include_str!("../../migrations/sqlite/05-robots/up.sql")),
    M::up(include_str!("../../migrations/sqlite/06-leases/up.sql")),
];

/// Who writes this process's claims, and how long a claim holds without renewal.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The `instance:` of the config (the host name by default); `None` until it is known
    /// (a command that claims nothing).
    pub instance: Option<Arc<str>>,
    /// A `pending` row's lease: renewed every third of it while this process lives.
    pub lease: chrono::Duration,
}

impl Default for Owner {
    fn default() -> Owner {
        Owner {
            instance: None,
            lease: chrono::Duration::seconds(30),
        }
    }
}

/// Renews this process's leases while it lives (see [`Store::keep_leases`]).
pub struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The database, shared by every task of the process: on SQLite one connection on a thread of
/// its own, on PostgreSQL a small pool.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    shared: Arc<Shared>,
    unrecorded: Arc<UnrecordedFiles>,
}

/// Which database a [`Store`] writes.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Worker>),
    Postgres(Arc<pg::Pg>),
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `location`.
    pub async fn open_location(location: &Location) -> anyhow::Result<Store> {
        match location {
            Location::Sqlite(path) => Store::open(path),
            Location::Postgres(target) => Store::open_postgres(target, &state_directory()).await,
        }
    }

    /// Connects to the PostgreSQL database `target` and migrates it. The sends it could not
    /// record wait in unrecorded-sends files in `state_dir` (the commands give the state
    /// directory, `$STATE_DIRECTORY`, else the working directory), named after the database,
    /// as they wait beside a SQLite file.
    pub async fn open_postgres(target: &PgTarget, state_dir: &Path) -> anyhow::Result<Store> {
        let health = Arc::<Health>::default();
        let pg = pg::Pg::open(target, health.clone()).await?;
        // Named after the database: daemons of other databases may share the directory.
        let digest = sha2::Sha256::digest(pg.identity().as_bytes());
        let name: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let base = state_dir.join(format!("wecom-notify-postgres-{name}"));
        let shared = Arc::new(Shared {
            path: base.clone(),
            busy_timeout: BUSY_TIMEOUT,
            health,
            reserve: Reserve::beside(&base),
            owner: std::sync::RwLock::default(),
            renewed: std::sync::Mutex::new(None),
            live: std::sync::Mutex::default(),
        });
        Ok(Store {
            backend: Backend::Postgres(Arc::new(pg)),
            unrecorded: Arc::new(UnrecordedFiles::beside(&base)),
            shared,
        })
    }

    /// Notes that this process holds row `id` (`true`) or no longer does.
    fn hold(&self, id: i64, held: bool) {
        let mut live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            live.insert(id);
        } else {
            live.remove(&id);
        }
    }

    /// The rows this process holds and sends (see [`Shared::live`]).
    fn live(&self) -> Vec<i64> {
        let live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().copied().collect()
    }

    /// The PostgreSQL database, when this store is on one.
    fn pg(&self) -> Option<&pg::Pg> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite(_) => None,
        }
    }

    /// Whether other hosts may claim slots in this database too (PostgreSQL): a claim kept
    /// outside it, in a file of this host, would not stop them from sending the slot as well.
    pub fn is_shared(&self) -> bool {
        self.pg().is_some()
    }

    /// Where this store is, for messages: the SQLite file, or the URL without a password.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(_) => self.shared.path.display().to_string(),
            Backend::Postgres(pg) => pg.shown().to_string(),
        }
    }

    /// Opens (creating if needed) and migrates the database at `path`; its files are made
    /// private (mode 0600) if they were not.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Store::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`] with another [`BUSY_TIMEOUT`] (tests of a locked database).
    pub fn open_with_busy_timeout(path: &Path, busy_timeout: Duration) -> anyhow::Result<Store> {
        let mut conn = connect(path, busy_timeout)?;
        migrate(&mut conn, busy_timeout)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            busy_timeout,
            health: Arc::default(),
            reserve: Reserve::beside(path),
            owner: std::sync::RwLock::default(),
            renewed: std::sync::Mutex::new(None),
            live: std::sync::Mutex::default(),
        });
        Ok(Store {
            backend: Backend::Sqlite(Arc::new(Worker::spawn(conn, shared.clone(), true)?)),
            unrecorded: Arc::new(UnrecordedFiles::beside(path)),
            shared,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Names the instance whose claims this process writes, and their lease.
    pub fn set_owner(&self, owner: Owner) {
        *self.shared.owner.write().unwrap_or_else(|p| p.into_inner()) = owner;
    }

    /// Renews the leases of this process's `pending` rows every third of a lease until the
    /// returned guard is dropped. A renewal the database refuses is tried again at the next
    /// turn; a row whose lease lapsed meanwhile may be taken over by another daemon.
    pub fn keep_leases(&self) -> LeaseKeeper {
        let store = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let every = (store.owner().lease / 3)
                    .to_std()
                    .unwrap_or(Duration::from_secs(10));
                tokio::time::sleep(every).await;
                match store.renew_leases().await {
                    Ok(0) => {}
                    Ok(renewed) => tracing::trace!(renewed, "leases renewed"),
                    Err(e) => tracing::warn!(
                        "cannot renew the leases of the sends in flight ({e:#}); if this lasts a lease ({} s), another daemon on the database may take them over",
                        store.owner().lease.num_seconds()
                    ),
                }
            }
        });
        LeaseKeeper(task)
    }

    /// Whether a claim this process made (or took over) at `claimed` surely still holds: its
    /// lease, from the claim or from the last renewal the database took, has more than a
    /// sixth of it left. Past that, another daemon may take the row over, and this process
    /// must not send it again.
    pub fn lease_holds(&self, claimed: Instant) -> bool {
        let lease = self.owner().lease.to_std().unwrap_or(Duration::ZERO);
        let renewed = *self
            .shared
            .renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let since = renewed.map_or(claimed, |renewed| renewed.max(claimed));
        since.elapsed() + lease / 6 < lease
    }

    /// The instance and lease this process's claims carry.
    pub fn owner(&self) -> Owner {
        self.shared
            .owner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The faults this store's connections met (for metrics and the `database_fault` event).
    pub fn health(&self) -> Arc<Health> {
        self.shared.health.clone()
    }

    /// Creates the disk reserve if it is missing and there is room (the daemon calls this at
    /// start and then every few seconds; commands only ever release it).
    pub async fn keep_reserve(&self) {
        if self.is_shared() {
            // No file of ours fills the disk of a PostgreSQL server.
            return;
        }
        let store = self.clone();
        let kept = tokio::task::spawn_blocking(move || store.shared.reserve.replenish()).await;
        match kept {
            Ok(Ok(true)) => tracing::info!(
                reserve = %self.shared.reserve.path().display(),
                "{} MiB of disk kept in reserve for the history",
                reserve::RESERVE_BYTES / (1024 * 1024)
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::debug!(
                reserve = %self.shared.reserve.path().display(),
                "cannot keep a disk reserve yet: {e}"
            ),
            Err(e) => tracing::debug!("the reserve task failed: {e}"),
        }
    }

    /// Runs `f` on the shared connection, on the database thread. `f` runs a second time when
    /// the disk was full and the reserve was released for it.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.worker()?.run(f).await
    }

    /// The SQLite database thread; an error on PostgreSQL.
    fn worker(&self) -> anyhow::Result<&Worker> {
        match &self.backend {
            Backend::Sqlite(worker) => Ok(worker),
            Backend::Postgres(_) => {
                anyhow::bail!("this is not available on a PostgreSQL database")
            }
        }
    }

    /// [`Store::call`] for one statement of autocommit work, which may commit in one
    /// transaction with the like statements queued behind it (see [`Worker::run_grouped`]).
    pub async fn call_grouped<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.worker()?.run_grouped(f).await
    }

    /// A second connection on a thread of its own, for work that must hold a transaction
    /// across an await (the cross-process token refresh) without blocking the shared one.
    pub fn separate_worker(&self) -> anyhow::Result<Worker> {
        if self.is_shared() {
            anyhow::bail!("this is not available on a PostgreSQL database");
        }
        let conn = connect(&self.shared.path, self.shared.busy_timeout)?;
        Worker::spawn(conn, self.shared.clone(), false)
    }
}

/// Opens a connection to `path`, in WAL mode.
fn connect(path: &Path, busy_timeout: Duration) -> anyhow::Result<Connection> {
    // Files left readable by others are tightened before anything is read from them.
    let existed = files::make_private(path)?;
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    if !existed {
        // SQLite has just created the file, with mode 0644 less the umask, and it is still
        // empty. It gets 0600 before the switch to WAL creates the -wal and -shm files, which
        // SQLite gives the database file's mode.
        files::make_new_private(path)?;
    }
    // Closing a connection must not try for an exclusive lock to checkpoint: a reader opening
    // at that moment would be told "database is locked". The daemon's writes checkpoint the
    // WAL as it grows; a closing `history` or `send` has nothing to add.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.busy_timeout(busy_timeout)?;
    patiently(busy_timeout, || {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(anyhow::Error::from)
    })
    .with_context(|| format!("cannot switch database {} to WAL", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Brings the schema up to date. Two processes that open a new file at once both find it
/// unmigrated: the second one's migration fails (busy, or "table already exists") once the
/// first has committed, and is tried again, finding the schema there.
fn migrate(conn: &mut Connection, patience: Duration) -> anyhow::Result<()> {
    let migrations = Migrations::from_slice(MIGRATIONS);
    // BEGIN IMMEDIATE: the second process waits in SQLite's busy handler for the first.
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let result = patiently(patience, || {
        let before = schema_version(conn);
        migrations.to_latest(conn).map_err(|e| {
            let raced = schema_version(conn) != before;
            if raced {
                anyhow::Error::from(e).context(Busy)
            } else {
                anyhow::Error::from(e)
            }
        })
    });
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    result
}

fn schema_version(conn: &Connection) -> Option<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).ok()
}

/// Marks an error as a race with another process that is worth another try.
#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another process was changing the database at the same time")
    }
}

/// Runs `attempt` until it succeeds, fails for a reason other than another process's lock, or
/// `patience` is spent.
fn patiently<T>(
    patience: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if is_busy(&e) && started.elapsed() < patience => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(error: &anyhow::Error) -> bool {
    let locked = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    };
    error.downcast_ref::<Busy>().is_some()
        || error.chain().any(|cause| {
            cause.downcast_ref::<rusqlite::Error>().is_some_and(locked)
                || matches!(
                    cause.downcast_ref::<rusqlite_migration::Error>(),
                    Some(rusqlite_migration::Error::RusqliteError { err, .. }) if locked(err)
                )
        })
}

/// `$STATE_DIRECTORY` (the first, when systemd gives several), else the working directory.
fn state_directory() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            let first = dirs.to_string_lossy().split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The path of this store's database with `suffix` appended to its file name.
fn beside(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The folder that holds `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn database_is_created_private_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = Store::open(&path).unwrap();
        for file in files::database_files(&path) {
            assert_eq!(
                file.metadata().unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
        }
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

    #[test]
    fn a_closing_connection_does_not_take_the_lock_that_readers_would_run_into() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = connect(&path, BUSY_TIMEOUT).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
            .unwrap();
        drop(conn);
        // The only connection closed: had it tried for the exclusive lock, it would have got
        // it, checkpointed and deleted the WAL.
        assert!(beside(&path, "-wal").exists(), "no checkpoint on close");
        let reader = connect(&path, BUSY_TIMEOUT).unwrap();
        let x: i64 = reader
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 1, "the WAL left behind is read");
    }

    #[test]
    fn processes_opening_a_new_database_at_once_all_succeed() {
        // Threads with connections of their own race exactly as processes do for SQLite.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut conn = connect(&path, BUSY_TIMEOUT)?;
                    migrate(&mut conn, BUSY_TIMEOUT)?;
                    anyhow::Ok(schema_version(&conn))
                })
            })
            .collect();
        for thread in threads {
            let version = thread.join().unwrap().unwrap();
            assert_eq!(version, Some(MIGRATIONS.len() as i64));
        }
    }
}
