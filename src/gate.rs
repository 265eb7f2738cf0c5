//! The per-app gate every send of an app passes:
//! - a shared pause after WeCom's frequency limit (45009), so that many schedules of one app do
//!   not storm WeCom while it is refusing them;
//! - WeCom's per-member limits (30 messages a minute, 1000 an hour from one app to one member,
//!   the excess silently dropped): a burst is spread out instead of being lost.
//!
//! Members hidden behind parties and tags cannot be seen from here, so a party or tag counts as
//! one member of its own, and `@all` as every member at once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::wecom::message::Recipients;

/// WeCom delivers at most this many messages a minute from one app to one member.
pub const PER_MEMBER_PER_MINUTE: usize = 30;
/// ... and at most this many an hour.
pub const PER_MEMBER_PER_HOUR: usize = 1000;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Who a message reaches, as far as the per-member limits can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    everyone: bool,
    members: HashSet<String>,
}

impl Audience {
    pub fn of(to: &Recipients) -> Audience {
        let everyone = to.users.iter().any(|u| u == "@all");
        let members = to
            .users
            .iter()
            .map(|u| format!("user:{}", u.to_lowercase()))
            .chain(to.parties.iter().map(|p| format!("party:{p}")))
            .chain(to.tags.iter().map(|t| format!("tag:{t}")))
            .collect();
        Audience { everyone, members }
    }

    fn overlaps(&self, other: &Audience) -> bool {
        self.everyone || other.everyone || !self.members.is_disjoint(&other.members)
    }
}

/// One app's gate.
#[derive(Debug, Default)]
pub struct AppGate {
    paused_until: Mutex<Option<Instant>>,
    /// Messages admitted within the last hour.
    recent: Mutex<VecDeque<(Instant, Arc<Audience>)>>,
}

impl AppGate {
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

    /// Waits until sending to `audience` stays within the per-member limits, then counts the
    /// message. Returns how long it waited.
    pub async fn admit(&self, audience: Arc<Audience>) -> Duration {
        let start = Instant::now();
        let mut held = false;
        loop {
            let retry_at = {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while recent
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= HOUR)
                {
                    recent.pop_front();
                }
                let overlapping: Vec<Instant> = recent
                    .iter()
                    .filter(|(_, a)| a.overlaps(&audience))
                    .map(|(at, _)| *at)
                    .collect();
                let full = |window: Duration, limit: usize| {
                    let inside: Vec<&Instant> = overlapping
                        .iter()
                        .filter(|at| now.duration_since(**at) < window)
                        .collect();
                    // The oldest message that must leave the window before one more fits.
                    (inside.len() >= limit).then(|| *inside[inside.len() - limit] + window)
                };
                match full(MINUTE, PER_MEMBER_PER_MINUTE).max(full(HOUR, PER_MEMBER_PER_HOUR)) {
                    None => {
                        recent.push_back((now, audience.clone()));
                        return if held {
                            now.duration_since(start)
                        } else {
                            Duration::ZERO
                        };
                    }
                    Some(at) => at,
                }
            };
            held = true;
            tokio::time::sleep_until(retry_at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(users: &[&str]) -> Arc<Audience> {
        Arc::new(Audience::of(&Recipients {
            users: users.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }))
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
            assert_eq!(gate.admit(to(&["zhangsan"])).await, Duration::ZERO);
        }
        // Another member is not held back by ZhangSan's messages.
        assert_eq!(gate.admit(to(&["lisi"])).await, Duration::ZERO);
        // The 31st to ZhangSan (any spelling: WeCom ids are case-insensitive) waits a minute.
        gate.admit(to(&["ZhangSan"])).await;
        assert_eq!(Instant::now().duration_since(start), MINUTE);
        // @all overlaps everyone; parties are counted as members of their own.
        assert!(to(&["@all"]).overlaps(&to(&["wangwu"])));
        let party = Audience::of(&Recipients {
            parties: vec!["2".into()],
            ..Default::default()
        });
        assert!(!party.overlaps(&to(&["wangwu"])) && party.overlaps(&party.clone()));
    }
}
