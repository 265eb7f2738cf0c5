//! Destinations: where a schedule's message goes, how its content becomes the body posted there,
//! and what the guarantees of a send rest on.
//!
//! Dispatch holds one [`Channel`] per fire. The channel renders the exact body (stored byte for
//! byte in `sends.payload`), and states:
//! - its **duplicate-check window**: for how long a resend of the same body cannot deliver it
//!   twice (WeCom's `enable_duplicate_check` for an application), or none, in which case a send
//!   whose outcome is unknown is never resent;
//! - its **rate limits**, which dispatch respects before the send;
//! - whether a sent message **can be recalled**.

pub mod app;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{App, Schedule};
use crate::message::Content;

/// One destination of sends.
#[derive(Debug, Clone)]
pub enum Channel {
    /// A WeCom application (`message/send`): exactly once, through the duplicate check.
    App(Arc<App>),
}

/// A limit WeCom enforces on a destination: at most `count` messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted ("per member", "per robot").
    pub scope: &'static str,
    pub count: u32,
    pub per: Duration,
}

/// An application's limits per member: WeCom silently drops the excess.
pub const APP_MEMBER_LIMITS: [RateLimit; 2] = [
    RateLimit {
        scope: "per member",
        count: crate::gate::PER_MEMBER_PER_MINUTE as u32,
        per: Duration::from_secs(60),
    },
    RateLimit {
        scope: "per member",
        count: crate::gate::PER_MEMBER_PER_HOUR as u32,
        per: Duration::from_secs(3600),
    },
];

impl Channel {
    /// The channel `schedule` sends through, in the config whose apps are `apps`.
    pub fn for_schedule(schedule: &Schedule, apps: &BTreeMap<String, Arc<App>>) -> Option<Channel> {
        apps.get(&schedule.app).cloned().map(Channel::App)
    }

    /// The destination's name in the config (the `app` column).
    pub fn name(&self) -> &str {
        match self {
            Channel::App(app) => &app.name,
        }
    }

    /// The `agent_id` column: the application's, 0 where there is none.
    pub fn agent_id(&self) -> i64 {
        match self {
            Channel::App(app) => app.agent_id,
        }
    }

    /// The exact JSON body posted for `content`, without any credential.
    pub fn body(&self, schedule: &Schedule, content: &Content) -> String {
        match self {
            Channel::App(app) => app::body(app.agent_id, schedule, content),
        }
    }

    /// The body of `schedule` at `slot`, and its content.
    pub fn body_at(&self, schedule: &Schedule, slot: DateTime<Utc>) -> (Content, String) {
        let content = schedule.content_at(slot);
        let body = self.body(schedule, &content);
        (content, body)
    }

    /// For how long after a send a resend of the same body cannot deliver it twice; `None`
    /// when the destination has no duplicate check (never resend what may have arrived).
    pub fn duplicate_check(&self, schedule: &Schedule) -> Option<Duration> {
        match self {
            Channel::App(_) => Some(Duration::from_secs(u64::from(
                schedule.duplicate_check_interval,
            ))),
        }
    }

    /// The limits WeCom enforces on sends through this channel.
    pub fn rate_limits(&self) -> &'static [RateLimit] {
        match self {
            Channel::App(_) => &APP_MEMBER_LIMITS,
        }
    }

    /// Whether a sent message can be recalled (`wecom-notify recall`).
    pub fn can_recall(&self) -> bool {
        match self {
            Channel::App(_) => true,
        }
    }
}
