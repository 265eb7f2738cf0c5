//! `recall ID`: have WeCom withdraw a delivered message (`message/recall`, within 24 h of the
//! send) and record when on its history row.
//!
//! Everything that can be known locally is checked before WeCom is called, so a refusal costs
//! no token and says exactly why.

use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};

use super::{EXIT_FAILED, EXIT_IN_PROGRESS, EXIT_OK, Globals};
use crate::config::{App, Config, Secrets};
use crate::shown::shown;
use crate::store::Store;
use crate::store::query::SendRow;
use crate::store::recall::RecallClaim;
use crate::wecom::Client;
use crate::wecom::error::{ErrorClass, classify, describe};
use crate::wecom::token::TokenCache;

/// WeCom recalls a message only this long after it was sent.
pub const RECALL_WINDOW: Duration = Duration::hours(24);

/// How old a claim must be before another `recall` takes it over: its process died in the
/// call. A recall takes at most two gettoken and two recall calls of 20 s each (connect and
/// request timeouts); this is well past that.
pub const RECALL_CLAIM_STALE: Duration = Duration::minutes(5);

/// Runs `recall`: exits 0 only when WeCom withdrew the message and the row records it; exit 4
/// when another `recall` of the row is in progress.
pub async fn run(globals: &Globals, id: i64) -> ExitCode {
    let config = match globals.load(Secrets::Required) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let store = match globals.open_database(Some(&config)).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    store.set_owner(config.owner());
    let row = match store.send_row(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return refuse(no_row(&store, id)),
        Err(e) => return refuse(format!("{e:#}")),
    };
    let (msgid, app) = match check(&row, &config, Utc::now()) {
        Ok(found) => found,
        Err(reason) => return refuse(reason),
    };
    let client = match Client::new() {
        Ok(client) => client,
        Err(e) => return refuse(format!("cannot set up the HTTP client: {e:#}")),
    };
    // The claim makes this process the only one to call WeCom for this row: five `recall 1`
    // at once make one call, and the other four say so.
    let claimed = match store.claim_recall(id, Utc::now(), RECALL_CLAIM_STALE).await {
        Ok(RecallClaim::Claimed(at)) => at,
        Ok(RecallClaim::AlreadyRecalled(at)) => {
            return refuse(format!("history id {id} was already recalled at {at}"));
        }
        Ok(RecallClaim::InProgress(since)) => {
            let since = since.map_or_else(String::new, |at| format!(" since {at}"));
            eprintln!(
                "error: a recall of history id {id} is in progress{since} in another process; \
                 run `wecom-notify history` to see its outcome, or this command again once it \
                 has ended (a claim left by a process that died is taken over after {} minutes)",
                RECALL_CLAIM_STALE.num_minutes()
            );
            return ExitCode::from(EXIT_IN_PROGRESS);
        }
        Ok(RecallClaim::NoRow) => return refuse(no_row(&store, id)),
        Err(e) => return refuse(format!("{e:#}")),
    };
    if let Err(reason) = call_wecom(&store, &client, app, id, msgid).await {
        // Nothing was recalled: let the next try go ahead at once.
        if let Err(e) = store.release_recall(id, &claimed).await {
            tracing::warn!(id, "could not release the recall's claim: {e:#}");
        }
        return refuse(reason);
    }
    let now = Utc::now();
    if let Err(e) = store.mark_recalled(id, now).await {
        return refuse(format!(
            "WeCom recalled history id {id} (msgid {msgid}), but the history could not record it: {e:#}"
        ));
    }
    tracing::info!(id, msgid, schedule = %row.schedule, "recalled");
    println!(
        "history id {id} ({}, msgid {}): recalled at {}",
        shown(&row.schedule),
        shown(msgid),
        crate::time::to_db(now)
    );
    ExitCode::from(EXIT_OK)
}

/// Calls `message/recall`, fetching a new token once if WeCom rejects the cached one.
async fn call_wecom(
    store: &Store,
    client: &Client,
    app: &App,
    id: i64,
    msgid: &str,
) -> Result<(), String> {
    let tokens = TokenCache::new(store.clone(), client.clone());
    let mut refreshed = false;
    loop {
        let token = tokens
            .get(app)
            .await
            .map_err(|e| format!("history id {id} was not recalled: {e}"))?;
        let reply = client
            .recall(app, &token, msgid)
            .await
            .map_err(|e| format!("history id {id} was not recalled: {e}; run the command again"))?;
        match classify(reply.errcode) {
            ErrorClass::Ok => return Ok(()),
            // WeCom may invalidate a token early: fetch a new one and try once more.
            ErrorClass::RefreshToken if !refreshed => {
                refreshed = true;
                tokens.invalidate(app, &token).await;
            }
            _ => {
                return Err(format!(
                    "WeCom did not recall history id {id} (msgid {msgid}): {}",
                    recall_error(reply.errcode, &reply.errmsg)
                ));
            }
        }
    }
}

fn no_row(store: &Store, id: i64) -> String {
    format!(
        "there is no history id {id} in {} (`wecom-notify history` lists them)",
        store.describe()
    )
}

fn refuse(reason: String) -> ExitCode {
    eprintln!("error: {}", shown(&reason));
    ExitCode::from(EXIT_FAILED)
}

/// The msgid to recall and the app that sent it; or why `row` cannot be recalled, as far as can
/// be told without asking WeCom.
pub fn check<'a>(
    row: &'a SendRow,
    config: &'a Config,
    now: DateTime<Utc>,
) -> Result<(&'a str, &'a App), String> {
    let id = row.id;
    if let Some(at) = &row.recalled_at {
        return Err(format!("history id {id} was already recalled at {at}"));
    }
    if let Some(robot) = &row.robot {
        return Err(format!(
            "history id {id} was posted through group robot {robot}; WeCom cannot recall a robot's message (only an application's). Delete it in the group chat, or send a correction"
        ));
    }
    let Some(msgid) = row.msgid.as_deref().filter(|m| !m.is_empty()) else {
        let why = match row.status.as_str() {
            "dry_run" => "it was a dry run, which never reaches WeCom",
            "pending" => "it is still being sent; wait for it to finish and try again",
            "sent" | "partial" => "WeCom returned no msgid for it",
            "failed" => "WeCom did not accept it, so nothing was delivered",
            _ => "it was never delivered",
        };
        return Err(format!(
            "history id {id} (status {}) has no msgid to recall: {why}",
            row.status
        ));
    };
    let sent = row.finished_at.as_deref().unwrap_or(&row.created_at);
    let Some(sent_at) = crate::time::from_db(sent) else {
        return Err(format!(
            "history id {id}: cannot tell when it was sent (\"{sent}\" is not a timestamp)"
        ));
    };
    let age = now - sent_at;
    if age >= RECALL_WINDOW {
        return Err(format!(
            "history id {id} was sent at {sent}, {} h ago; WeCom recalls a message only within {} h \
             of sending, so it stays delivered (send a correction instead)",
            age.num_hours(),
            RECALL_WINDOW.num_hours()
        ));
    }
    let Some(app) = config.app(&row.app) else {
        return Err(format!(
            "history id {id} was sent by app \"{}\", which is not in {} any more; add the app \
             back (with its secret) to recall it",
            row.app,
            config.path.display()
        ));
    };
    if app.agent_id != row.agent_id {
        return Err(format!(
            "history id {id} was sent by agent {} but app \"{}\" now has agent_id {}; only the \
             sending application can recall it",
            row.agent_id, row.app, app.agent_id
        ));
    }
    Ok((msgid, app))
}

/// `describe`, except that the advice for 40003 is about recipients, and here it is the msgid.
fn recall_error(errcode: i64, errmsg: &str) -> String {
    match errcode {
        40003 => format!(
            "errcode 40003 ({errmsg}): WeCom does not know this msgid, or it was already recalled \
             or is older than 24 h"
        ),
        _ => describe(errcode, errmsg),
    }
}
