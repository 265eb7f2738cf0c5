//! Notices when the wall clock steps (NTP, an operator's `date -s`, a restored VM), so that
//! every timer waits again by the new clock at once instead of finishing a sleep measured on
//! the old one.
//!
//! A timer computes how long to sleep from the wall clock, then sleeps on the monotonic clock.
//! Without this, a step back of two minutes during a 3-second wait turns it into a sleep of two
//! minutes, and a step forward shows only when the sleep ends. One task compares the two
//! clocks every [`CHECK_EVERY`]; their difference changes only when the wall clock steps (drift
//! is parts per million).
//!
//! What a step means for slots (the README's "Clock steps"):
//! - **Back**: the slots the clock passes a second time were fired already; they are not fired
//!   again (each timer only moves forward, and a slot's row is unique). The next slot is fired
//!   when the clock reaches it again.
//! - **Forward**: the slots it jumps over are overdue at once; they are fired late, or, beyond
//!   the late limit, recorded `missed` (and with `catch_up`, the latest sent late).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// How often the wall clock is compared with the monotonic one.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A change of the clocks' difference beyond this is a step, not drift or scheduling noise.
const STEP: chrono::Duration = chrono::Duration::milliseconds(500);

/// The latest wall-clock step and how many there were; each timer waits on a receiver of it.
pub type Steps = watch::Receiver<Step>;

/// A step of the wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// How many steps since the daemon started.
    pub count: u64,
    /// How far the latest one went (negative: back).
    pub by: chrono::Duration,
}

impl Step {
    /// "back by 120.0 s", for the log and the `clock_step` event.
    pub fn describe(&self) -> String {
        let seconds = self.by.num_milliseconds() as f64 / 1000.0;
        if seconds < 0.0 {
            format!("back by {:.1} s", -seconds)
        } else {
            format!("forward by {seconds:.1} s")
        }
    }
}

/// Starts the watch; timers subscribe to the returned channel.
pub fn watch() -> Steps {
    let (steps, receiver) = watch::channel(Step::default());
    tokio::spawn(run(steps));
    receiver
}

async fn run(steps: watch::Sender<Step>) {
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    let mut offset = difference(origin);
    loop {
        interval.tick().await;
        if steps.is_closed() {
            return;
        }
        let now = difference(origin);
        let step = now - offset;
        offset = now;
        if step.abs() <= STEP {
            continue;
        }
        steps.send_modify(|last| {
            *last = Step {
                count: last.count + 1,
                by: step,
            };
        });
    }
}

/// Wall-clock time less monotonic time since `origin`: constant while the wall clock runs
/// freely.
fn difference(origin: Instant) -> chrono::Duration {
    let wall: DateTime<Utc> = Utc::now();
    let monotonic = chrono::Duration::from_std(origin.elapsed()).unwrap_or_default();
    wall - DateTime::<Utc>::UNIX_EPOCH - monotonic
}
