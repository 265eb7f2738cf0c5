//! The database thread: one connection, jobs run in order. A connection that reports corruption
//! or an I/O error is closed and opened again before the next job; a job that finds the disk
//! full runs once more after the disk reserve was released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use rusqlite::Connection;

use super::connect;
use super::health::{FaultKind, Health, describe_error};
use super::reserve::Reserve;

/// What every connection of one [`super::Store`] shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub path: PathBuf,
    pub busy_timeout: Duration,
    pub health: Arc<Health>,
    pub reserve: Reserve,
    /// Who this process's claims name (see [`super::Owner`]).
    pub owner: std::sync::RwLock<super::Owner>,
    /// When the last renewal of this process's leases that the database took began.
    pub renewed: std::sync::Mutex<Option<std::time::Instant>>,
    /// The rows this process holds `pending` and is sending (claimed or taken over, not yet
    /// finished): on PostgreSQL the only ones it renews. A claim whose commit was lost with its
    /// connection (the claim then failed, and the send was not made) is not among them: its
    /// lease lapses, and a node resolves it as a crash row.
    pub live: std::sync::Mutex<std::collections::HashSet<i64>>,
}

/// How a job went, as far as the connection is concerned.
enum Ran {
    Done,
    /// The job failed with a storage fault (its caller has the error).
    Fault(FaultKind),
    /// The disk was full and the job held its error back: release the reserve, run it again.
    Full,
    /// There was no connection to run it on.
    Unavailable,
}

/// Which run of a job this is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// The first; with `retry_full`, a full disk holds its error back and asks for another.
    First { may_run_again: bool },
    /// The second, after the reserve was released (its full disk was counted already).
    Again,
    /// No reserve was there to release: hand over the error the first run held back.
    GiveUp,
}

/// A job gets the connection (or why there is none), which run this is, and the health
/// record, where it counts a fault before its caller hears of it.
type Job = Box<dyn FnMut(Result<&mut Connection, &str>, Run, &Health) -> Ran + Send>;

/// A thread that owns a connection and runs queries in order. A burst of a thousand sends
/// queues here, instead of parking a thousand blocking-pool threads on a mutex (and starving
/// the pool that other database work would need to finish).
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread; it ends when the `Worker` is dropped. With `retry_full`, a job that
    /// finds the disk full is run again once the reserve is released (jobs that are one
    /// statement of a longer transaction must not be: the transaction is gone by then).
    pub(super) fn spawn(
        conn: Connection,
        shared: Arc<Shared>,
        retry_full: bool,
    ) -> anyhow::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wecom-notify-db".to_string())
            .spawn(move || serve(conn, &shared, queue, retry_full))
            .map_err(|e| anyhow!("cannot start the database thread: {e}"))?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the connection and waits for its result without blocking the runtime.
    /// `f` may run twice (see [`Worker::spawn`]), so it must not consume what it captures.
    pub async fn run<R, F>(&self, mut f: F) -> anyhow::Result<R>
    where
        F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let mut done = Some(done);
        let mut held_back = None;
        let job: Job = Box::new(move |conn, run, health| {
            if run == Run::GiveUp {
                if let (Some(done), Some(error)) = (done.take(), held_back.take()) {
                    let _ = done.send(Err(anyhow::Error::from(error)));
                }
                return Ran::Fault(FaultKind::DiskFull);
            }
            let outcome = match conn {
                Ok(conn) => f(conn),
                Err(why) => {
                    if let Some(done) = done.take() {
                        let _ = done.send(Err(anyhow!("the database cannot be opened: {why}")));
                    }
                    return Ran::Unavailable;
                }
            };
            let fault = outcome.as_ref().err().and_then(FaultKind::of);
            if let (Err(e), Some(kind)) = (&outcome, fault) {
                let counted = kind == FaultKind::DiskFull && run == Run::Again;
                if !counted {
                    health.record(kind, describe_error(e));
                }
            }
            if fault == Some(FaultKind::DiskFull)
                && run
                    == (Run::First {
                        may_run_again: true,
                    })
                && let Err(e) = outcome
            {
                held_back = Some(e);
                return Ran::Full;
            }
            if let Some(done) = done.take() {
                let _ = done.send(outcome.map_err(anyhow::Error::from));
            }
            fault.map_or(Ran::Done, Ran::Fault)
        });
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("the database thread has stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("the database thread has stopped"))?
    }
}

fn serve(
    conn: Connection,
    shared: &Shared,
    queue: std::sync::mpsc::Receiver<Job>,
    retry_full: bool,
) {
    let mut conn: Result<Connection, String> = Ok(conn);
    for mut job in queue {
        if conn.is_err() {
            conn = connect(&shared.path, shared.busy_timeout).map_err(|e| format!("{e:#}"));
        }
        let mut ran = job(
            conn.as_mut().map_err(|e| e.as_str()),
            Run::First {
                may_run_again: retry_full,
            },
            &shared.health,
        );
        if let Ran::Full = ran {
            // A second run only helps when there was a reserve to release for it.
            let run = if shared.reserve.release() {
                Run::Again
            } else {
                Run::GiveUp
            };
            ran = job(conn.as_mut().map_err(|e| e.as_str()), run, &shared.health);
        }
        if let Ran::Fault(kind) = ran
            && kind.needs_reopen()
        {
            // Closed before the new one opens: the old one's view of the file (its WAL
            // index, its cached pages) is what cannot be trusted any more.
            drop(conn);
            conn = connect(&shared.path, shared.busy_timeout).map_err(|e| format!("{e:#}"));
        }
    }
}
