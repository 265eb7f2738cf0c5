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

/// One statement that may share a transaction with the others queued behind it: the claims,
/// attempt counts and finishes of a burst of sends commit together (one write of their pages
/// to the WAL instead of one each). Its result is handed over only once the group committed.
trait Grouped: Send {
    /// Runs the work inside the group's transaction and keeps its result; on an error the
    /// group is rolled back, and each of its jobs runs alone.
    fn run(&mut self, conn: &mut Connection) -> rusqlite::Result<()>;
    /// Hands over the result kept by [`Grouped::run`], the group having committed.
    fn settle(self: Box<Self>);
    /// The same work as a job of its own: a group of one, or a group that did not commit.
    fn alone(self: Box<Self>) -> Job;
}

/// The most statements one group commits.
const GROUP_LIMIT: usize = 64;

struct GroupedJob<R, F> {
    f: F,
    result: Option<R>,
    done: tokio::sync::oneshot::Sender<anyhow::Result<R>>,
}

impl<R, F> Grouped for GroupedJob<R, F>
where
    F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn run(&mut self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.result = Some((self.f)(conn)?);
        Ok(())
    }

    fn settle(self: Box<Self>) {
        if let Some(result) = self.result {
            let _ = self.done.send(Ok(result));
        }
    }

    fn alone(self: Box<Self>) -> Job {
        job(self.f, self.done)
    }
}

enum Message {
    Job(Job),
    Grouped(Box<dyn Grouped>),
}

/// A thread that owns a connection and runs queries in order. A burst of a thousand sends
/// queues here, instead of parking a thousand blocking-pool threads on a mutex (and starving
/// the pool that other database work would need to finish).
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Message>,
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
        let (jobs, queue) = std::sync::mpsc::channel::<Message>();
        std::thread::Builder::new()
            .name("wecom-notify-db".to_string())
            .spawn(move || serve(conn, &shared, queue, retry_full))
            .map_err(|e| anyhow!("cannot start the database thread: {e}"))?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the connection and waits for its result without blocking the runtime.
    /// `f` may run twice (see [`Worker::spawn`]), so it must not consume what it captures.
    pub async fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        self.queue(Message::Job(job(f, done)), result).await
    }

    /// [`Worker::run`] for one statement of autocommit work (no transaction of its own), which
    /// may commit in one transaction with the like statements queued right behind it. Its
    /// result comes once that transaction committed.
    pub async fn run_grouped<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let grouped = GroupedJob {
            f,
            result: None,
            done,
        };
        self.queue(Message::Grouped(Box::new(grouped)), result)
            .await
    }

    async fn queue<R>(
        &self,
        message: Message,
        result: tokio::sync::oneshot::Receiver<anyhow::Result<R>>,
    ) -> anyhow::Result<R> {
        self.jobs
            .send(message)
            .map_err(|_| anyhow!("the database thread has stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("the database thread has stopped"))?
    }
}

/// The job that runs `f` on the connection and sends its result to `done`.
fn job<R, F>(mut f: F, done: tokio::sync::oneshot::Sender<anyhow::Result<R>>) -> Job
where
    F: FnMut(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    R: Send + 'static,
{
    let mut done = Some(done);
    let mut held_back = None;
    Box::new(move |conn, run, health| {
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
    })
}

fn serve(
    conn: Connection,
    shared: &Shared,
    queue: std::sync::mpsc::Receiver<Message>,
    retry_full: bool,
) {
    let mut conn: Result<Connection, String> = Ok(conn);
    let mut next = None;
    loop {
        let message = match next.take() {
            Some(message) => message,
            None => match queue.recv() {
                Ok(message) => message,
                Err(_) => return,
            },
        };
        let first = match message {
            Message::Job(job) => {
                run_job(&mut conn, shared, job, retry_full);
                continue;
            }
            Message::Grouped(first) => first,
        };
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match queue.try_recv() {
                Ok(Message::Grouped(more)) => group.push(more),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if group.len() > 1 && commit_group(&mut conn, &mut group, shared) {
            for grouped in group {
                grouped.settle();
            }
            continue;
        }
        // Each runs alone: faults are told apart and counted there, and a full disk gets its
        // reserve.
        for grouped in group {
            run_job(&mut conn, shared, grouped.alone(), retry_full);
        }
    }
}

/// Runs every statement of `group` in one transaction; true when it committed. Otherwise
/// nothing of it stays (it was rolled back), its results were not handed over, and the
/// connection is out of any transaction (reopened if it could not be got out of it, or if the
/// group met a fault that makes it untrustworthy), for each job to run alone.
///
/// The transaction starts only if the write lock is free at once: when another connection
/// holds it, each statement waits for it alone, as it would have without the group (a wait
/// here would come on top of theirs).
fn commit_group(
    conn: &mut Result<Connection, String>,
    group: &mut [Box<dyn Grouped>],
    shared: &Shared,
) -> bool {
    let Ok(c) = conn.as_mut() else {
        return false;
    };
    // Never inside a transaction someone else left open: its end is not the group's to decide.
    if !c.is_autocommit() {
        return false;
    }
    let began = c
        .busy_timeout(Duration::ZERO)
        .and_then(|()| c.execute_batch("BEGIN IMMEDIATE"));
    let restored = c.busy_timeout(shared.busy_timeout);
    let fault = match (began, restored) {
        (Ok(()), Ok(())) => match group.iter_mut().try_for_each(|grouped| grouped.run(c)) {
            // A statement's fault is met again, and counted, when it runs alone.
            Err(e) => FaultKind::of(&e),
            Ok(()) => match c.execute_batch("COMMIT") {
                Ok(()) => return true,
                Err(e) => {
                    // The COMMIT itself failed (the WAL write): the statements' own runs may
                    // not meet it again, so it is counted here.
                    let kind = FaultKind::of(&e);
                    if let Some(kind) = kind {
                        shared.health.record(kind, describe_error(&e));
                    }
                    kind
                }
            },
        },
        // The lock was taken, or the timeout could not be set: nothing was run.
        _ => None,
    };
    let rolled_back = c.is_autocommit() || c.execute_batch("ROLLBACK").is_ok();
    if !rolled_back || !c.is_autocommit() || fault.is_some_and(FaultKind::needs_reopen) {
        *conn = Err("reopening".to_string());
        *conn = connect(&shared.path, shared.busy_timeout).map_err(|e| format!("{e:#}"));
    }
    false
}

fn run_job(conn: &mut Result<Connection, String>, shared: &Shared, mut job: Job, retry_full: bool) {
    if conn.is_err() {
        *conn = connect(&shared.path, shared.busy_timeout).map_err(|e| format!("{e:#}"));
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
        *conn = Err("reopening".to_string());
        *conn = connect(&shared.path, shared.busy_timeout).map_err(|e| format!("{e:#}"));
    }
}
