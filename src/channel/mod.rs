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
pub mod robot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{App, Robot, Schedule};
use crate::message::Content;

/// One destination of sends.
#[derive(Debug, Clone)]
pub enum Channel {
    /// A WeCom application (`message/send`): exactly once, through the duplicate check.
    App(Arc<App>),
    /// A group robot's webhook: at most once, since a robot has no duplicate check.
    Robot(Arc<Robot>),
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

/// A group robot's limit: WeCom refuses the 21st message within a minute with 45009.
pub const ROBOT_LIMITS: [RateLimit; 1] = [RateLimit {
    scope: "per robot",
    count: crate::gate::ROBOT_PER_MINUTE,
    per: Duration::from_secs(60),
}];

impl Channel {
    /// The channel `schedule` sends through, in the config whose apps and robots these are.
    pub fn for_schedule(
        schedule: &Schedule,
        apps: &BTreeMap<String, Arc<App>>,
        robots: &BTreeMap<String, Arc<Robot>>,
    ) -> Option<Channel> {
        match schedule.robot() {
            Some(robot) => robots.get(robot).cloned().map(Channel::Robot),
            None => apps.get(schedule.app()).cloned().map(Channel::App),
        }
    }

    /// The destination's name in the config.
    pub fn name(&self) -> &str {
        match self {
            Channel::App(app) => &app.name,
            Channel::Robot(robot) => &robot.name,
        }
    }

    /// "app ops" / "robot oncall-group", for logs and messages (never a key).
    pub fn describe(&self) -> String {
        match self {
            Channel::App(app) => format!("app {}", app.name),
            Channel::Robot(robot) => format!("robot {}", robot.name),
        }
    }

    /// The `agent_id` column: the application's, 0 where there is none.
    pub fn agent_id(&self) -> i64 {
        match self {
            Channel::App(app) => app.agent_id,
            Channel::Robot(_) => 0,
        }
    }

    /// The exact JSON body posted for `content`, without any credential.
    pub fn body(&self, schedule: &Schedule, content: &Content) -> String {
        match self {
            Channel::App(app) => app::body(app.agent_id, schedule, content),
            Channel::Robot(_) => robot::body(schedule, content),
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
            Channel::Robot(_) => None,
        }
    }

    /// The limits WeCom enforces on sends through this channel.
    pub fn rate_limits(&self) -> &'static [RateLimit] {
        match self {
            Channel::App(_) => &APP_MEMBER_LIMITS,
            Channel::Robot(_) => &ROBOT_LIMITS,
        }
    }

    /// Whether a sent message can be recalled (`wecom-notify recall`).
    pub fn can_recall(&self) -> bool {
        match self {
            Channel::App(_) => true,
            Channel::Robot(_) => false,
        }
    }
}
