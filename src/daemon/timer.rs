//! One timer task for every armed schedule: a deadline heap holds each schedule's next slot;
//! the task waits for the earliest, and hands each fire to a tracked task so that a slow send
//! never delays the next slot or another schedule.
//!
//! Waiting is two-stage. tokio-cron-scheduler is the coarse alarm: a one-shot job about two
//! seconds before the slot. It compares against the wall clock every 500 ms, so a long wait
//! survives suspend and clock corrections, where a monotonic sleep of hours would drift; and a
//! step of the wall clock ([`super::clock`]) starts every wait again, measured anew. The
//! last stretch is a precise sleep to the exact slot. This sidesteps the crate's traps: its
//! 500 ms poll no longer shows in the fire time, zone offsets are computed per slot (so
//! daylight-saving changes are right), the slot is known exactly (it is the one armed), and its
//! 6-field-only parser is never used.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
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
use crate::metrics::ArmedSchedules;
use crate::store::history::Trigger;

/// How long before a slot the wall-clock alarm goes off. It must exceed the scheduler's 500 ms
/// poll plus its whole-second rounding of the alarm time.
const ALARM_LEAD: chrono::Duration = chrono::Duration::seconds(2);

/// How much later than the alarm the monotonic sleep raced against it ends.
const ALARM_GRACE: Duration = Duration::from_secs(1);
/// The last stretch of a wait, slept on a thread rather than on tokio's timer: tokio's timer
/// counts whole milliseconds and wakes at the tick after the deadline (about 1 ms late on
/// average), a thread's sleep within a few tens of microseconds.
const FINE_WAIT: Duration = Duration::from_millis(2);

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

/// Every armed schedule's next slot, and the one task that fires them: a deadline heap.
///
/// One task waits for the earliest deadline of all schedules (one tokio-cron-scheduler alarm
/// for a long wait, not one per schedule), fires every slot then due and puts each schedule's
/// next slot back. Arming or disarming a schedule is an insert or a removal under one lock;
/// the task is woken only when a deadline earlier than the one it waits for arrives.
pub struct Timers {
    state: Mutex<Heap>,
    /// Wakes the task when a deadline earlier than the one it waits for arrives.
    earlier: Notify,
    /// Ends the task (at daemon stop).
    stop: CancellationToken,
}

/// The armed schedules, found by name, and their deadlines.
///
/// Sized for 100,000 schedules: 24 bytes an entry, 16 a deadline, 5 for the name's place in
/// the index (measured with heaptrack, the map of ids, the queue of 24-byte deadlines and the
/// daemon's set of timer handles before took about 120 bytes a schedule).
struct Heap {
    /// Deadlines by due instant, then by entry. An entry whose schedule was disarmed, or
    /// re-armed for another deadline, stays until it reaches the top and is then dropped (or
    /// until [`Heap::compact`]); it counts only while it is the deadline of the slot its entry
    /// holds.
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u32)>>,
    /// The armed schedules. An index stays a schedule's while it is armed; a freed one is used
    /// again (a stale deadline on it then either is the new entry's own, or does not count).
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// The index of each armed schedule, by the schedule's name (the entry has the name).
    names: HashTable<u32>,
    hasher: RandomState,
    /// Where the entries' slots are held.
    progress: Arc<Progress>,
    /// The deadline the task waits for; `None` when it waits for none.
    waiting_for: Option<DateTime<Utc>>,
}

/// One armed schedule and the slot it is to fire next, if any: held in the progress (taken
/// with [`Progress::take`]) until it is fired, replaced or disarmed. When that slot falls due
/// (the slot plus any jitter) is in the queue, and [`Schedule::due`] works it out again.
struct Entry {
    schedule: Arc<Schedule>,
    slot: Option<DateTime<Utc>>,
}

impl Heap {
    fn new(progress: Arc<Progress>) -> Heap {
        Heap {
            queue: BinaryHeap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            names: HashTable::new(),
            hasher: RandomState::new(),
            progress,
            waiting_for: None,
        }
    }

    /// Room for `n` more schedules, without the spare room of doubling.
    fn reserve(&mut self, n: usize) {
        self.entries
            .reserve_exact(n.saturating_sub(self.free.len()));
        self.queue.reserve_exact(n);
        let Heap {
            names,
            entries,
            hasher,
            ..
        } = self;
        names.reserve(n, |&i| hash(hasher, entries, i));
    }

    fn find(&self, name: &str) -> Option<u32> {
        self.names
            .find(self.hasher.hash_one(name), named(&self.entries, name))
            .copied()
    }

    /// Arms `schedule` for `slot` (none: armed, with no slot left to fire), in place of the
    /// schedule of the same name if one is armed. Returns the deadline.
    fn arm(
        &mut self,
        schedule: Arc<Schedule>,
        slot: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        if let Some(slot) = slot {
            self.progress.take(slot);
        }
        let index = match self.find(&schedule.name) {
            Some(index) => {
                let old = self.entries[index as usize].replace(Entry {
                    schedule: schedule.clone(),
                    slot,
                });
                self.release(old);
                // The deadline of the schedule replaced stays behind, stale.
                self.compact();
                index
            }
            None => {
                let entry = Some(Entry {
                    schedule: schedule.clone(),
                    slot,
                });
                let index = match self.free.pop() {
                    Some(index) => {
                        self.entries[index as usize] = entry;
                        index
                    }
                    None => {
                        self.entries.push(entry);
                        // More than 4 billion schedules do not fit in memory anyway.
                        u32::try_from(self.entries.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                let Heap {
                    names,
                    entries,
                    hasher,
                    ..
                } = self;
                names.insert_unique(hasher.hash_one(&*schedule.name), index, |&i| {
                    hash(hasher, entries, i)
                });
                index
            }
        };
        let due = slot.map(|slot| schedule.due(slot));
        if let Some(due) = due {
            self.queue.push(Reverse((due, index)));
        }
        due
    }

    /// Disarms the schedule named `name`. Returns the slot it was to fire next, if it was
    /// armed.
    fn disarm(&mut self, name: &str) -> Option<Option<DateTime<Utc>>> {
        let Heap {
            names,
            entries,
            hasher,
            ..
        } = self;
        let found = names
            .find_entry(hasher.hash_one(name), named(entries, name))
            .ok()?;
        let (index, _) = found.remove();
        let old = self.entries.get_mut(index as usize)?.take();
        self.free.push(index);
        let slot = old.as_ref().and_then(|e| e.slot);
        self.release(old);
        self.compact();
        Some(slot)
    }

    /// Disarms every schedule.
    fn clear(&mut self) {
        for old in std::mem::take(&mut self.entries) {
            self.release(old);
        }
        self.queue.clear();
        self.free.clear();
        self.names.clear();
    }

    /// Ends the hold of the slot a removed entry had.
    fn release(&self, old: Option<Entry>) {
        if let Some(slot) = old.and_then(|e| e.slot) {
            self.progress.release(slot);
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn schedules(&self) -> impl Iterator<Item = &Arc<Schedule>> {
        self.entries.iter().flatten().map(|e| &e.schedule)
    }

    /// The entry whose deadline `due` is, if it still counts.
    fn holding(&self, due: DateTime<Utc>, index: u32) -> Option<&Entry> {
        entry(&self.entries, index).filter(|e| e.slot.is_some_and(|s| e.schedule.due(s) == due))
    }

    /// The earliest deadline still armed, and its entry, dropping the stale deadlines above it.
    fn earliest(&mut self) -> Option<(DateTime<Utc>, u32)> {
        while let Some(Reverse((due, index))) = self.queue.peek().copied() {
            if self.holding(due, index).is_some() {
                return Some((due, index));
            }
            self.queue.pop();
        }
        None
    }

    /// Takes the slot of the schedule at the top if it is due by `now`: its index, the
    /// schedule and the slot's hold. The schedule stays armed, with no slot until
    /// [`Heap::rearm`].
    fn pop_due(&mut self, now: DateTime<Utc>) -> Option<(u32, Arc<Schedule>, Hold)> {
        let (_, index) = self.earliest().filter(|(due, _)| *due <= now)?;
        self.queue.pop();
        let entry = self.entries.get_mut(index as usize)?.as_mut()?;
        let slot = entry.slot.take()?;
        Some((index, entry.schedule.clone(), self.progress.adopt(slot)))
    }

    /// Gives the schedule at `index`, which [`Heap::pop_due`] left without a slot, its next.
    fn rearm(&mut self, index: u32, slot: DateTime<Utc>) {
        let Some(entry) = self
            .entries
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        self.progress.take(slot);
        entry.slot = Some(slot);
        let due = entry.schedule.due(slot);
        self.queue.push(Reverse((due, index)));
    }

    /// Leaves few stale deadlines behind: after many reloads they would outnumber the armed.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.len() + 1024 {
            let mut queue = std::mem::take(&mut self.queue).into_vec();
            queue.retain(|Reverse((due, index))| self.holding(*due, *index).is_some());
            queue.shrink_to_fit();
            self.queue = queue.into();
        }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        self.clear();
    }
}

fn entry(entries: &[Option<Entry>], index: u32) -> Option<&Entry> {
    entries.get(index as usize)?.as_ref()
}

/// Whether the index in the name table is the entry of the schedule named `name`.
fn named<'a>(entries: &'a [Option<Entry>], name: &'a str) -> impl Fn(&u32) -> bool + 'a {
    move |&i| entry(entries, i).is_some_and(|e| *e.schedule.name == *name)
}

/// The hash of the name of the schedule at `index` (the index's, for one freed meanwhile:
/// the table never holds freed indices, so it is never asked).
fn hash(hasher: &RandomState, entries: &[Option<Entry>], index: u32) -> u64 {
    match entry(entries, index) {
        Some(e) => hasher.hash_one(&*e.schedule.name),
        None => hasher.hash_one(index),
    }
}

/// The daemon's handle on the timer task: dropping it (or [`Deadlines::stop`]) ends the task,
/// so that a daemon dropped without its shutdown leaves nothing running.
pub struct Deadlines {
    timers: Arc<Timers>,
    task: tokio::task::JoinHandle<()>,
}

impl Deadlines {
    /// Starts the task that fires the slots of every schedule armed through the result.
    pub fn start(firing: Arc<Firing>) -> Deadlines {
        let timers = Arc::new(Timers {
            state: Mutex::new(Heap::new(firing.progress.clone())),
            earlier: Notify::new(),
            stop: CancellationToken::new(),
        });
        let task = tokio::spawn(run(timers.clone(), firing));
        Deadlines { timers, task }
    }

    /// Ready if the task ended without being stopped (it panicked): nothing would fire any
    /// more, so the daemon must not go on as if it did. Await it at most once.
    pub async fn ended(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Makes room for `n` more schedules at once (at start, where the count is known).
    pub fn reserve(&self, n: usize) {
        self.timers.lock().reserve(n);
    }

    /// Arms `schedule` for its slots that fall due at or after `not_before`, in place of (so
    /// disarming) the schedule of the same name if one is armed. Earlier slots belong to the
    /// missed-slot scan (at start) or to the timer this one replaces (reload).
    pub fn arm(&self, schedule: Arc<Schedule>, not_before: DateTime<Utc>) {
        let first = first_due(&schedule, not_before);
        if first.is_none() {
            tracing::info!(schedule = %schedule.name, "the cron expression names no further slot; timer ends")
        }
        let timers = &self.timers;
        let mut heap = timers.lock();
        // Held from now on (by the heap's arm): the heartbeat must never pass a slot that an
        // armed schedule has yet to fire.
        if let Some(due) = heap.arm(schedule, first)
            && heap.waiting_for.is_none_or(|w| due < w)
        {
            heap.waiting_for = Some(due);
            timers.earlier.notify_one();
        }
    }

    /// Disarms the schedule named `name` (a fire already started is not interrupted).
    /// Returns, if it was armed, the slot it was to fire next: a schedule replaced on reload
    /// hands it to its successor, which must not start after it (a timer running late would
    /// lose it).
    pub fn disarm(&self, name: &str) -> Option<Option<DateTime<Utc>>> {
        self.timers.lock().disarm(name)
    }

    /// Disarms every schedule.
    pub fn disarm_all(&self) {
        self.timers.lock().clear();
    }

    /// How many schedules are armed.
    pub fn len(&self) -> usize {
        self.timers.lock().len()
    }

    /// The armed schedules, in no particular order (a reload looks them up by name).
    pub fn schedules(&self) -> Vec<Arc<Schedule>> {
        self.timers.lock().schedules().cloned().collect()
    }

    /// The armed schedules as they change, for the metrics.
    pub fn armed(&self) -> Arc<dyn ArmedSchedules> {
        self.timers.clone()
    }

    /// The schedule to fire next and its slot.
    pub fn next(&self) -> Option<(DateTime<Utc>, Arc<Schedule>)> {
        let mut heap = self.timers.lock();
        let (due, index) = heap.earliest()?;
        let entry = heap.holding(due, index)?;
        Some((entry.slot?, entry.schedule.clone()))
    }

    /// Ends the task. Slots still armed are not fired.
    pub fn stop(&self) {
        self.timers.stop.cancel();
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ArmedSchedules for Timers {
    /// By name, for the metrics' output.
    fn schedules(&self) -> Vec<Arc<Schedule>> {
        let mut armed: Vec<_> = self.lock().schedules().cloned().collect();
        armed.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        armed
    }
}

// Without the heap: formatting must never wait for its lock.
impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers").finish_non_exhaustive()
    }
}

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Heap> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The first slot of `schedule` that falls due at or after `not_before`.
fn first_due(schedule: &Schedule, not_before: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let jitter = schedule.jitter().unwrap_or_default();
    let mut next = schedule.next_from(not_before - jitter);
    while let Some(slot) = next.filter(|s| schedule.due(*s) < not_before) {
        next = schedule.next_after(slot);
    }
    next
}

/// What became of a slot whose deadline passed.
enum Due {
    /// Fire it now.
    Fire(Arc<Schedule>, Hold),
    /// The wall clock jumped past it: record it (and any others passed over) missed.
    Late(Arc<Schedule>, Hold),
}

/// The timer task: waits for the earliest deadline, then fires every slot due. Each
/// schedule's next slot is held before the one due is handed over, so that the watermark never
/// skips a slot.
async fn run(timers: Arc<Timers>, firing: Arc<Firing>) {
    loop {
        let earliest = {
            let mut heap = timers.lock();
            let earliest = heap.earliest().map(|(due, _)| due);
            heap.waiting_for = earliest;
            earliest
        };
        let due = match earliest {
            None => tokio::select! {
                _ = timers.stop.cancelled() => return,
                _ = timers.earlier.notified() => continue,
            },
            Some(due) => tokio::select! {
                biased;
                _ = timers.stop.cancelled() => return,
                _ = timers.earlier.notified() => continue,
                reached = wait_for(&firing, due, &timers.stop) => reached,
            },
        };
        if !due {
            return;
        }
        let now = Utc::now();
        for slot in take_due(&timers, now) {
            match slot {
                Due::Fire(schedule, hold) => {
                    let lag_ms = (now - schedule.due(hold.slot())).num_milliseconds();
                    tracing::debug!(schedule = %schedule.name, slot = %crate::time::to_db(hold.slot()), lag_ms, "firing");
                    let slot = hold.slot();
                    firing.inflight.spawn(fire(
                        firing.clone(),
                        schedule,
                        slot,
                        Trigger::Cron,
                        hold,
                    ));
                }
                Due::Late(schedule, hold) => {
                    let firing = firing.clone();
                    firing.inflight.clone().spawn(async move {
                        recovery::settle(
                            &firing,
                            &schedule,
                            hold.slot(),
                            true,
                            now,
                            "because the clock jumped or the machine was suspended",
                            &Default::default(),
                        )
                        .await;
                        drop(hold);
                    });
                }
            }
        }
    }
}

/// Takes every slot due by `now` off the heap, arming each schedule for its next slot.
fn take_due(timers: &Timers, now: DateTime<Utc>) -> Vec<Due> {
    let mut taken = Vec::new();
    let mut heap = timers.lock();
    while let Some((index, schedule, hold)) = heap.pop_due(now) {
        let due = schedule.due(hold.slot());
        let late = now - due > recovery::LATE_LIMIT;
        // After a jump of the clock, the slots passed over are the missed-slot record's.
        let next = if late {
            first_due(&schedule, now)
        } else {
            schedule.next_after(hold.slot())
        };
        match next {
            Some(next) => heap.rearm(index, next),
            None => {
                tracing::info!(schedule = %schedule.name, "the cron expression names no further slot; timer ends")
            }
        }
        taken.push(if late {
            Due::Late(schedule, hold)
        } else {
            Due::Fire(schedule, hold)
        });
    }
    taken
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
        match schedule.robot() {
            Some(robot) => {
                tracing::error!(schedule = %schedule.name, %robot, "the schedule's robot is not configured; slot not sent")
            }
            None => {
                tracing::error!(schedule = %schedule.name, app = %schedule.app(), "the schedule's app is not configured; slot not sent")
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
        let woke = match remaining.checked_sub(FINE_WAIT) {
            Some(coarse) if !coarse.is_zero() => sleep_unless_woken(coarse, cancel, steps).await,
            _ => fine_sleep_unless_woken(remaining, cancel, steps).await,
        };
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

/// [`sleep_unless_woken`] for a short `duration` (at most [`FINE_WAIT`]), slept on a blocking
/// thread for its precision. A sleep cut short by a cancel or a step ends on its thread alone.
async fn fine_sleep_unless_woken(
    duration: Duration,
    cancel: &CancellationToken,
    steps: &mut Steps,
) -> Woke {
    let slept = tokio::task::spawn_blocking(move || std::thread::sleep(duration));
    tokio::select! {
        done = slept => match done {
            Ok(()) => Woke::Due,
            // No thread for it (the runtime is shutting down): tokio's timer will do.
            Err(_) => sleep_unless_woken(duration, cancel, steps).await,
        },
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
    // The id is known before the add, so the job is removed even if the wait ends first, or
    // is dropped (the timer task drops its wait when an earlier deadline arrives).
    let mut unrung = Unrung {
        alarms,
        id: Some(job.guid()),
    };
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
    if by_alarm {
        unrung.id = None;
    }
    woke
}

/// Removes an alarm's job when dropped, unless it rang.
struct Unrung<'a> {
    alarms: &'a Alarms,
    id: Option<Uuid>,
}

impl Drop for Unrung<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.alarms.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Secrets, parse};

    fn schedule(name: &str, extra: &str) -> Arc<Schedule> {
        let text = format!(
            "timezone: UTC\napps:\n  ops: {{ corp_id: ww1, agent_id: 1, secret: s }}\nschedules:\n  - {{ name: {name}, cron: '*/10 * * * *', to: {{ users: [u] }}, text: {{ content: 'x {{{{ time }}}}' }}{extra} }}\n"
        );
        parse(&text, Path::new("/tmp/x.yaml"), Secrets::Required)
            .unwrap()
            .schedules[0]
            .clone()
    }

    fn at(text: &str) -> DateTime<Utc> {
        crate::time::from_db(text).unwrap()
    }

    fn popped(heap: &mut Heap, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let mut popped: Vec<_> = std::iter::from_fn(|| heap.pop_due(now))
            .map(|(_, schedule, hold)| (schedule.name.to_string(), hold.slot()))
            .collect();
        popped.sort_unstable();
        popped
    }

    /// The heap keeps each deadline in its queue only: a deadline counts while it is the one
    /// of the slot its entry holds, worked out again from the slot and the jitter.
    #[test]
    fn a_jittered_deadline_is_the_one_its_slot_holds_and_a_re_armed_one_replaces_it() {
        let progress = Arc::new(Progress::default());
        let jittered = schedule("j", ", jitter: 5m");
        let plain = schedule("p", "");
        let (first, second) = (at("2026-12-03T09:10:00Z"), at("2026-12-03T09:20:00Z"));
        let offset = jittered.due(first) - first;
        assert!(offset > chrono::Duration::zero() && offset < chrono::Duration::minutes(5));
        let mut heap = Heap::new(progress.clone());
        assert_eq!(
            heap.arm(jittered.clone(), Some(first)),
            Some(first + offset)
        );
        assert_eq!(heap.arm(plain.clone(), Some(second)), Some(second));
        assert_eq!(heap.earliest(), Some((jittered.due(first), 0)));
        assert_eq!(
            progress.fired_through(second),
            first,
            "the armed slots are held"
        );
        // Armed again under its name, for its next slot (as a reload hands over): the old
        // deadline no longer counts, and its slot is no longer held.
        heap.arm(jittered.clone(), Some(second));
        assert_eq!((heap.len(), heap.queue.len()), (2, 3));
        assert_eq!(progress.fired_through(second), second);
        assert_eq!(
            heap.earliest().map(|(due, _)| due),
            Some(second.min(jittered.due(second)))
        );
        assert_eq!(
            heap.queue.len(),
            2,
            "the stale deadline is dropped on the way"
        );
        assert!(
            heap.pop_due(second - chrono::Duration::seconds(1))
                .is_none()
        );
        let late = second + chrono::Duration::minutes(5);
        assert_eq!(
            popped(&mut heap, late),
            [("j".to_string(), second), ("p".to_string(), second)]
        );
        assert_eq!(heap.earliest(), None);
        assert_eq!(
            heap.len(),
            2,
            "fired, still armed (until re-armed or disarmed)"
        );
        assert_eq!(
            progress.fired_through(late),
            late,
            "every hold went with its slot"
        );
    }

    /// Disarming hands back the slot the schedule had yet to fire; its index is used again by
    /// the next schedule armed, and the stale deadline left on it does not fire that one.
    #[test]
    fn a_disarmed_schedule_hands_back_its_slot_and_its_place_is_used_again() {
        let progress = Arc::new(Progress::default());
        let (early, late) = (at("2026-12-03T09:10:00Z"), at("2026-12-03T09:30:00Z"));
        let mut heap = Heap::new(progress.clone());
        heap.reserve(3);
        heap.arm(schedule("a", ""), Some(early));
        heap.arm(schedule("b", ""), Some(late));
        heap.arm(schedule("ended", ""), None);
        assert_eq!(heap.len(), 3);
        assert_eq!(heap.disarm("ended"), Some(None), "armed, with no slot left");
        assert_eq!(heap.disarm("a"), Some(Some(early)));
        assert_eq!(heap.disarm("a"), None, "no longer armed");
        assert_eq!(progress.fired_through(early), early, "a's slot is free");
        assert_eq!(heap.len(), 1);
        // c takes a place that a stale deadline (a's, at `early`) still names.
        heap.arm(schedule("c", ""), Some(late));
        assert_eq!(heap.find("c"), Some(0), "a's place");
        assert!(
            popped(&mut heap, early).is_empty(),
            "a's deadline is not c's"
        );
        assert_eq!(
            popped(&mut heap, late),
            [("b".to_string(), late), ("c".to_string(), late)]
        );
        let names: Vec<_> = heap.schedules().map(|s| s.name.to_string()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"b".to_string()) && names.contains(&"c".to_string()));
        heap.rearm(0, late + chrono::Duration::minutes(10));
        assert_eq!(progress.fired_through(late), late);
        heap.clear();
        assert_eq!(heap.len(), 0);
        assert_eq!(progress.fired_through(late), late, "clear ends every hold");
    }

    /// Many reloads leave many stale deadlines; the queue is compacted, not left to grow.
    #[test]
    fn stale_deadlines_do_not_pile_up_over_reloads() {
        let progress = Arc::new(Progress::default());
        let slot = at("2026-12-03T09:10:00Z");
        let mut heap = Heap::new(progress.clone());
        let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        let schedules: Vec<_> = names.iter().map(|n| schedule(n, "")).collect();
        for round in 0..200 {
            for s in &schedules {
                heap.arm(s.clone(), Some(slot + chrono::Duration::minutes(round)));
            }
            // Armed again under their names, each leaves its deadline before stale.
            assert!(
                heap.queue.len() <= 2 * 100 + 1024 + 1,
                "{} deadlines after round {round}",
                heap.queue.len()
            );
        }
        assert_eq!(heap.len(), 100);
        for name in &names {
            heap.disarm(name);
        }
        assert!(
            heap.queue.len() <= 2 * 100 + 1024,
            "{} deadlines left",
            heap.queue.len()
        );
        assert_eq!(heap.len(), 0);
        assert_eq!(heap.earliest(), None);
        assert_eq!(progress.fired_through(slot), slot);
    }

    #[test]
    fn an_entry_takes_24_bytes_and_a_deadline_16() {
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 24);
        assert_eq!(std::mem::size_of::<Reverse<(DateTime<Utc>, u32)>>(), 16);
    }
}
