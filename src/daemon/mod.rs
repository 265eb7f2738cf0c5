//! The long-running daemon: arm every schedule, reload on request, stop cleanly.
//!
//! Signals are read at the edge ([`signals`]) and arrive here as two channels, so the daemon
//! runs the same inside a test as under systemd.

mod clock;
mod memory;
pub mod notify;
mod progress;
mod recovery;
pub mod reload;
pub mod signals;
mod timer;

pub use memory::{disable_transparent_huge_pages, tune_allocator};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio_cron_scheduler::JobScheduler;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, Schedule, Secrets};
use crate::dispatch::Dispatcher;
use crate::metrics;
use crate::store::events::EventKind;
use notify::Notifier;
use recovery::Downtime;
use reload::{Diff, changed_credentials};
use timer::{Alarms, Deadlines, Firing};

/// Waits for a slot longer than this are kept by a tokio-cron-scheduler alarm (which follows
/// the wall clock through suspends and clock steps); shorter ones by a plain sleep.
pub const DEFAULT_SCHEDULER_MIN_WAIT: Duration = Duration::from_secs(60);

/// The channel size given to tokio-cron-scheduler (its default is 200). Its calls are made one
/// at a time (`timer::Alarms`), each waiting for its answer, and one job at most is armed, so
/// a channel holds a message or two at once: 32 leaves room to spare. Each of its ten channels
/// allocates every slot up front; at 1,024 they took about 0.5 MB (measured with heaptrack),
/// resident in every daemon.
const SCHEDULER_CHANNEL: usize = 32;

/// How long shutdown waits for sends in flight before recording them as `interrupted`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the history is pruned (also once at start) when `history_retention` is set.
const RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted per statement while pruning, so that sends are never held up for long.
const PRUNE_BATCH: usize = 500;

/// How often sends the database refused are tried again (and the disk reserve and storage
/// faults looked after).
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// A reload that has not produced a config within this long is reported as stuck (a config or
/// secret file on a stalled mount, a named pipe nobody writes); the next SIGHUP starts afresh.
pub const DEFAULT_RELOAD_LIMIT: Duration = Duration::from_secs(30);

/// How far back a re-armed schedule looks for a slot: a slot its old timer was about to fire
/// when the reload cancelled it is fired by the new one (the database refuses a second send).
const REARM_OVERLAP: chrono::Duration = chrono::Duration::seconds(2);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// See [`DEFAULT_STOP_TIMEOUT`].
    pub stop_timeout: Duration,
    /// See [`DEFAULT_SCHEDULER_MIN_WAIT`].
    pub scheduler_min_wait: Duration,
    /// See [`DEFAULT_RELOAD_LIMIT`].
    pub reload_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            scheduler_min_wait: DEFAULT_SCHEDULER_MIN_WAIT,
            reload_limit: DEFAULT_RELOAD_LIMIT,
        }
    }
}

/// Requests from outside: each message on `reloads` is a SIGHUP; the first on `stops` starts a
/// graceful stop and a second one cuts the wait short.
pub struct Control {
    pub reloads: mpsc::UnboundedReceiver<()>,
    pub stops: mpsc::UnboundedReceiver<()>,
}

/// A reload whose config is being read and validated on a thread of its own, so that the
/// main loop keeps feeding the watchdog and answering stop requests meanwhile (validating
/// 100,000 schedules takes seconds; a config path on a stalled mount could take forever).
struct Loading {
    result: oneshot::Receiver<Result<Config, ConfigError>>,
    /// Another SIGHUP came while this load ran: the file may have changed after it was read,
    /// so one more load follows this one.
    again: bool,
    /// It was reported stuck: it has not finished within [`Options::reload_limit`], and the
    /// next SIGHUP starts a new one instead of waiting for it.
    stuck: bool,
    /// When the reload limit passes.
    deadline: tokio::time::Instant,
}

/// What became of the reload in progress.
enum Loaded {
    Done(Box<Result<Result<Config, ConfigError>, oneshot::error::RecvError>>),
    /// It passed its limit (reported once).
    Stuck,
}

/// The result of the reload in progress, or its passing its limit; never ready when there is
/// none.
async fn loaded(loading: &mut Option<Loading>) -> Loaded {
    let Some(loading) = loading else {
        return std::future::pending().await;
    };
    if loading.stuck {
        return Loaded::Done(Box::new((&mut loading.result).await));
    }
    tokio::select! {
        result = &mut loading.result => Loaded::Done(Box::new(result)),
        _ = tokio::time::sleep_until(loading.deadline) => {
            loading.stuck = true;
            Loaded::Stuck
        }
    }
}

/// Ready when the wall clock steps (never if the watch has ended).
async fn stepped(steps: &mut clock::Steps) -> clock::Step {
    if steps.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    *steps.borrow_and_update()
}

struct Daemon {
    config: Config,
    firing: Arc<Firing>,
    /// The deadline heap that fires every armed schedule.
    deadlines: Deadlines,
    notifier: Notifier,
    options: Options,
    /// For the heartbeat row.
    started_at: chrono::DateTime<Utc>,
    /// What /healthz and /readyz answer.
    probes: Arc<crate::probes::Probes>,
    /// Daemons of other instances this start took for alive, watched until they prove it.
    silent: Option<recovery::Silent>,
}

/// Runs until a stop is requested. Returns an error only when the daemon cannot start.
pub async fn run(
    config: Config,
    dispatcher: Arc<Dispatcher>,
    options: Options,
    mut control: Control,
) -> anyhow::Result<()> {
    let store = dispatcher.store().clone();
    // One timer task waits for the earliest deadline: at most one job at a time.
    let scheduler = JobScheduler::new_with_channel_size(SCHEDULER_CHANNEL).await?;
    scheduler.start().await?;
    let firing = Arc::new(Firing {
        alarms: Alarms::new(scheduler),
        scheduler_min_wait: options.scheduler_min_wait,
        apps: RwLock::new(config.apps.clone()),
        robots: RwLock::new(config.robots.clone()),
        dispatcher,
        inflight: TaskTracker::new(),
        progress: Arc::default(),
        steps: clock::watch(),
    });
    let mut steps = firing.steps.clone();
    let notifier = Notifier;
    let probes = Arc::new(crate::probes::Probes::default());
    if let Some(address) = config.metrics_listen {
        // Up before the start-up work, so that /readyz says "starting" meanwhile. Metrics are
        // a convenience: a port already taken must not stop the sending.
        let metrics = firing.dispatcher.metrics().clone();
        if let Err(e) = metrics::serve(address, metrics, probes.clone()).await {
            tracing::error!("cannot serve metrics on {address}: {e}");
        }
    }
    if firing.dispatcher.is_dry_run() {
        tracing::info!("dry run: not recording sends that an earlier run left unrecorded");
    } else {
        // What an earlier run sent but could not record goes in first: the missed-slot scan
        // and crash recovery below must see those slots as sent.
        store.replay_unrecorded(true).await?;
        store.keep_reserve().await;
    }
    // Renews this process's claims while it runs (not in a dry run: it claims nothing).
    store.set_owner(config.owner());
    // Read what the previous run left before this run writes anything.
    let downtime = Downtime::read(&store).await?;
    let started_at = Utc::now();
    if !firing.dispatcher.is_dry_run() {
        // This run's heartbeat takes over from the dead ones' before anything else is
        // written: a crash before the past is settled leaves the next start the same point to
        // look from, and a daemon starting beside this one sees it running.
        store
            .beat(
                started_at,
                Some(downtime.fired_through(started_at)),
                false,
                downtime.gone(),
            )
            .await?;
        let version = format!("version {}", env!("CARGO_PKG_VERSION"));
        store
            .record_event(EventKind::Started, &config.digest, &version)
            .await?;
    }
    let deadlines = Deadlines::start(firing.clone());
    firing.dispatcher.metrics().watch_armed(deadlines.armed());
    let mut daemon = Daemon {
        config,
        firing,
        deadlines,
        notifier,
        options,
        started_at,
        probes,
        silent: None,
    };
    // One instant divides the past (settled here) from the future (armed below), so that no
    // slot is both missed and fired, or neither.
    let now = Utc::now();
    if daemon.dry_run() {
        // A rehearsal writes no claims: crashed sends and missed slots are the real daemon's.
        tracing::info!("dry run: not resuming crashed sends nor recording missed slots");
    } else {
        recovery::resume_pending(&daemon.firing, now).await;
        daemon.silent = Some(downtime.silent(now));
        downtime
            .settle_all(&daemon.firing, &daemon.config.schedules, now)
            .await;
    }
    // Renews this process's claims while it runs (none in a dry run). Started once the rows a
    // predecessor under this very pid left are taken over: renewing those first would make
    // the takeover's compare-and-swap fail and leave them pending.
    let _leases = (!daemon.dry_run()).then(|| store.keep_leases());
    let enabled = daemon.config.schedules.iter().filter(|s| s.enabled).count();
    daemon.deadlines.reserve(enabled);
    for schedule in daemon.config.schedules.clone() {
        if schedule.enabled {
            daemon.deadlines.arm(schedule, now);
        }
    }
    daemon.beat(false).await;
    memory::loaded();
    let status = daemon.status_line();
    tracing::info!(config = %daemon.config.path.display(), digest = %daemon.config.digest, dry_run = daemon.dry_run(), "{status}");
    daemon.notifier.ready(&status);
    daemon.probes.armed();

    let mut watchdog = daemon
        .notifier
        .watchdog_interval()
        .map(tokio::time::interval);
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    let pruning = Arc::new(AtomicBool::new(false));
    let mut loading: Option<Loading> = None;
    let mut timers_ended = false;
    loop {
        daemon.probes.turned();
        tokio::select! {
            // A stop request wins over everything else that is ready, a finished reload too.
            biased;
            _ = control.stops.recv() => break,
            () = daemon.deadlines.ended() => {
                // One task fires every schedule: without it, the daemon would look alive and
                // send nothing. Stop, so that systemd restarts it and the start records what
                // was missed.
                tracing::error!("the timer task ended unexpectedly (a panic); stopping so that a restart arms every schedule again");
                timers_ended = true;
                break;
            }
            _ = tick(&mut watchdog) => daemon.notifier.watchdog(),
            Some(()) = control.reloads.recv() => match &mut loading {
                // A stuck load may never end: this SIGHUP starts a new one, and whatever the
                // stuck one reads is thrown away.
                Some(stuck) if stuck.stuck => loading = daemon.start_reload().await,
                Some(loading) => loading.again = true,
                None => loading = daemon.start_reload().await,
            },
            step = stepped(&mut steps) => daemon.clock_stepped(step).await,
            progress = loaded(&mut loading) => match progress {
                Loaded::Done(result) => {
                    let again = loading.take().is_some_and(|l| l.again);
                    daemon.finish_reload(*result).await;
                    if again {
                        loading = daemon.start_reload().await;
                    }
                }
                Loaded::Stuck => {
                    daemon.reload_stuck().await;
                    // A SIGHUP that came meanwhile was waiting for this load: it starts anew.
                    if loading.as_ref().is_some_and(|l| l.again) {
                        loading = daemon.start_reload().await;
                    }
                }
            },
            _ = retention.tick() => daemon.prune_history(&pruning),
            _ = flush.tick() => daemon.tend_storage().await,
        }
    }
    // A step seen by the timers just before the stop request won the race is recorded too.
    if steps.has_changed().unwrap_or(false) {
        let step = *steps.borrow_and_update();
        daemon.clock_stepped(step).await;
    }
    daemon.shutdown(&mut control.stops).await;
    if timers_ended {
        anyhow::bail!("the timer task ended unexpectedly; see the log above");
    }
    Ok(())
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// A rehearsal: the dispatcher renders and records but never calls WeCom.
    fn dry_run(&self) -> bool {
        self.firing.dispatcher.is_dry_run()
    }

    /// "3 schedules armed, next: standup at 2026-11-30 09:30 +08:00".
    fn status_line(&self) -> String {
        let next = self.deadlines.next();
        let mut line = format!("{} schedules armed", self.deadlines.len());
        if self.dry_run() {
            line.push_str(" (dry run)");
        }
        if let Some((at, schedule)) = next {
            let local = at.with_timezone(&schedule.zone);
            line.push_str(&format!(
                ", next: {} at {}",
                schedule.name,
                local.format("%Y-%m-%d %H:%M:%S %:z")
            ));
        }
        line
    }

    /// Records an event with the digest of the config in force (not in a dry run: a rehearsal
    /// must not look like a daemon that was alive, to the next start's missed-slot scan).
    async fn event(&self, kind: EventKind, detail: &str) {
        self.event_at(kind, Utc::now(), detail).await;
    }

    async fn event_at(&self, kind: EventKind, at: chrono::DateTime<Utc>, detail: &str) {
        if self.dry_run() {
            return;
        }
        let store = self.firing.dispatcher.store();
        if let Err(e) = store
            .record_event_at(kind, at, &self.config.digest, detail)
            .await
        {
            tracing::error!("could not record the {} event: {e:#}", kind.as_str());
        }
    }

    /// Writes this daemon's heartbeat: alive now, and how far it has fired. While a send waits
    /// in memory for the database, only `alive_at` moves: that send's slot has no row and no
    /// claim that the next start could see, so `fired_through` stays where it was.
    async fn beat(&self, stopped: bool) {
        let dispatcher = &self.firing.dispatcher;
        if self.dry_run() {
            return;
        }
        // Measured before the check: a fire that hands its slot to memory in between is then
        // still held, or already counted as unwritten.
        let through = Some(self.firing.progress.fired_through(Utc::now()))
            .filter(|_| dispatcher.all_written());
        let wrote = dispatcher
            .store()
            .beat(self.started_at, through, stopped, Vec::new())
            .await;
        if let Err(e) = &wrote {
            tracing::debug!("cannot write the heartbeat yet: {e:#}");
        }
        self.probes.wrote(wrote.map_err(|e| format!("{e:#}")));
    }

    /// Logs and records a step of the wall clock (the timers have started their waits again).
    async fn clock_stepped(&self, step: clock::Step) {
        let what = step.describe();
        if step.by < chrono::Duration::zero() {
            tracing::warn!(
                "the wall clock stepped {what}; slots already fired are not fired again, the next slot fires when the clock reaches it"
            );
        } else {
            tracing::warn!(
                "the wall clock stepped {what}; the slots it jumped over are fired late, or recorded missed beyond 60 s late"
            );
        }
        self.event(
            EventKind::ClockStep,
            &format!("the wall clock stepped {what}"),
        )
        .await;
    }

    /// Reports a reload that has not finished within its limit. The config in force stays;
    /// the next SIGHUP starts a new reload.
    async fn reload_stuck(&self) {
        let limit = self.options.reload_limit.as_secs();
        let why = format!(
            "the config has not been read within {limit} s (is the config file, or a secret_file, a named pipe or on a stalled mount?); the previous config stays in force, and the next SIGHUP starts a new reload"
        );
        tracing::error!("reload stuck: {why}");
        self.firing.dispatcher.metrics().count_reload(false);
        self.event(EventKind::ReloadFailed, &why).await;
        self.notifier.ready(&self.status_line());
    }

    /// Writes the sends the database refused earlier, records the ones other processes left
    /// behind when they died, keeps the disk reserve, and records a storage fault episode once
    /// the database takes writes again.
    async fn tend_storage(&mut self) {
        let dispatcher = &self.firing.dispatcher;
        dispatcher.flush_unwritten().await;
        if self.dry_run() {
            return;
        }
        let store = dispatcher.store();
        match store.replay_unrecorded(false).await {
            // Sends of another process that died mid-flight, now pending rows: resent or
            // closed as any crashed send is.
            Ok(replayed) if !replayed.in_flight.is_empty() => {
                recovery::resume_rows(&self.firing, &replayed.in_flight, Utc::now()).await;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("unrecorded sends of other processes wait: {e:#}"),
        }
        store.keep_reserve().await;
        recovery::resume_lapsed(&self.firing, Utc::now()).await;
        if let Some(silent) = self.silent.as_mut() {
            silent.look(&self.firing, &self.config.schedules).await;
        }
        self.beat(false).await;
        let health = store.health();
        if let Some(episode) = health.episode() {
            let detail = episode.describe();
            let recorded = store
                .record_event(EventKind::DatabaseFault, &self.config.digest, &detail)
                .await;
            if recorded.is_ok() && health.end_episode(&episode) {
                tracing::info!("the database takes writes again: {detail}");
            }
        }
    }

    /// Deletes history older than `history_retention` in the background (one pass at a time).
    fn prune_history(&self, pruning: &Arc<AtomicBool>) {
        let Some(retention) = self.config.history_retention else {
            return;
        };
        if self.dry_run() || pruning.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = self.firing.dispatcher.store().clone();
        let pruning = pruning.clone();
        tokio::spawn(async move {
            let before = Utc::now() - retention;
            match store.prune(before, PRUNE_BATCH).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, before = %crate::time::to_db(before), "pruned history older than history_retention")
                }
                Err(e) => tracing::error!("could not prune the history: {e:#}"),
            }
            pruning.store(false, Ordering::SeqCst);
        });
    }

    /// Announces a reload and starts reading the config file on a thread of its own. A thread,
    /// not `spawn_blocking`: a read that never returns must not hold up the daemon's exit.
    async fn start_reload(&self) -> Option<Loading> {
        self.notifier.reloading();
        let path = self.config.path.clone();
        let secrets = Secrets::for_dry_run(self.dry_run());
        // Unchanged schedules are taken over, not read again.
        let prior = self.config.prior();
        let (sender, result) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                reload::yield_to_firing();
                // The daemon may have stopped meanwhile; then nobody needs the result.
                let _ = sender.send(config::load_to_run(&path, secrets, prior.as_ref()));
            });
        match spawned {
            Ok(_) => Some(Loading {
                result,
                again: false,
                stuck: false,
                deadline: tokio::time::Instant::now() + self.options.reload_limit,
            }),
            Err(e) => {
                tracing::error!(
                    "reload failed, the previous config stays in force: cannot start a thread: {e}"
                );
                self.firing.dispatcher.metrics().count_reload(false);
                self.event(
                    EventKind::ReloadFailed,
                    &format!("cannot start a thread: {e}"),
                )
                .await;
                self.notifier.ready(&self.status_line());
                None
            }
        }
    }

    /// Switches to the config a reload produced, or keeps the one in force when it was invalid.
    async fn finish_reload(
        &mut self,
        loaded: Result<Result<Config, ConfigError>, oneshot::error::RecvError>,
    ) {
        match loaded {
            Ok(Ok(new)) => {
                let metrics_listen = self.config.metrics_listen;
                let summary = self.apply(new).await;
                self.firing.dispatcher.metrics().count_reload(true);
                if self.config.metrics_listen != metrics_listen {
                    tracing::warn!("metrics.listen changed; it takes effect at the next restart");
                }
                tracing::info!(digest = %self.config.digest, "reloaded: {summary}");
                self.config.log_warnings();
                self.event(EventKind::Reloaded, &summary).await;
            }
            Ok(Err(error)) => {
                tracing::error!("reload rejected, the previous config stays in force: {error}");
                self.firing.dispatcher.metrics().count_reload(false);
                self.event(EventKind::ReloadFailed, &error.to_string())
                    .await;
            }
            Err(_) => {
                // The loading thread ended without an answer: it panicked.
                tracing::error!(
                    "reload failed while reading the config; the previous config stays in force"
                );
                self.firing.dispatcher.metrics().count_reload(false);
                self.event(
                    EventKind::ReloadFailed,
                    "the config could not be read (internal error)",
                )
                .await;
            }
        }
        memory::loaded();
        self.notifier.ready(&self.status_line());
    }

    /// Switches to `new`: removed and changed schedules are disarmed, added and changed ones
    /// armed, unchanged ones keep their timers. Sends in flight are not touched.
    async fn apply(&mut self, mut new: Config) -> String {
        // By name, borrowed: one table, no copy of a name (see `Diff`).
        let armed = self.deadlines.schedules();
        let armed: HashMap<&str, &Arc<Schedule>> = armed.iter().map(|s| (&*s.name, s)).collect();
        let diff = Diff::between(&armed, &new);
        // Unchanged schedules keep the copy their timer holds: one copy in memory, not two. The
        // others are copied here, off the reload thread's pages (see `Schedule::relocated`).
        let mut copies = config::Relocation::default();
        for schedule in &mut new.schedules {
            *schedule = match armed.get(&*schedule.name).filter(|kept| **kept == schedule) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(schedule.relocated(&mut copies)),
            };
        }
        for app in changed_credentials(&self.config.apps, &new.apps) {
            tracing::info!(app = %app.name, "credentials changed; dropping the cached token");
            if let Err(e) = self.firing.dispatcher.tokens().forget(app).await {
                tracing::warn!("could not drop the cached token: {e:#}");
            }
        }
        *self.firing.apps.write().unwrap_or_else(|p| p.into_inner()) = new.apps.clone();
        *self
            .firing
            .robots
            .write()
            .unwrap_or_else(|p| p.into_inner()) = new.robots.clone();
        let resume_from = Utc::now() - REARM_OVERLAP;
        let mut replaced = BTreeMap::new();
        for name in diff.removed.iter().chain(&diff.changed) {
            if let Some(next) = self.deadlines.disarm(name) {
                replaced.insert(name.clone(), next);
            }
        }
        // By name, once: a lookup per armed schedule would scan the whole list each time.
        let by_name: HashMap<&str, &Arc<Schedule>> =
            new.schedules.iter().map(|s| (&*s.name, s)).collect();
        for name in diff.added.iter().chain(&diff.changed) {
            if let Some(schedule) = by_name.get(name.as_str()).map(|s| Arc::clone(s)) {
                // A timer running late hands over the slot it had yet to fire.
                let from = replaced
                    .get(name)
                    .copied()
                    .flatten()
                    .map_or(resume_from, |next| next.min(resume_from));
                self.deadlines.arm(schedule, from);
            }
        }
        self.config = new;
        diff.summary()
    }

    async fn shutdown(self, stops: &mut mpsc::UnboundedReceiver<()>) {
        self.probes.stopping();
        let inflight = self.firing.inflight.len();
        tracing::info!(
            inflight,
            "stopping: no new fires; waiting for sends in flight"
        );
        self.notifier
            .stopping(&format!("stopping, {inflight} send(s) in flight"));
        // From this instant on, slots are no longer this daemon's: the next start's missed-slot
        // scan counts from here, however long the wait for sends in flight takes.
        let disarmed_at = Utc::now();
        // Before the timers go, with the holds of any slot one of them had yet to fire.
        let progress = &self.firing.progress;
        progress.stop_at(progress.fired_through(disarmed_at));
        self.deadlines.disarm_all();
        self.deadlines.stop();
        self.firing.alarms.shutdown().await;
        self.firing.inflight.close();
        let detail = tokio::select! {
            _ = self.firing.inflight.wait() => "clean".to_string(),
            _ = tokio::time::sleep(self.options.stop_timeout) => {
                let n = self.firing.dispatcher.interrupt_inflight().await;
                tracing::warn!(interrupted = n, "sends still in flight after {}s; recorded as interrupted", self.options.stop_timeout.as_secs());
                format!("timed out after {}s, {n} send(s) interrupted", self.options.stop_timeout.as_secs())
            }
            _ = stops.recv() => {
                let n = self.firing.dispatcher.interrupt_inflight().await;
                tracing::warn!(interrupted = n, "second stop request; not waiting for sends in flight");
                format!("second stop request, {n} send(s) interrupted")
            }
        };
        let dispatcher = &self.firing.dispatcher;
        if dispatcher.flush_unwritten().await > 0 {
            dispatcher.log_unwritten();
        }
        self.beat(true).await;
        self.event_at(EventKind::Stopped, disarmed_at, &detail)
            .await;
        tracing::info!("stopped ({detail})");
    }
}
