//! `recall ID`: have WeCom withdraw a delivered message (`message/recall`, within 24 h of the
//! send) and record when on its history row.
//!
//! Everything that can be known locally is checked before WeCom is called, so a refusal costs
//! no token and says exactly why.

use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};

use super::{EXIT_FAILED, EXIT_OK, Globals};
use crate::config::{App, Config, Secrets};
use crate::store::query::SendRow;
use crate::wecom::Client;
use crate::wecom::error::{ErrorClass, classify, describe};
use crate::wecom::token::TokenCache;

/// WeCom recalls a message only this long after it was sent.
pub const RECALL_WINDOW: Duration = Duration::hours(24);

/// Runs `recall`: exits 0 only when WeCom withdrew the message and the row records it.
pub async fn run(globals: &Globals, id: i64) -> ExitCode {
    let config = match globals.load(Secrets::Required) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let store = match globals.open_store(&globals.database(Some(&config))) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let row = match store.send_row(id).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return refuse(format!(
                "there is no history id {id} in {} (`wecom-notify history` lists them)",
                store.path().display()
            ));
        }
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
    let tokens = TokenCache::new(store.clone(), client.clone());
    let mut refreshed = false;
    loop {
        let token = match tokens.get(app).await {
            Ok(token) => token,
            Err(e) => return refuse(format!("history id {id} was not recalled: {e}")),
        };
        let reply = match client.recall(app, &token, msgid).await {
            Ok(reply) => reply,
            Err(e) => {
                return refuse(format!(
                    "history id {id} was not recalled: {e}; run the command again"
                ));
            }
        };
        match classify(reply.errcode) {
            ErrorClass::Ok => break,
            // WeCom may invalidate a token early: fetch a new one and try once more.
            ErrorClass::RefreshToken if !refreshed => {
                refreshed = true;
                tokens.invalidate(app, &token).await;
            }
            _ => {
                return refuse(format!(
                    "WeCom did not recall history id {id} (msgid {msgid}): {}",
                    recall_error(reply.errcode, &reply.errmsg)
                ));
            }
        }
    }
    let now = Utc::now();
    if let Err(e) = store.mark_recalled(id, now).await {
        return refuse(format!(
            "WeCom recalled history id {id} (msgid {msgid}), but the history could not record it: {e:#}"
        ));
    }
    tracing::info!(id, msgid, schedule = %row.schedule, "recalled");
    println!(
        "history id {id} ({}, msgid {msgid}): recalled at {}",
        row.schedule,
        crate::time::to_db(now)
    );
    ExitCode::from(EXIT_OK)
}

fn refuse(reason: String) -> ExitCode {
    eprintln!("error: {reason}");
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
