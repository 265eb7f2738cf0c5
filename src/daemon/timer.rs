//! One timer per armed schedule: it computes each slot, waits for it, and hands the fire to a
//! tracked task so that a slow send never delays the next slot or another schedule.
//!
//! Waiting is two-stage. tokio-cron-scheduler is the coarse alarm: a one-shot job about two
//! seconds before the slot. It compares against the wall clock every 500 ms, so a long wait
//! survives suspend and clock corrections, where a monotonic sleep of hours would drift; and a
//! step of the wall clock ([`super::clock`]) starts every wait again, measured anew. The
//! last stretch is a precise sleep to the exact slot. This sidesteps the crate's traps: its
//! 500 ms poll no longer shows in the fire time, zone offsets are computed per slot (so
//! daylight-saving changes are right), the slot is known exactly (it is the one armed), and its
//! 6-field-only parser is never used.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::clock::Steps;
use super::progress::{Hold, Progress};
use super::recovery;
use crate::channel::Channel;
use crate::config::{App, Robot, Schedule};
use crate::dispatch::{Dispatcher, Fired};
use crate::store::history::Trigger;

/// How long before a slot the wall-clock alarm goes off. It must exceed the scheduler's 500 ms
/// poll plus its whole-second rounding of the alarm time.
const ALARM_LEAD: chrono::Duration = chrono::Duration::seconds(2);

/// How much later than the alarm the monotonic sleep raced against it ends.
const ALARM_GRACE: Duration = Duration::from_secs(1);

/// How long one add or remove may take before tokio-cron-scheduler is taken to be stuck.
const SCHEDULER_CALL_LIMIT: Duration = Duration::from_secs(10);

/// tokio-cron-scheduler, called by one task, one call at a time. Each of its `add`s and
/// `remove`s waits for its answer on a broadcast channel that every caller waiting at that
/// moment receives, so N timers arming at once cost N² wake-ups: measured, 100,000 schedules
/// kept both cores busy for 106 s after start, and a per-second schedule fired up to 7 s late
/// meanwhile. One at a time, the same adds take about 2 s. One queue for adds and removals
/// also keeps a removal from overtaking the add it undoes.
pub struct Alarms {
    scheduler: JobScheduler,
    calls: mpsc::UnboundedSender<Call>,
}

enum Call {
    /// Add the job, then answer (or drop the sender if the scheduler is not called any more).
    Add(Job, oneshot::Sender<()>),
    Remove(Uuid),
}

impl Alarms {
    pub fn new(scheduler: JobScheduler) -> Alarms {
        let (calls, queue) = mpsc::unbounded_channel();
        tokio::spawn(serve(scheduler.clone(), queue));
        Alarms { scheduler, calls }
    }

    /// Adds `job`, returning once the scheduler has answered. The caller races this against
    /// its own sleep, so waiting in the queue delays no fire.
    async fn add(&self, job: Job) {
        let (done, added) = oneshot::channel();
        if self.calls.send(Call::Add(job, done)).is_ok() {
            let _ = added.await;
        }
    }

    /// Queues the removal of a job, whether or not it was ever added.
    fn remove(&self, id: Uuid) {
        let _ = self.calls.send(Call::Remove(id));
    }

    /// Stops the scheduler (at daemon stop).
    pub async fn shutdown(&self) {
        let mut scheduler = self.scheduler.clone();
        if let Err(e) = scheduler.shutdown().await {
            tracing::debug!(error = ?e, "scheduler shutdown");
        }
    }
}

/// Makes the calls in order. A scheduler that leaves one unanswered for
/// [`SCHEDULER_CALL_LIMIT`] is taken to be stuck (its listeners stop for good when their
/// channels lag) and is not called again: from then on every timer's sleep keeps time alone.
async fn serve(scheduler: JobScheduler, mut queue: mpsc::UnboundedReceiver<Call>) {
    let mut stuck = false;
    while let Some(call) = queue.recv().await {
        if stuck {
            continue;
        }
        let answered = match call {
            Call::Add(job, done) => {
                let added = tokio::time::timeout(SCHEDULER_CALL_LIMIT, scheduler.add(job)).await;
                if let Ok(Err(e)) = &added {
                    tracing::debug!(error = ?e, "tokio-cron-scheduler refused a job; the sleep alone keeps time");
                }
                let _ = done.send(());
                added.is_ok()
            }
            Call::Remove(id) => tokio::time::timeout(SCHEDULER_CALL_LIMIT, scheduler.remove(&id))
                .await
                .is_ok(),
        };
        if !answered {
            tracing::warn!(
                "tokio-cron-scheduler did not answer within {}s; long waits are kept by plain sleeps from now on",
                SCHEDULER_CALL_LIMIT.as_secs()
            );
            stuck = true;
        }
    }
}

/// What every timer shares with the daemon.
pub struct Firing {
    pub alarms: Alarms,
    /// Waits longer than this use a tokio-cron-scheduler alarm; shorter ones a plain sleep.
    pub scheduler_min_wait: Duration,
    /// The apps of the config in force, looked up at fire time so that an app whose credentials
    /// change on reload is used at once by schedules that did not change.
    pub apps: RwLock<BTreeMap<String, Arc<App>>>,
    /// The group robots of the config in force, looked up at fire time like the apps.
    pub robots: RwLock<BTreeMap<String, Arc<Robot>>>,
    pub dispatcher: Arc<Dispatcher>,
    /// Fires in flight; shutdown waits for them.
    pub inflight: TaskTracker,
    /// The slots not yet claimed (the heartbeat's watermark).
    pub progress: Arc<Progress>,
    /// Steps of the wall clock: every wait starts again when one happens.
    pub steps: Steps,
}

impl Firing {
    /// The app named `name` in the config in force.
    pub fn app(&self, name: &str) -> Option<Arc<App>> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The channel `schedule` sends through, in the config in force.
    pub fn channel(&self, schedule: &Schedule) -> Option<Channel> {
        Channel::for_schedule(
            schedule,
            &self.apps.read().unwrap_or_else(|p| p.into_inner()),
            &self.robots.read().unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// An armed schedule. Dropping it disarms it (a fire already started is not interrupted).
pub struct Timer {
    pub schedule: Arc<Schedule>,
    cancel: CancellationToken,
    /// The slot it holds, to fire next (Unix seconds; `i64::MAX` when none).
    next: Arc<AtomicI64>,
}

impl Timer {
    /// Arms `schedule` for its slots that fall due at or after `not_before`. Earlier ones
    /// belong to the missed-slot scan (at start) or to the timer this one replaces (reload).
    pub fn arm(schedule: Arc<Schedule>, firing: Arc<Firing>, not_before: DateTime<Utc>) -> Timer {
        let cancel = CancellationToken::new();
        // Held from now on, not from when the task first runs: the heartbeat must never pass
        // a slot that an armed schedule has yet to fire.
        let first = first_due(&schedule, not_before).map(|slot| firing.progress.hold(slot));
        let next = Arc::new(AtomicI64::new(i64::MAX));
        note_next(&next, &first);
        tokio::spawn(run(
            schedule.clone(),
            firing,
            first,
            cancel.clone(),
            next.clone(),
        ));
        Timer {
            schedule,
            cancel,
            next,
        }
    }

    /// The slot this timer is to fire next, if any: a timer replaced on reload hands it to its
    /// successor, which must not start after it (a timer running late would lose it).
    pub fn next_slot(&self) -> Option<DateTime<Utc>> {
        match self.next.load(Ordering::SeqCst) {
            i64::MAX => None,
            at => DateTime::from_timestamp(at, 0),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The first slot of `schedule` that falls due at or after `not_before`.
fn first_due(schedule: &Schedule, not_before: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let jitter = schedule.jitter.unwrap_or_default();
    let mut next = schedule.next_from(not_before - jitter);
    while let Some(slot) = next.filter(|s| schedule.due(*s) < not_before) {
        next = schedule.next_after(slot);
    }
    next
}

/// Fires the slots of `schedule` from the one `held` on. The timer always holds its next slot
/// (see [`Progress`]); a fire takes the hold of its slot along and drops it once claimed.
async fn run(
    schedule: Arc<Schedule>,
    firing: Arc<Firing>,
    mut held: Option<Hold>,
    cancel: CancellationToken,
    next: Arc<AtomicI64>,
) {
    while let Some(hold) = held.take() {
        let slot = hold.slot();
        let due = schedule.due(slot);
        if !wait_for(&firing, due, &cancel).await {
            return;
        }
        let now = Utc::now();
        if now - due > recovery::LATE_LIMIT {
            // The wall clock jumped past this slot (suspend, a clock step): it and any others
            // passed over are missed, not sent late (unless catch_up says otherwise).
            recovery::settle(
                &firing,
                &schedule,
                slot,
                true,
                now,
                "because the clock jumped or the machine was suspended",
                &Default::default(),
            )
            .await;
            held = first_due(&schedule, now).map(|next| firing.progress.hold(next));
            note_next(&next, &held);
            continue;
        }
        let lag_ms = (now - due).num_milliseconds();
        tracing::debug!(schedule = %schedule.name, slot = %crate::time::to_db(slot), lag_ms, "firing");
        // The next slot is held before this one is handed over, so the watermark never skips.
        held = schedule
            .next_after(slot)
            .map(|next| firing.progress.hold(next));
        note_next(&next, &held);
        firing.inflight.spawn(fire(
            firing.clone(),
            schedule.clone(),
            slot,
            Trigger::Cron,
            hold,
        ));
    }
    tracing::info!(schedule = %schedule.name, "the cron expression names no further slot; timer ends");
}

fn note_next(next: &AtomicI64, held: &Option<Hold>) {
    let at = held.as_ref().map_or(i64::MAX, |h| h.slot().timestamp());
    next.store(at, Ordering::SeqCst);
}

/// Fires one slot through the dispatcher, with the app as currently configured. `hold` keeps
/// the heartbeat before `slot` until the slot's claim is durable.
pub async fn fire(
    firing: Arc<Firing>,
    schedule: Arc<Schedule>,
    slot: DateTime<Utc>,
    trigger: Trigger,
    hold: Hold,
) {
    let Some(channel) = firing.channel(&schedule) else {
        firing.progress.pin(slot);
        match &schedule.robot {
            Some(robot) => {
                tracing::error!(schedule = %schedule.name, %robot, "the schedule's robot is not configured; slot not sent")
            }
            None => {
                tracing::error!(schedule = %schedule.name, app = %schedule.app, "the schedule's app is not configured; slot not sent")
            }
        }
        return;
    };
    let fired = if schedule.skips(slot) {
        let skipped = firing.dispatcher.skip(&schedule, &channel, slot).await;
        if skipped.is_err() {
            firing.progress.pin(slot);
        }
        drop(hold);
        skipped.map(|_| Fired::Taken)
    } else {
        let mut hold = Some(hold);
        let fired = firing
            .dispatcher
            .fire_then(&schedule, &channel, slot, trigger, || drop(hold.take()))
            .await;
        if fired.is_err() {
            // Pinned before the hold goes: the watermark never passes this slot.
            firing.progress.pin(slot);
        }
        drop(hold);
        fired
    };
    match fired {
        Ok(Fired::Done(_)) | Ok(Fired::Taken) => {}
        Err(e) => {
            tracing::error!(schedule = %schedule.name, slot = %crate::time::to_db(slot), "could not record the send: {e:#}")
        }
    }
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// Its time came.
    Due,
    /// The wall clock stepped: the wait is to be measured again.
    Stepped,
    Cancelled,
}

/// Waits until the wall clock reaches `slot`; false when cancelled first. A step of the wall
/// clock starts the wait again, measured on the new clock.
async fn wait_for(firing: &Firing, slot: DateTime<Utc>, cancel: &CancellationToken) -> bool {
    let mut steps = firing.steps.clone();
    loop {
        // Marked seen before the clock is read: a step after this read wakes the wait.
        steps.borrow_and_update();
        match wait_once(firing, slot, cancel, &mut steps).await {
            Woke::Due => return true,
            Woke::Cancelled => return false,
            Woke::Stepped => continue,
        }
    }
}

async fn wait_once(
    firing: &Firing,
    slot: DateTime<Utc>,
    cancel: &CancellationToken,
    steps: &mut Steps,
) -> Woke {
    if let Ok(until_alarm) = (slot - ALARM_LEAD - Utc::now()).to_std() {
        let woke = if until_alarm > firing.scheduler_min_wait {
            alarm(&firing.alarms, until_alarm, cancel, steps).await
        } else {
            // A short wait cannot drift noticeably from the wall clock (and if the machine
            // sleeps through it, the late-fire check catches that): no job needed.
            sleep_unless_woken(until_alarm, cancel, steps).await
        };
        if woke != Woke::Due {
            return woke;
        }
    }
    // Re-read the wall clock after each sleep: monotonic and wall time drift apart slowly.
    while let Ok(remaining) = (slot - Utc::now()).to_std() {
        if remaining.is_zero() {
            break;
        }
        let woke = sleep_unless_woken(remaining, cancel, steps).await;
        if woke != Woke::Due {
            return woke;
        }
    }
    Woke::Due
}

async fn sleep_unless_woken(
    duration: Duration,
    cancel: &CancellationToken,
    steps: &mut Steps,
) -> Woke {
    tokio::select! {
        _ = tokio::time::sleep(duration) => Woke::Due,
        _ = cancel.cancelled() => Woke::Cancelled,
        Ok(()) = steps.changed() => Woke::Stepped,
    }
}

/// A tokio-cron-scheduler one-shot job `after` from now, raced against a monotonic sleep of
/// the same length: the wall-clock alarm wins after a suspend, the sleep wins if the scheduler
/// ever drops the job (its channels can lag under a burst of jobs), and a clock step ends the
/// wait to be measured again. A job that did not ring is removed, however the wait ended.
async fn alarm(
    alarms: &Alarms,
    after: Duration,
    cancel: &CancellationToken,
    steps: &mut Steps,
) -> Woke {
    let rang = Arc::new(Notify::new());
    let ring = rang.clone();
    let job = Job::new_one_shot_at_instant_async(std::time::Instant::now() + after, move |_, _| {
        let ring = ring.clone();
        Box::pin(async move { ring.notify_one() })
    });
    let Ok(job) = job else {
        return sleep_unless_woken(after, cancel, steps).await;
    };
    // The id is known before the add, so the job is removed even if the wait ends first.
    let id = job.guid();
    let sleep = tokio::time::sleep(after + ALARM_GRACE);
    tokio::pin!(sleep);
    let (woke, by_alarm) = tokio::select! {
        // Waiting in the queue to add counts against this wait, not in addition to it.
        _ = alarms.add(job) => tokio::select! {
            _ = rang.notified() => (Woke::Due, true),
            _ = &mut sleep => (Woke::Due, false),
            _ = cancel.cancelled() => (Woke::Cancelled, false),
            Ok(()) = steps.changed() => (Woke::Stepped, false),
        },
        _ = &mut sleep => (Woke::Due, false),
        _ = cancel.cancelled() => (Woke::Cancelled, false),
        Ok(()) = steps.changed() => (Woke::Stepped, false),
    };
    // A one-shot job that ran is deleted by the scheduler itself.
    if !by_alarm {
        alarms.remove(id);
    }
    woke
}
