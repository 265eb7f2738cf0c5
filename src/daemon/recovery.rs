//! What must be settled before (and while) schedules are armed, so that nothing is missed
//! silently and nothing is sent twice:
//! - sends a crash left `pending`: resent byte for byte while WeCom's duplicate check still
//!   covers them (so a first attempt that did arrive is dropped, not repeated), else recorded as
//!   `interrupted`;
//! - slots that fell while no daemon ran, or while the clock jumped (suspend, NTP step): one
//!   `missed` row each, and with `catch_up` the latest one sent late as `catch_up`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::timer::{Firing, fire};
use crate::channel::Channel;
use crate::config::Schedule;
use crate::dispatch::row_for_slot;
use crate::store::Store;
use crate::store::heartbeats::{Heartbeat, ProcessKey};
use crate::store::history::{NewSend, PendingRow, Status, Trigger};

/// At most this many missed slots per schedule and gap get a row; older ones are counted in
/// the log only (a seconds-level schedule down for a day would otherwise write 86,400 rows).
pub const MISSED_ROWS_MAX: usize = 100;

/// A fire this much later than its due time is treated as missed rather than sent late: the
/// clock jumped or the machine was suspended.
pub const LATE_LIMIT: Duration = Duration::seconds(60);

/// A heartbeat row older than this belongs to no running daemon, whatever its pid (a running
/// one rewrites it every 5 s, or at least its `alive_at`).
const HEARTBEAT_STALE: Duration = Duration::seconds(60);

/// A crashed send is resent only this long before its duplicate-check interval ends.
const RESEND_MARGIN: Duration = Duration::seconds(10);

/// Upper bound on slots examined per schedule and gap (a guard against absurd expressions).
const SCAN_LIMIT: usize = if cfg!(test) { 10_000 } else { 1_000_000 };

/// What the database remembers of the previous runs, read before this run writes anything.
pub struct Downtime {
    /// The first slot that a previous run may have left without a row (inclusive); `None`
    /// when there is nothing to settle (the very first start, or another daemon is running
    /// on this database and fires these schedules itself).
    from: Option<DateTime<Utc>>,
    /// The heartbeat rows of processes that are gone, taken over by this start.
    gone: Vec<ProcessKey>,
    /// Daemons of other instances taken for alive by their heartbeat alone (they may be on
    /// other hosts): watched until they beat again after this start, or their heartbeat goes
    /// stale (see [`Silent`]).
    watched: Vec<Heartbeat>,
}

/// The daemons a start took for alive by their heartbeat alone. One that never beats again
/// had died already, or died before it could claim the slots up to this start: those slots,
/// without a row, are recorded as missed once its heartbeat goes stale, as the start would
/// have recorded them had it known.
pub struct Silent {
    rows: Vec<Heartbeat>,
    /// The instant that divided the past (settled at start) from the slots this run fires.
    divide: DateTime<Utc>,
}

impl Silent {
    /// Looks at the watched daemons again: those that beat since the divide (alive after it)
    /// or stopped cleanly (a stop during this run left no slot of its own unclaimed: this run
    /// fires every schedule) are dropped; for those whose heartbeat went stale, the slots from
    /// where they had fired through to the divide that have no row are recorded as missed.
    pub async fn look(&mut self, firing: &Arc<Firing>, schedules: &[Arc<Schedule>]) {
        if self.rows.is_empty() {
            return;
        }
        let store = firing.dispatcher.store();
        let Ok((beats, _)) = store.previous_runs().await else {
            return;
        };
        let now = Utc::now();
        let mut silent = Vec::new();
        self.rows.retain(|watched| {
            let now_row = beats
                .iter()
                .find(|b| b.pid == watched.pid && b.instance == watched.instance);
            match now_row {
                // Gone: another start took it over, and settled what it left.
                None => false,
                Some(row) if row.stopped_at.is_some() || row.alive_at > self.divide => false,
                Some(row) if now - row.alive_at >= HEARTBEAT_STALE => {
                    silent.push(row.clone());
                    false
                }
                Some(_) => true,
            }
        });
        for row in silent {
            let from = row.fired_through.min(self.divide);
            tracing::warn!(instance = ?row.instance, pid = row.pid,
                "a daemon taken for alive at this start never beat again: recording the slots it left without a row, from {} to this start, as missed",
                crate::time::to_db(from));
            let downtime = Downtime {
                from: Some(from),
                gone: Vec::new(),
                watched: Vec::new(),
            };
            downtime.settle_all(firing, schedules, self.divide).await;
        }
    }
}

impl Downtime {
    pub async fn read(store: &Store) -> anyhow::Result<Downtime> {
        let me = i64::from(std::process::id());
        let my_instance = store.owner().instance;
        let now = Utc::now();
        let mut gone = Vec::new();
        let mut fired_through: Option<DateTime<Utc>> = None;
        let mut another_runs = false;
        let mut watched = Vec::new();
        let (beats, last_alive) = store.previous_runs().await?;
        for beat in beats {
            // A row with this process's own pid is a predecessor's (a container restarts
            // its daemon under the same pid).
            // A running daemon writes its row every few seconds: a live pid behind a stale
            // row is another process that got the dead daemon's pid (after a reboot, say).
            // A row of another instance may be of another host, where its pid means nothing
            // here: its heartbeat alone tells whether it runs.
            let fresh = now - beat.alive_at < HEARTBEAT_STALE;
            // (A row without an instance was written on this host, before rows named one.)
            let same_instance =
                beat.instance.is_none() || beat.instance.as_deref() == my_instance.as_deref();
            let alive = if same_instance {
                beat.pid != me && process_alive(beat.pid)
            } else {
                true
            };
            if same_instance && !alive && beat.pid != me && beat.stopped_at.is_none() && fresh {
                tracing::warn!(instance = ?beat.instance, pid = beat.pid,
                    "a fresh heartbeat of this instance names a process that does not run here: a daemon that has just died, or another host with the same instance: name, which would take this host's sends for a dead daemon's; give every host its own instance:");
            }
            if beat.stopped_at.is_none() && fresh && alive {
                another_runs = true;
                if !same_instance {
                    watched.push(beat);
                }
                continue;
            }
            gone.push((beat.instance.clone(), beat.pid));
            // The earliest of them: a daemon that died while settling its own start left its
            // row where the one before it had been.
            fired_through =
                Some(fired_through.map_or(beat.fired_through, |t| t.min(beat.fired_through)));
        }
        let from = if another_runs {
            // That daemon settled what lay before its own start, and claims every slot of
            // these schedules as they fall: a slot it is about to claim is not missed.
            None
        } else if fired_through.is_some() {
            fired_through
        } else {
            // A database written by a version without heartbeats: its last sign of life.
            // The slot at that very second may not have been claimed yet.
            last_alive
        };
        Ok(Downtime {
            from,
            gone,
            watched,
        })
    }

    /// Where this run's heartbeat starts: until its own start-up has settled the past, a
    /// crash must leave the next start the same point to look from.
    pub fn fired_through(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.from.map_or(now, |from| from.min(now))
    }

    /// The daemons this start took for alive by their heartbeat alone, to be watched from the
    /// divide on.
    pub fn silent(&self, divide: DateTime<Utc>) -> Silent {
        Silent {
            rows: self.watched.clone(),
            divide,
        }
    }

    /// The heartbeat rows this start takes over (removed once its own row is written).
    pub fn gone(&self) -> Vec<ProcessKey> {
        self.gone.clone()
    }

    /// Records the slots every schedule missed since the previous run (see [`settle`]).
    pub async fn settle_all(
        self,
        firing: &Arc<Firing>,
        schedules: &[Arc<Schedule>],
        now: DateTime<Utc>,
    ) {
        let Some(from) = self.from else {
            return;
        };
        let store = firing.dispatcher.store();
        for schedule in schedules.iter().filter(|s| s.enabled) {
            // Every slot before `from` has its row, or was no slot of an armed schedule; of
            // the later ones, those without a row were never claimed. (Not just those after
            // the schedule's last row: a slot whose row could not be written is followed by
            // slots that were.)
            let recorded = match store.recorded_slots(&schedule.name, from).await {
                Ok(recorded) => recorded,
                Err(e) => {
                    tracing::error!(schedule = %schedule.name, "cannot read which slots have rows, so the slots missed since {} are not recorded now: {e:#}", crate::time::to_db(from));
                    firing.progress.pin(from);
                    continue;
                }
            };
            settle(
                firing,
                schedule,
                from,
                true,
                now,
                "while the daemon was not running",
                &recorded,
            )
            .await;
        }
    }
}

/// Slots of `schedule` after `from` (or at it, when `inclusive`) that fell due before `now`:
/// the latest [`MISSED_ROWS_MAX`] of them, and how many there were.
pub fn overdue(
    schedule: &Schedule,
    from: DateTime<Utc>,
    inclusive: bool,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, usize) {
    let (latest, total, complete) = scan(schedule, from, inclusive, now);
    if complete {
        return (latest, total);
    }
    // Too many to walk: the count stays a lower bound, and the latest slots are found by
    // walking ever longer stretches that end now.
    let mut window = Duration::seconds(MISSED_ROWS_MAX as i64 * 2);
    loop {
        let start = (now - window).max(from);
        let (tail, _, complete) = scan(schedule, start, true, now);
        if (complete && tail.len() >= MISSED_ROWS_MAX)
            || start == from
            || window > Duration::days(3650)
        {
            return (tail, total);
        }
        window = window * 2;
    }
}

/// Walks the overdue slots from `from`, keeping the latest [`MISSED_ROWS_MAX`]; `complete`
/// is false when it stopped at [`SCAN_LIMIT`] before reaching `now`.
fn scan(
    schedule: &Schedule,
    from: DateTime<Utc>,
    inclusive: bool,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, usize, bool) {
    let mut latest = VecDeque::with_capacity(MISSED_ROWS_MAX);
    let mut total = 0;
    let mut next = if inclusive {
        schedule.next_from(from)
    } else {
        schedule.next_after(from)
    };
    while let Some(slot) = next.filter(|s| schedule.due(*s) < now) {
        if total == SCAN_LIMIT {
            return (latest.into(), total, false);
        }
        if latest.len() == MISSED_ROWS_MAX {
            latest.pop_front();
        }
        latest.push_back(slot);
        total += 1;
        next = schedule.next_after(slot);
    }
    (latest.into(), total, true)
}

/// Records the overdue slots of `schedule` as `missed`, except the latest when it is still
/// inside the schedule's `catch_up` window: that one is sent now, late, as `catch_up`.
/// Slots in `recorded` have their row already and are left out.
pub async fn settle(
    firing: &Arc<Firing>,
    schedule: &Arc<Schedule>,
    from: DateTime<Utc>,
    inclusive: bool,
    now: DateTime<Utc>,
    why: &str,
    recorded: &HashSet<DateTime<Utc>>,
) {
    let (mut slots, total) = overdue(schedule, from, inclusive, now);
    let total = total.saturating_sub(
        recorded
            .iter()
            .filter(|s| **s >= from && schedule.due(**s) < now)
            .count(),
    );
    slots.retain(|slot| !recorded.contains(slot));
    let (Some(first), Some(last)) = (slots.first().copied(), slots.last().copied()) else {
        return;
    };
    if firing.dispatcher.is_dry_run() {
        // A rehearsal claims no slots: the real daemon must still see these as missed.
        tracing::info!(schedule = %schedule.name, total, "dry run: {total} slot(s) passed over {why}; not recorded");
        return;
    }
    // The latest slot that was to be sent (a calendar may skip some) may still be caught up.
    let catch_up = slots
        .iter()
        .rev()
        .find(|s| !schedule.skips(**s))
        .copied()
        .filter(|latest| {
            schedule
                .catch_up()
                .is_some_and(|window| now - *latest <= window)
        });
    let channel = firing.channel(schedule);
    let rows: Vec<NewSend> = slots
        .iter()
        .filter(|slot| Some(**slot) != catch_up)
        .map(|slot| {
            let status = if schedule.skips(*slot) {
                Status::Skipped
            } else {
                Status::Missed
            };
            row_for_slot(schedule, channel.as_ref(), *slot, Trigger::Cron, status)
        })
        .collect();
    let statuses: Vec<Status> = rows.iter().map(|row| row.status).collect();
    let recorded = firing.dispatcher.store().record_missed(rows).await;
    let mut note = format!(
        "schedule \"{}\" missed {total} slot(s) {why}, from {} to {}",
        schedule.name,
        crate::time::to_db(first),
        crate::time::to_db(last)
    );
    if total > MISSED_ROWS_MAX {
        note.push_str(&format!("; only the latest {MISSED_ROWS_MAX} are recorded"));
    }
    if let Some(latest) = catch_up {
        note.push_str(&format!(
            "; the slot of {} is sent now, late, as catch_up",
            crate::time::to_db(latest)
        ));
    }
    if recorded.is_err() {
        // Until the process ends, its heartbeat stays before these slots: the next start
        // records them.
        firing.progress.pin(first);
    }
    match recorded {
        Ok(written) => {
            tracing::warn!("{note}");
            // Rows another daemon had already written are not counted again.
            for status in statuses.iter().take(written) {
                firing
                    .dispatcher
                    .metrics()
                    .count_send(&schedule.name, *status);
            }
        }
        Err(e) => tracing::error!("{note}; and the missed slots could not be recorded: {e:#}"),
    }
    if let Some(latest) = catch_up {
        let hold = firing.progress.hold(latest);
        firing.inflight.spawn(fire(
            firing.clone(),
            schedule.clone(),
            latest,
            Trigger::CatchUp,
            hold,
        ));
    }
}

/// Resends or closes every row a crash left `pending` (never in a dry run: the caller checks).
pub async fn resume_pending(firing: &Arc<Firing>, now: DateTime<Utc>) {
    resolve(firing, now, Look::AtStart).await;
}

/// Resends or closes the rows whose claim lapsed while this daemon runs: their sender (a
/// daemon on another host, a `send` that died) stopped renewing them.
pub async fn resume_lapsed(firing: &Arc<Firing>, now: DateTime<Utc>) {
    resolve(firing, now, Look::WhileRunning).await;
}

/// When crash rows are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Before this process claimed anything: a row naming this very process is a
    /// predecessor's (a container restarts its daemon under the same pid).
    AtStart,
    /// While it runs: its own rows are in flight, and leaseless rows are left to the start
    /// (or to the replay of the file their process left).
    WhileRunning,
}

/// Whether `row` is left by a sender that is gone, as `look` sees it at `now`.
fn abandoned(row: &PendingRow, me: &Me, now: DateTime<Utc>, look: Look) -> Abandoned {
    let mine = row.pid == Some(me.pid) && row.instance.as_deref() == me.instance.as_deref();
    if mine {
        return match look {
            Look::AtStart => Abandoned::Yes,
            Look::WhileRunning => Abandoned::No,
        };
    }
    // This host's other processes can be asked directly; a pid means nothing on another host.
    let this_host = row.instance.is_none() || row.instance.as_deref() == me.instance.as_deref();
    let sender_alive = || row.pid.is_some_and(process_alive);
    match row.lease_until {
        Some(until) if until < now => Abandoned::Yes,
        Some(_) if this_host && !sender_alive() => Abandoned::Yes,
        Some(_) => Abandoned::Leased,
        None if look == Look::WhileRunning => Abandoned::No,
        None if row.pid.is_some_and(|pid| pid != me.pid) && sender_alive() => Abandoned::Leased,
        None => Abandoned::Yes,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abandoned {
    Yes,
    /// Its sender still holds it.
    Leased,
    No,
}

/// This process, as rows name it.
struct Me {
    pid: i64,
    instance: Option<Arc<str>>,
}

async fn resolve(firing: &Arc<Firing>, now: DateTime<Utc>, look: Look) {
    let store = firing.dispatcher.store();
    let rows = match store.pending_rows().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!("cannot look for sends left in flight by a crash: {e:#}");
            return;
        }
    };
    let me = Me {
        pid: i64::from(std::process::id()),
        instance: store.owner().instance,
    };
    for row in rows {
        match abandoned(&row, &me, now, look) {
            Abandoned::No => continue,
            Abandoned::Leased => {
                if look == Look::AtStart {
                    tracing::info!(
                        id = row.id,
                        pid = row.pid,
                        instance = row.instance.as_deref().unwrap_or("-"),
                        "a pending send belongs to a process that is still running; leaving it to that process (should its claim lapse, a daemon on this database resolves it)"
                    );
                }
                continue;
            }
            Abandoned::Yes => {}
        }
        // The resolution is itself a claim: of the daemons that saw the row, one takes it.
        match store.take_over(&row).await {
            Ok(true) => {
                if look == Look::WhileRunning {
                    tracing::warn!(
                        id = row.id,
                        instance = row.instance.as_deref().unwrap_or("-"),
                        pid = row.pid,
                        "the claim of a send in flight lapsed (its daemon died or lost the database); taking it over"
                    );
                }
                resume_one(firing, row, now).await;
            }
            Ok(false) => {
                tracing::debug!(
                    id = row.id,
                    "another daemon took over this crashed send first"
                );
            }
            Err(e) => tracing::error!("cannot take over send #{} left in flight: {e:#}", row.id),
        }
    }
}

/// Resends or closes the rows `ids`, left `pending` by a process known to be gone (its
/// unrecorded-sends file was replayed while this daemon runs).
pub async fn resume_rows(firing: &Arc<Firing>, ids: &[i64], now: DateTime<Utc>) {
    let rows = match firing.dispatcher.store().pending_rows().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!("cannot read the sends another process left in flight: {e:#}");
            return;
        }
    };
    for row in rows.into_iter().filter(|row| ids.contains(&row.id)) {
        match firing.dispatcher.store().take_over(&row).await {
            Ok(true) => resume_one(firing, row, now).await,
            Ok(false) => tracing::debug!(id = row.id, "another daemon took over this send first"),
            Err(e) => tracing::error!("cannot take over send #{} left in flight: {e:#}", row.id),
        }
    }
}

async fn resume_one(firing: &Arc<Firing>, row: PendingRow, now: DateTime<Utc>) {
    if let Some(robot) = &row.robot {
        // A robot has no duplicate check: a resend of what may have arrived could post it twice.
        let reason = format!(
            "the daemon died while this was being sent through robot {robot}; a group robot has no duplicate check, so it is not resent. It may or may not have arrived: look in the group chat"
        );
        tracing::error!(
            "send #{} of schedule \"{}\" (slot {}): {reason}; recorded as interrupted",
            row.id,
            row.schedule,
            crate::time::to_db(row.scheduled_at)
        );
        if let Err(e) = firing
            .dispatcher
            .store()
            .interrupt_because(row.id, reason)
            .await
        {
            tracing::error!("could not record send #{} as interrupted: {e:#}", row.id);
        }
        return;
    }
    let interval = serde_json::from_str::<serde_json::Value>(&row.payload)
        .ok()
        .and_then(|body| body.get("duplicate_check_interval")?.as_u64())
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(crate::config::DEFAULT_DUPLICATE_CHECK_INTERVAL);
    let app = firing
        .app(&row.app)
        .filter(|a| a.agent_id == row.agent_id)
        .map(Channel::App);
    let safe_until = row.created_at + Duration::seconds(i64::from(interval)) - RESEND_MARGIN;
    let what = format!(
        "send #{} of schedule \"{}\" (slot {})",
        row.id,
        row.schedule,
        crate::time::to_db(row.scheduled_at)
    );
    match app {
        Some(channel) if now < safe_until => {
            tracing::warn!(
                "{what} was in flight when the daemon died; resending the stored body (WeCom's duplicate check drops it if the first attempt arrived)"
            );
            let dispatcher = firing.dispatcher.clone();
            firing.inflight.spawn(async move {
                let window = std::time::Duration::from_secs(u64::from(interval));
                dispatcher.resume(&row, &channel, Some(window)).await;
            });
        }
        app => {
            let reason = if app.is_none() {
                "its app is no longer configured"
            } else {
                "its duplicate-check interval has passed, so a resend could deliver it twice"
            };
            tracing::error!(
                "{what} was in flight when the daemon died and cannot be resent safely ({reason}); it is recorded as interrupted: it may or may not have arrived, check with its recipients"
            );
            if let Err(e) = firing.dispatcher.store().interrupt(row.id).await {
                tracing::error!("could not record send #{} as interrupted: {e:#}", row.id);
            }
        }
    }
}

fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secrets, parse};
    use std::path::Path;

    fn schedule(cron: &str, extra: &str) -> Schedule {
        let text = format!(
            "timezone: UTC\napps:\n  ops: {{ corp_id: ww1, agent_id: 1, secret: s }}\nschedules:\n  - {{ name: s, cron: '{cron}', to: {{ users: [u] }}, text: {{ content: 'x {{{{ time }}}}' }}{extra} }}\n"
        );
        parse(&text, Path::new("/tmp/x.yaml"), Secrets::Required)
            .unwrap()
            .schedules[0]
            .as_ref()
            .clone()
    }

    fn at(text: &str) -> DateTime<Utc> {
        crate::time::from_db(text).unwrap()
    }

    #[test]
    fn overdue_slots_are_bounded_and_exclusive_of_the_start() {
        let s = schedule("*/10 * * * *", "");
        let (slots, total) = overdue(
            &s,
            at("2026-11-28T10:00:00Z"),
            false,
            at("2026-11-28T10:35:00Z"),
        );
        assert_eq!(total, 3);
        assert_eq!(
            slots,
            [
                at("2026-11-28T10:10:00Z"),
                at("2026-11-28T10:20:00Z"),
                at("2026-11-28T10:30:00Z")
            ]
        );
        let (slots, total) = overdue(
            &s,
            at("2026-11-28T10:00:00Z"),
            true,
            at("2026-11-28T10:35:00Z"),
        );
        assert_eq!((slots.len(), total), (4, 4));
        let every_second = schedule("* * * * * *", "");
        let (slots, total) = overdue(
            &every_second,
            at("2026-11-28T00:00:00Z"),
            false,
            at("2026-11-28T01:00:00Z"),
        );
        assert_eq!((slots.len(), total), (MISSED_ROWS_MAX, 3_599));
        assert_eq!(slots.last(), Some(&at("2026-11-28T00:59:59Z")));
    }

    #[test]
    fn past_the_scan_limit_the_latest_slots_are_still_the_ones_just_before_now() {
        let every_second = schedule("* * * * * *", "");
        let now = at("2026-11-28T12:00:00Z");
        let (slots, total) = overdue(&every_second, now - Duration::days(3), false, now);
        assert_eq!(total, SCAN_LIMIT, "a lower bound");
        assert_eq!(slots.len(), MISSED_ROWS_MAX);
        assert_eq!(slots.last(), Some(&(now - Duration::seconds(1))));
        assert!(
            slots
                .windows(2)
                .all(|w| w[1] - w[0] == Duration::seconds(1))
        );
    }

    #[test]
    fn a_jittered_slot_is_overdue_only_once_its_due_time_passed() {
        let s = schedule("*/10 * * * *", ", jitter: 5m");
        let slot = at("2026-11-28T10:10:00Z");
        let due = s.due(slot);
        assert!(due >= slot && due < slot + Duration::minutes(5));
        assert_eq!(s.due(slot), due, "the offset is stable");
        let (slots, _) = overdue(&s, at("2026-11-28T10:00:00Z"), false, due);
        assert!(slots.is_empty());
        let (slots, _) = overdue(
            &s,
            at("2026-11-28T10:00:00Z"),
            false,
            due + Duration::seconds(1),
        );
        assert_eq!(slots, [slot]);
    }
}
