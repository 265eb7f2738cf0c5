//! One fire of a schedule: render → claim the row → send with retries → record the outcome.
//!
//! The row is written *before* the HTTP call (`pending`), so a crash leaves evidence, and for
//! cron slots the write is the at-most-once gate. The body is rendered once and every retry
//! resends it byte for byte, which is what lets WeCom's duplicate check absorb a retry of a
//! message that had in fact arrived.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::config::{App, Schedule};
use crate::gate::AppGate;
use crate::retry::RetryPolicy;
use crate::store::Store;
use crate::store::history::{Claim, Finish, NewSend, Status, Trigger};
use crate::wecom::Client;
use crate::wecom::client::{AccessToken, Reply, TokenError, Transport};
use crate::wecom::error::{ErrorClass, classify, describe};
use crate::wecom::token::{TokenCache, TokenFailure};

/// What became of one fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// The row was written and the send ran to an end (any status).
    Done(SendOutcome),
    /// Another fire already holds this slot; nothing was sent.
    Taken,
}

/// The finished row of a send, as `send` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub id: i64,
    pub payload: String,
    pub finish: Finish,
}

impl SendOutcome {
    /// One line for the terminal and the log, with advice for a known errcode.
    pub fn summary(&self) -> String {
        let f = &self.finish;
        let mut line = format!(
            "history id {}: {} after {} attempt(s)",
            self.id,
            f.status.as_str(),
            f.attempts
        );
        if let Some(errcode) = f.errcode {
            line.push_str(&format!(
                ", {}",
                describe(errcode, f.errmsg.as_deref().unwrap_or(""))
            ));
        } else if let Some(errmsg) = &f.errmsg {
            line.push_str(&format!(", {errmsg}"));
        }
        if let Some(msgid) = &f.msgid {
            line.push_str(&format!(", msgid {msgid}"));
        }
        for (what, list) in [
            ("invalid users", &f.invaliduser),
            ("invalid parties", &f.invalidparty),
            ("invalid tags", &f.invalidtag),
            ("unlicensed users", &f.unlicenseduser),
        ] {
            if let Some(list) = list.as_deref().filter(|l| !l.is_empty()) {
                line.push_str(&format!(", {what}: {list}"));
            }
        }
        line
    }
}

/// One attempt's result, before the policy decides what to do about it.
enum Attempt {
    Answer(Reply, AccessToken),
    Token(TokenFailure),
    Transport(Transport),
}

/// Sends messages: shared by the daemon's timers and the `send` command.
pub struct Dispatcher {
    store: Store,
    client: Client,
    tokens: TokenCache,
    policy: RetryPolicy,
    dry_run: bool,
    gates: Mutex<HashMap<(String, i64), Arc<AppGate>>>,
    /// Rows claimed and not yet finished by this process.
    inflight: Mutex<HashSet<i64>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        client: Client,
        tokens: TokenCache,
        policy: RetryPolicy,
        dry_run: bool,
    ) -> Dispatcher {
        Dispatcher {
            store,
            client,
            tokens,
            policy,
            dry_run,
            gates: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashSet::new()),
        }
    }

    /// Marks the rows still in flight as `interrupted` (shutdown gave up waiting for them).
    pub async fn interrupt_inflight(&self) -> usize {
        let ids: Vec<i64> = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        let mut interrupted = 0;
        for id in ids {
            match self.store.interrupt(id).await {
                Ok(true) => interrupted += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(id, "could not mark the send interrupted: {e:#}"),
            }
        }
        interrupted
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    fn gate(&self, app: &App) -> Arc<AppGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry((app.corp_id.clone(), app.agent_id))
            .or_default()
            .clone()
    }

    /// Fires `schedule` for `slot`. Errors are database errors only: every WeCom or network
    /// failure ends as a `failed` row with its reason.
    pub async fn fire(
        &self,
        schedule: &Schedule,
        app: &App,
        slot: DateTime<Utc>,
        trigger: Trigger,
    ) -> anyhow::Result<Fired> {
        let (content, payload) = schedule.body_at(app.agent_id, slot);
        let claim = self
            .store
            .claim(NewSend {
                schedule: schedule.name.clone(),
                trigger,
                scheduled_at: slot,
                app: app.name.clone(),
                agent_id: app.agent_id,
                msgtype: content.msgtype().to_string(),
                payload: payload.clone(),
                status: if self.dry_run {
                    Status::DryRun
                } else {
                    Status::Pending
                },
            })
            .await?;
        let id = match claim {
            Claim::Claimed(id) => id,
            Claim::Taken => {
                tracing::debug!(schedule = %schedule.name, slot = %crate::time::to_db(slot), "slot already claimed; not sending it again");
                return Ok(Fired::Taken);
            }
        };
        if self.dry_run {
            tracing::info!(schedule = %schedule.name, slot = %crate::time::to_db(slot), id, body = %payload, "dry run: not sending");
            let finish = Finish::new(Status::DryRun, 0);
            return Ok(Fired::Done(SendOutcome {
                id,
                payload,
                finish,
            }));
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let finish = self
            .deliver(id, app, &payload, schedule.duplicate_check_interval)
            .await;
        let recorded = self.store.finish(id, finish.clone()).await;
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        recorded?;
        let outcome = SendOutcome {
            id,
            payload,
            finish,
        };
        log_outcome(&schedule.name, slot, &outcome);
        Ok(Fired::Done(outcome))
    }

    /// Sends `payload` until it is accepted, fails for good, or the retry budget is spent.
    pub async fn deliver(
        &self,
        id: i64,
        app: &App,
        payload: &str,
        duplicate_check_interval: u32,
    ) -> Finish {
        let started = Instant::now();
        let gate = self.gate(app);
        let mut first_ambiguous: Option<Instant> = None;
        let mut refreshed_token = false;
        let mut attempts = 0;
        loop {
            gate.wait().await;
            attempts += 1;
            if let Err(e) = self.store.set_attempts(id, attempts).await {
                tracing::warn!(id, error = %format!("{e:#}"), "could not count an attempt in the history");
            }
            let attempt = self.attempt(app, payload).await;
            let (delay, failure) = match attempt {
                Attempt::Answer(reply, token) => match classify(reply.errcode) {
                    ErrorClass::Ok => return Finish::from_reply(attempts, reply),
                    ErrorClass::RefreshToken if !refreshed_token => {
                        // WeCom may invalidate a token early; fetch a new one and retry once,
                        // with a URL built afresh around the new token.
                        refreshed_token = true;
                        if let Err(e) = self.tokens.invalidate(app, &token).await {
                            tracing::warn!(error = %format!("{e:#}"), "could not drop the rejected token");
                        }
                        continue;
                    }
                    ErrorClass::Busy => (
                        self.policy.backoff(attempts),
                        Finish::from_reply(attempts, reply),
                    ),
                    ErrorClass::RateLimited => {
                        let pause = self.policy.rate_limit_backoff();
                        gate.pause(pause);
                        (pause, Finish::from_reply(attempts, reply))
                    }
                    ErrorClass::RefreshToken | ErrorClass::Permanent => {
                        return Finish::from_reply(attempts, reply);
                    }
                },
                Attempt::Token(TokenFailure::Api(TokenError::WeCom { errcode, errmsg })) => {
                    let failure = Finish::wecom_error(attempts, errcode, errmsg);
                    match classify(errcode) {
                        ErrorClass::Busy => (self.policy.backoff(attempts), failure),
                        ErrorClass::RateLimited => {
                            let pause = self.policy.rate_limit_backoff();
                            gate.pause(pause);
                            (pause, failure)
                        }
                        _ => return failure,
                    }
                }
                Attempt::Token(TokenFailure::Api(TokenError::NoSecret(field))) => {
                    return Finish::local_error(
                        attempts,
                        format!("the app's secret ({field}) is not available"),
                    );
                }
                Attempt::Token(failure) => (
                    self.policy.backoff(attempts),
                    Finish::local_error(attempts, failure.to_string()),
                ),
                Attempt::Transport(transport) => {
                    if transport.maybe_delivered {
                        first_ambiguous.get_or_insert_with(Instant::now);
                    }
                    (
                        self.policy.backoff(attempts),
                        Finish::local_error(attempts, transport.detail),
                    )
                }
            };
            if let Some(reason) = self.give_up(
                attempts,
                started,
                first_ambiguous,
                delay,
                duplicate_check_interval,
            ) {
                tracing::warn!(id, attempts, "giving up: {reason}");
                return failure;
            }
            tracing::info!(id, attempts, delay_ms = delay.as_millis() as u64, reason = %failure_reason(&failure), "send failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn give_up(
        &self,
        attempts: u32,
        started: Instant,
        first_ambiguous: Option<Instant>,
        delay: Duration,
        duplicate_check_interval: u32,
    ) -> Option<String> {
        if attempts >= self.policy.max_attempts {
            return Some(format!("{attempts} attempts made"));
        }
        if started.elapsed() + delay > self.policy.max_elapsed {
            return Some(format!(
                "retry budget of {}s spent",
                self.policy.max_elapsed.as_secs()
            ));
        }
        if let Some(first) = first_ambiguous
            && first.elapsed() + delay >= self.policy.ambiguous_window(duplicate_check_interval)
        {
            return Some("an earlier attempt may have arrived, and a resend after the duplicate-check interval could deliver it twice".to_string());
        }
        None
    }

    async fn attempt(&self, app: &App, payload: &str) -> Attempt {
        let token = match self.tokens.get(app).await {
            Ok(token) => token,
            Err(failure) => return Attempt::Token(failure),
        };
        match self.client.send(app, &token, payload).await {
            Ok(reply) => Attempt::Answer(reply, token),
            Err(transport) => Attempt::Transport(transport),
        }
    }
}

impl Finish {
    /// A finished row without a WeCom answer.
    pub fn new(status: Status, attempts: u32) -> Finish {
        Finish {
            status,
            attempts,
            errcode: None,
            errmsg: None,
            msgid: None,
            invaliduser: None,
            invalidparty: None,
            invalidtag: None,
            unlicenseduser: None,
        }
    }

    fn from_reply(attempts: u32, reply: Reply) -> Finish {
        let status = match (reply.errcode, reply.has_rejected_recipients()) {
            (0, false) => Status::Sent,
            (0, true) => Status::Partial,
            _ => Status::Failed,
        };
        let nonempty = |list: Option<String>| list.filter(|l| !l.is_empty());
        Finish {
            status,
            attempts,
            errcode: Some(reply.errcode),
            errmsg: Some(reply.errmsg),
            msgid: nonempty(reply.msgid),
            invaliduser: nonempty(reply.invaliduser),
            invalidparty: nonempty(reply.invalidparty),
            invalidtag: nonempty(reply.invalidtag),
            unlicenseduser: nonempty(reply.unlicenseduser),
        }
    }

    fn wecom_error(attempts: u32, errcode: i64, errmsg: String) -> Finish {
        Finish {
            errcode: Some(errcode),
            errmsg: Some(errmsg),
            ..Finish::new(Status::Failed, attempts)
        }
    }

    fn local_error(attempts: u32, detail: String) -> Finish {
        Finish {
            errmsg: Some(detail),
            ..Finish::new(Status::Failed, attempts)
        }
    }
}

fn failure_reason(finish: &Finish) -> String {
    match finish.errcode {
        Some(errcode) => describe(errcode, finish.errmsg.as_deref().unwrap_or("")),
        None => finish.errmsg.clone().unwrap_or_default(),
    }
}

fn log_outcome(schedule: &str, slot: DateTime<Utc>, outcome: &SendOutcome) {
    let slot = crate::time::to_db(slot);
    let f = &outcome.finish;
    match f.status {
        Status::Sent => {
            tracing::info!(schedule, %slot, id = outcome.id, attempts = f.attempts, msgid = f.msgid.as_deref().unwrap_or(""), "sent")
        }
        Status::Partial => {
            tracing::warn!(schedule, %slot, "partially delivered: {}", outcome.summary())
        }
        _ => tracing::error!(schedule, %slot, "send failed: {}", outcome.summary()),
    }
}
