//! `send SCHEDULE [--dry-run]`: fire one schedule now, as a `manual` row.

use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::{EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Globals};
use crate::channel::Channel;
use crate::config::{Schedule, Secrets};
use crate::dispatch::{Dispatcher, Fired};
use crate::retry::RetryPolicy;
use crate::shown::shown;
use crate::store::history::{Status, Trigger};
use crate::wecom::Client;
use crate::wecom::token::TokenCache;

/// Runs `send`; exits 0 only when WeCom accepted the message (or for a dry run).
pub async fn run(globals: &Globals, name: &str, dry_run: bool) -> ExitCode {
    let secrets = Secrets::for_dry_run(dry_run);
    let config = match globals.load(secrets) {
        Ok(config) => config,
        Err(code) => return code,
    };
    config.log_warnings();
    let Some(schedule) = config.schedule(name).cloned() else {
        let names: Vec<_> = config.schedules.iter().map(|s| &*s.name).collect();
        eprintln!(
            "error: no schedule named \"{name}\" in {} (schedules: {})",
            config.path.display(),
            names.join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(channel) = Channel::for_schedule(&schedule, &config.apps, &config.robots) else {
        let (what, named) = match schedule.robot() {
            Some(robot) => ("robot", robot),
            None => ("app", schedule.app()),
        };
        eprintln!("error: schedule \"{name}\" names {what} \"{named}\", which is not defined");
        return ExitCode::from(EXIT_CONFIG);
    };
    let store = match globals.open_database(Some(&config)).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    store.set_owner(config.owner());
    // Held while the send is in flight (retries may outlast a lease).
    let _leases = (!dry_run).then(|| store.keep_leases());
    let client = match Client::new() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let tokens = TokenCache::new(store.clone(), client.clone());
    let dispatcher = Arc::new(Dispatcher::new(
        store,
        client,
        tokens,
        RetryPolicy::default(),
        dry_run,
    ));
    let now = Utc::now().trunc_subsecs(0);
    // A robot has no duplicate check: nothing it is sent is dropped as a repeat.
    if !dry_run && channel.duplicate_check(&schedule).is_some() {
        warn_if_duplicate(&dispatcher, &schedule, &channel, now).await;
    }
    match dispatcher
        .fire(&schedule, &channel, now, Trigger::Manual)
        .await
    {
        Ok(Fired::Done(outcome)) => {
            if dry_run {
                println!("{}", shown(&outcome.payload));
            }
            println!("{}", outcome.summary());
            if dispatcher.flush_unwritten().await > 0 {
                // The outcome is known but not in the history yet: an auditor would not see it.
                dispatcher.log_unwritten();
                let kept = dispatcher.store().spill_path().map_or_else(
                    || "it is logged above, and the row stays pending".to_string(),
                    |file| {
                        format!(
                            "it is kept in {}, which the daemon records as soon as the database takes writes",
                            file.display()
                        )
                    },
                );
                eprintln!(
                    "error: the outcome above could not be written to the database (history id {}); {kept}",
                    outcome
                        .id
                        .map_or_else(|| "-".to_string(), |id| id.to_string())
                );
                return ExitCode::from(EXIT_FAILED);
            }
            match outcome.finish.status {
                Status::Sent | Status::Partial | Status::DryRun => ExitCode::from(EXIT_OK),
                _ => ExitCode::from(EXIT_FAILED),
            }
        }
        Ok(Fired::Taken) => {
            // Manual rows are not unique per slot, so this cannot happen; say so if it does.
            eprintln!("error: the send was not recorded");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Warns when the same body went out within the duplicate-check interval: WeCom would answer
/// "ok" and silently not deliver it, and the operator would believe it had been.
async fn warn_if_duplicate(
    dispatcher: &Dispatcher,
    schedule: &Schedule,
    channel: &Channel,
    now: DateTime<Utc>,
) {
    let (_, payload) = channel.body_at(schedule, now);
    let since = now - chrono::Duration::seconds(i64::from(schedule.duplicate_check_interval));
    if let Ok(Some((id, at))) = dispatcher
        .store()
        .identical_send_since(&schedule.name, &payload, since)
        .await
    {
        eprintln!(
            "warning: history id {id} sent this very body at {at}, within duplicate_check_interval ({}s): WeCom will answer ok but not deliver it again. Change the text, or wait until the interval has passed",
            schedule.duplicate_check_interval
        );
    }
}
