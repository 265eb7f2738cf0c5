//! How far this daemon has fired: the instant before which every slot of every armed schedule
//! has a durable claim (its row, or a line of the unrecorded-sends file). The daemon writes it
//! to the database as its heartbeat, so that the start after a crash knows from where on a slot
//! without a row was never claimed, whatever the crash interrupted.
//!
//! Being alive at an instant is not enough: 300 schedules on one slot are claimed one after the
//! other, and a crash 10 ms after the slot leaves most of them without a row. So every armed
//! timer holds its next slot here, and every fire holds its slot until its claim is durable;
//! the watermark is the earliest slot held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// The slots held by timers and fires of this process.
#[derive(Default)]
pub struct Progress {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// How many holds each slot has.
    held: BTreeMap<DateTime<Utc>, usize>,
    /// The earliest slot whose claim could not be recorded at all (its missed rows were
    /// refused): held until the process ends, so that the next start records it.
    pinned: Option<DateTime<Utc>>,
    /// Firing stopped at this instant (shutdown): nothing after it is this daemon's.
    stopped: Option<DateTime<Utc>>,
}

/// A slot held until it is dropped: the watermark stays at or before it meanwhile.
pub struct Hold {
    progress: Arc<Progress>,
    slot: DateTime<Utc>,
}

impl Progress {
    /// Holds `slot` until the returned value is dropped.
    pub fn hold(self: &Arc<Self>, slot: DateTime<Utc>) -> Hold {
        self.take(slot);
        self.adopt(slot)
    }

    /// Holds `slot` with no [`Hold`] to end it: the caller ends it with [`Progress::release`],
    /// or hands it over to a [`Hold`] with [`Progress::adopt`]. For the timers, which keep
    /// 100,000 held slots without a pointer back here beside each.
    pub fn take(&self, slot: DateTime<Utc>) {
        *self.lock().held.entry(slot).or_default() += 1;
    }

    /// Ends a hold of `slot` taken with [`Progress::take`].
    pub fn release(&self, slot: DateTime<Utc>) {
        let mut state = self.lock();
        if let Some(count) = state.held.get_mut(&slot) {
            *count -= 1;
            if *count == 0 {
                state.held.remove(&slot);
            }
        }
    }

    /// The hold of `slot` taken with [`Progress::take`], as a [`Hold`] that ends it when dropped.
    pub fn adopt(self: &Arc<Self>, slot: DateTime<Utc>) -> Hold {
        Hold {
            progress: self.clone(),
            slot,
        }
    }

    /// Holds `slot` for the rest of the process's life.
    pub fn pin(&self, slot: DateTime<Utc>) {
        let mut state = self.lock();
        state.pinned = Some(state.pinned.map_or(slot, |p| p.min(slot)));
    }

    /// Firing stopped at `at`: the watermark never passes it.
    pub fn stop_at(&self, at: DateTime<Utc>) {
        self.lock().stopped = Some(at);
    }

    /// Every slot before the returned instant has a durable claim: the earliest slot held,
    /// else `now` (or the instant firing stopped, if it did).
    pub fn fired_through(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let state = self.lock();
        [
            state.held.keys().next().copied(),
            state.pinned,
            state.stopped,
        ]
        .into_iter()
        .flatten()
        .fold(now, DateTime::min)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hold {
    pub fn slot(&self) -> DateTime<Utc> {
        self.slot
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.progress.release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        crate::time::from_db(text).unwrap()
    }

    #[test]
    fn the_watermark_is_the_earliest_slot_still_held() {
        let progress = Arc::new(Progress::default());
        let now = at("2026-12-01T10:00:30Z");
        assert_eq!(progress.fired_through(now), now, "nothing held");
        let first = progress.hold(at("2026-12-01T10:00:10Z"));
        let again = progress.hold(at("2026-12-01T10:00:10Z"));
        let later = progress.hold(at("2026-12-01T10:00:20Z"));
        assert_eq!(progress.fired_through(now), first.slot());
        drop(first);
        assert_eq!(progress.fired_through(now), again.slot(), "held twice");
        drop(again);
        assert_eq!(progress.fired_through(now), later.slot());
        drop(later);
        assert_eq!(progress.fired_through(now), now);
        let future = progress.hold(at("2026-12-01T11:00:00Z"));
        assert_eq!(progress.fired_through(now), now, "never beyond now");
        progress.pin(at("2026-12-01T09:00:00Z"));
        drop(future);
        assert_eq!(progress.fired_through(now), at("2026-12-01T09:00:00Z"));
    }

    #[test]
    fn after_a_stop_the_watermark_stays_where_firing_stopped() {
        let progress = Arc::new(Progress::default());
        let stopped = at("2026-12-01T10:00:00Z");
        progress.stop_at(stopped);
        assert_eq!(
            progress.fired_through(stopped + chrono::Duration::hours(1)),
            stopped
        );
    }
}
