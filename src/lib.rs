//! wecom-notify sends WeCom (企业微信) application messages on cron schedules and keeps an
//! auditable record of every send in SQLite.
//!
//! The pieces, in the order a message travels:
//! - [`config`] reads and validates the schedules file (every problem at once);
//! - [`cron`] turns a schedule's expression and zone into *slots*, the instants it names;
//! - [`daemon`] arms a timer per schedule, fires each slot once, reloads on SIGHUP and stops
//!   cleanly on SIGTERM, talking to systemd through [`daemon::notify`];
//! - [`message`] holds what a schedule says (its templates, and the content they render to at a
//!   slot, with WeCom's limits);
//! - [`dispatch`] resolves the schedule's [`channel`] (its destination), which renders the exact
//!   body and states what the guarantees rest on (duplicate-check window, rate limits, recall);
//!   dispatch claims the slot's row in [`store`], and sends it through [`wecom`] with the
//!   [`retry`] policy, behind a per-app [`gate`];
//!
//! Layers: [`store`] keeps plain rows and imports neither [`config`] nor [`wecom`]; [`config`]
//! does not import [`wecom`] (both use [`message`]).
//! - [`commands`] implements the command line on top of all that; `main.rs` only parses it.
//!
//! Secrets and access tokens live in newtypes that print as `***`
//! ([`config::Secret`], [`store::tokens::AccessToken`]).

pub mod calendar;
pub mod channel;
pub mod commands;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod dispatch;
pub mod gate;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod parallel;
pub mod probes;
pub mod retry;
pub mod shown;
pub mod store;
pub mod template;
pub mod time;
pub mod wecom;
