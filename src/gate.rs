//! The per-app gate every send of an app passes:
//! - a shared pause after WeCom's frequency limit (45009), so that many schedules of one app do
//!   not storm WeCom while it is refusing them;
//! - WeCom's per-member limits (30 messages a minute, 1000 an hour from one app to one member,
//!   the excess silently dropped): a burst is spread out instead of being lost.
//!
//! Members hidden behind parties and tags cannot be seen from here, so a party or tag counts as
//! one member of its own, and `@all` as every member at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::message::Recipients;

/// WeCom delivers at most this many messages a minute from one app to one member.
pub const PER_MEMBER_PER_MINUTE: usize = 30;
/// ... and at most this many an hour.
pub const PER_MEMBER_PER_HOUR: usize = 1000;

/// WeCom takes at most this many messages a minute from one group robot (then 45009).
pub const ROBOT_PER_MINUTE: u32 = 20;
/// The window a robot's messages are counted in: a minute, and a second of margin for the
/// time a request takes to arrive (two sends 60.0 s apart here may arrive 59.9 s apart there).
pub const ROBOT_WINDOW: Duration = Duration::from_secs(61);

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// An application's limits per member.
const APP_LIMITS: &[(Duration, usize)] =
    &[(MINUTE, PER_MEMBER_PER_MINUTE), (HOUR, PER_MEMBER_PER_HOUR)];
/// A group robot's limit (every message counts: the robot's group is its one audience).
const ROBOT_LIMITS: &[(Duration, usize)] = &[(ROBOT_WINDOW, ROBOT_PER_MINUTE as usize)];

/// Who a message reaches, as far as the per-member limits can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    everyone: bool,
    members: Vec<String>,
}

impl Audience {
    pub fn of(to: &Recipients) -> Audience {
        let everyone = to.is_everyone();
        let mut members: Vec<String> = to
            .users()
            .map(|u| format!("user:{}", u.to_lowercase()))
            .chain(to.parties().map(|p| format!("party:{p}")))
            .chain(to.tags().map(|t| format!("tag:{t}")))
            .collect();
        members.sort();
        members.dedup();
        Audience { everyone, members }
    }

    /// Everyone at once: a group robot's message, which its whole group reads.
    pub fn everyone() -> Audience {
        Audience {
            everyone: true,
            members: Vec::new(),
        }
    }
}

/// Send times of the last hour, per member and for messages to everyone. Checking a send costs
/// a few steps per recipient, however many messages the app sent to others.
#[derive(Debug)]
struct Ledger {
    /// `(window, most messages in it)`; the longest window is the last.
    limits: &'static [(Duration, usize)],
    by_member: HashMap<String, VecDeque<Instant>>,
    everyone: VecDeque<Instant>,
    recorded: u64,
}

impl Ledger {
    fn new(limits: &'static [(Duration, usize)]) -> Ledger {
        Ledger {
            limits,
            by_member: HashMap::new(),
            everyone: VecDeque::new(),
            recorded: 0,
        }
    }

    /// The longest window: times older than it count for nothing.
    fn horizon(&self) -> Duration {
        self.limits.iter().map(|(w, _)| *w).max().unwrap_or(HOUR)
    }
}

impl Ledger {
    /// When one more message to `audience` fits within the limits; `None` if it fits now.
    fn blocked_until(&mut self, audience: &Audience, now: Instant) -> Option<Instant> {
        let horizon = self.horizon();
        prune(&mut self.everyone, now, horizon);
        let empty = VecDeque::new();
        let everyone = &self.everyone;
        let limits = self.limits;
        let full = |mine: &VecDeque<Instant>| {
            limits
                .iter()
                .filter_map(|&(window, limit)| full_until(mine, everyone, window, limit, now))
                .max()
        };
        if audience.everyone {
            // A message to everyone counts for every member: the fullest one decides.
            let members = self.by_member.values().map(&full);
            return members.chain([full(&empty)]).flatten().max();
        }
        audience
            .members
            .iter()
            .filter_map(|member| full(self.by_member.get(member).unwrap_or(&empty)))
            .max()
    }

    fn record(&mut self, audience: &Audience, now: Instant) {
        let horizon = self.horizon();
        if audience.everyone {
            self.everyone.push_back(now);
        } else {
            for member in &audience.members {
                let times = self.by_member.entry(member.clone()).or_default();
                prune(times, now, horizon);
                times.push_back(now);
            }
        }
        self.recorded += 1;
        if self.recorded.is_multiple_of(SWEEP_EVERY) {
            // Members nobody wrote to for an hour leave the ledger.
            self.by_member.retain(|_, times| {
                prune(times, now, horizon);
                !times.is_empty()
            });
        }
    }
}

/// How often (in recorded messages) the ledger forgets idle members.
const SWEEP_EVERY: u64 = 1024;

/// Drops the times older than `horizon` (the longest window) from a time-ordered queue.
fn prune(times: &mut VecDeque<Instant>, now: Instant, horizon: Duration) {
    while times
        .front()
        .is_some_and(|at| now.duration_since(*at) >= horizon)
    {
        times.pop_front();
    }
}

/// When a member who received `mine` and `everyone` (both time-ordered) may receive one more
/// message within `window`, or `None` when they may now: the `limit`-th most recent message
/// must leave the window first.
fn full_until(
    mine: &VecDeque<Instant>,
    everyone: &VecDeque<Instant>,
    window: Duration,
    limit: usize,
    now: Instant,
) -> Option<Instant> {
    let inside = |at: &&Instant| now.duration_since(**at) < window;
    let (mut a, mut b) = (
        mine.iter().rev().take_while(inside).peekable(),
        everyone.iter().rev().take_while(inside).peekable(),
    );
    let mut newest_first = std::iter::from_fn(|| match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x >= y => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    });
    newest_first.nth(limit - 1).map(|at| *at + window)
}

/// One destination's gate: an app's, or a group robot's.
#[derive(Debug)]
pub struct AppGate {
    paused_until: Mutex<Option<Instant>>,
    ledger: Mutex<Ledger>,
}

impl Default for AppGate {
    /// An application's gate (per-member limits).
    fn default() -> Self {
        AppGate::with_limits(APP_LIMITS)
    }
}

impl AppGate {
    fn with_limits(limits: &'static [(Duration, usize)]) -> AppGate {
        AppGate {
            paused_until: Mutex::new(None),
            ledger: Mutex::new(Ledger::new(limits)),
        }
    }

    /// A group robot's gate: 20 messages a minute, whoever they mention.
    pub fn for_robot() -> AppGate {
        AppGate::with_limits(ROBOT_LIMITS)
    }

    /// Waits while the app is paused. Re-checks after waking, since the pause may have grown.
    pub async fn wait(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Pauses every send of the app for `pause` (extending, never shortening, a pause).
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut current = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }

    /// Whether the app is paused right now (a [`AppGate::wait`] would wait).
    pub fn is_paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| until > Instant::now())
    }

    /// Whether a send to `audience` would go ahead right now: no pause, and within the
    /// per-member limits. Counts nothing.
    pub fn is_clear(&self, audience: &Audience) -> bool {
        !self.is_paused()
            && self
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .blocked_until(audience, Instant::now())
                .is_none()
    }

    /// Counts the message to `audience` if it stays within the per-member limits right now;
    /// false (nothing counted) when it would have to wait.
    pub fn try_admit(&self, audience: &Audience) -> bool {
        self.admit_now(audience).is_ok()
    }

    /// Counts the message to `audience` now if it stays within the limits (when), else says
    /// when to look again.
    fn admit_now(&self, audience: &Audience) -> Result<Instant, Instant> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match ledger.blocked_until(audience, now) {
            Some(retry_at) => Err(retry_at),
            None => {
                ledger.record(audience, now);
                Ok(now)
            }
        }
    }

    /// Waits until sending to `audience` stays within the per-member limits, then counts the
    /// message. Returns how long it waited (zero when it did not).
    pub async fn admit(&self, audience: &Audience) -> Duration {
        let start = Instant::now();
        let mut held = false;
        loop {
            match self.admit_now(audience) {
                Ok(now) if held => return now.duration_since(start),
                Ok(_) => return Duration::ZERO,
                Err(retry_at) => {
                    held = true;
                    tokio::time::sleep_until(retry_at).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(users: &[&str]) -> Audience {
        Audience::of(&Recipients::users_only(users))
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_waiter_until_it_ends() {
        let gate = AppGate::default();
        let start = Instant::now();
        gate.wait().await;
        assert_eq!(Instant::now(), start);
        gate.pause(Duration::from_secs(60));
        gate.pause(Duration::from_secs(10));
        gate.wait().await;
        assert!(Instant::now() >= start + Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_to_one_member_is_spread_over_minutes() {
        let gate = AppGate::default();
        let start = Instant::now();
        for _ in 0..PER_MEMBER_PER_MINUTE {
            assert_eq!(gate.admit(&to(&["zhangsan"])).await, Duration::ZERO);
        }
        // Another member is not held back by ZhangSan's messages.
        assert_eq!(gate.admit(&to(&["lisi"])).await, Duration::ZERO);
        // The 31st to ZhangSan (any spelling: WeCom ids are case-insensitive) waits a minute.
        gate.admit(&to(&["ZhangSan"])).await;
        assert_eq!(Instant::now().duration_since(start), MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_to_everyone_counts_for_every_member() {
        let gate = AppGate::default();
        let start = Instant::now();
        for _ in 0..PER_MEMBER_PER_MINUTE {
            assert_eq!(gate.admit(&to(&["@all"])).await, Duration::ZERO);
        }
        // WangWu got thirty messages through @all: the next one to him waits.
        assert_eq!(gate.admit(&to(&["wangwu"])).await, MINUTE);
        assert_eq!(Instant::now().duration_since(start), MINUTE);
        // A party counts as a member of its own.
        let party = Audience::of(&Recipients::new(&[] as &[&str], &["2"], &[] as &[&str]));
        assert_eq!(gate.admit(&party).await, Duration::ZERO);
    }
}
