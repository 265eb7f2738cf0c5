//! One fire of a schedule: render → claim the row → send with retries → record the outcome.
//!
//! The row is written *before* the HTTP call (`pending`), so a crash leaves evidence, and for
//! cron slots the write is the at-most-once gate. The body is rendered once and every retry
//! resends it byte for byte, which is what lets WeCom's duplicate check absorb a retry of a
//! message that had in fact arrived.
//!
//! A send is made only once its claim is durable. When the database refuses the `pending` row
//! (locked, read-only, faulty; a full disk first gets the disk reserve), the daemon writes the
//! claim to its unrecorded-sends file beside the database instead, synced, and sends — WeCom's
//! duplicate check guards against a second sender of the same body — then keeps the outcome
//! there and in memory until the database takes it ([`journal`]). If neither will take the
//! claim, the slot is not sent: a send that leaves no trace is one the next start would take
//! for missed and send again. It is recorded `missed`, with the reason, once the database takes
//! writes. The `send` command, with an operator watching, refuses instead.

mod deliver;
mod journal;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::channel::Channel;
use crate::config::Schedule;
use crate::gate::{AppGate, Audience};
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::shown::shown;
use crate::store::Store;
use crate::store::history::{Claim, Finish, NewSend, PendingRow, Status, Trigger};
use crate::store::replay::Recorded;
use crate::store::unrecorded::Unrecorded;
use crate::wecom::error::describe;
use crate::wecom::token::TokenCache;
use crate::wecom::{Client, PerApp};
use deliver::Delivery;
use journal::Waiting;

/// Where the claim of a fire went.
enum Claimed {
    /// Somewhere durable: send it.
    Held(Held),
    /// Another fire holds this slot already (in the database, or in this process's file).
    Taken,
    /// Nowhere: not sent; the finish records that once the database takes writes.
    Nowhere(Finish),
}

/// A claim that holds its slot.
enum Held {
    /// Its row in the database.
    Row(i64),
    /// The unrecorded-sends file, the database having refused the row.
    File(Box<Unrecorded>),
}

impl Held {
    /// The history id, when the claim is a row.
    fn id(&self) -> Option<i64> {
        match self {
            Held::Row(id) => Some(*id),
            Held::File(_) => None,
        }
    }
}

/// What became of one fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// The row was written and the send ran to an end (any status).
    Done(Box<SendOutcome>),
    /// Another fire already holds this slot; nothing was sent.
    Taken,
}

/// The finished row of a send, as `send` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The history id; `None` while the row could not be written yet.
    pub id: Option<i64>,
    pub payload: String,
    pub finish: Finish,
}

impl SendOutcome {
    /// One line for the terminal and the log, with advice for a known errcode. WeCom's text
    /// in it is escaped ([`shown`]): an errmsg cannot add a line or a terminal sequence.
    pub fn summary(&self) -> String {
        shown(&self.raw_summary()).into_owned()
    }

    fn raw_summary(&self) -> String {
        let f = &self.finish;
        let id = self
            .id
            .map_or_else(|| "(not recorded yet)".to_string(), |id| id.to_string());
        let mut line = format!(
            "history id {id}: {} after {} attempt(s)",
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

/// Sends messages: shared by the daemon's timers and the `send` command.
pub struct Dispatcher {
    store: Store,
    client: Client,
    tokens: TokenCache,
    policy: RetryPolicy,
    dry_run: bool,
    /// Send even when the history row cannot be written first (the daemon); the `send`
    /// command, with an operator watching, refuses instead.
    send_unrecorded: bool,
    gates: PerApp<AppGate>,
    /// One gate per group robot, by name.
    robot_gates: Mutex<HashMap<String, Arc<AppGate>>>,
    /// Rows claimed and not yet finished by this process.
    inflight: Mutex<HashSet<i64>>,
    /// Sends the database refused, kept until it takes them.
    unwritten: Mutex<Vec<Waiting>>,
    /// Sends being written to the unrecorded-sends file on their way into `unwritten`: while
    /// any is, the file stays.
    keeping: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        client: Client,
        tokens: TokenCache,
        policy: RetryPolicy,
        dry_run: bool,
    ) -> Dispatcher {
        let metrics = Arc::new(Metrics::for_store(store.health()));
        Dispatcher {
            store,
            client,
            tokens: tokens.with_metrics(metrics.clone()),
            metrics,
            policy,
            dry_run,
            send_unrecorded: false,
            gates: PerApp::default(),
            robot_gates: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashSet::new()),
            unwritten: Mutex::new(Vec::new()),
            keeping: AtomicUsize::new(0),
        }
    }

    /// Lets fires go ahead when their row cannot be written first (see the module docs).
    pub fn sending_unrecorded(mut self, yes: bool) -> Dispatcher {
        self.send_unrecorded = yes;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    fn gate(&self, channel: &Channel) -> Arc<AppGate> {
        match channel {
            Channel::App(app) => self.gates.get(app),
            Channel::Robot(robot) => self
                .robot_gates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(robot.name.clone())
                .or_insert_with(|| Arc::new(AppGate::for_robot()))
                .clone(),
        }
    }

    fn track(&self, id: Option<i64>, inflight: bool) {
        let Some(id) = id else { return };
        let mut set = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight {
            set.insert(id);
        } else {
            set.remove(&id);
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
            match self.store.interrupt_at_stop(id).await {
                Ok(true) => interrupted += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(id, "could not mark the send interrupted: {e:#}"),
            }
        }
        interrupted
    }

    /// Fires `schedule` for `slot`. Errors are database errors only (and only when sending
    /// unrecorded is not allowed): every WeCom or network failure ends as a `failed` row.
    pub async fn fire(
        &self,
        schedule: &Schedule,
        channel: &Channel,
        slot: DateTime<Utc>,
        trigger: Trigger,
    ) -> anyhow::Result<Fired> {
        self.fire_then(schedule, channel, slot, trigger, || {})
            .await
    }

    /// [`Dispatcher::fire`], calling `claimed` as soon as the slot's claim is durable (or
    /// known to be another fire's, or recorded as not sent), before the send itself.
    pub async fn fire_then(
        &self,
        schedule: &Schedule,
        channel: &Channel,
        slot: DateTime<Utc>,
        trigger: Trigger,
        claimed: impl FnOnce(),
    ) -> anyhow::Result<Fired> {
        let status = if self.dry_run {
            Status::DryRun
        } else {
            Status::Pending
        };
        let new = row_for_slot(schedule, Some(channel), slot, trigger, status);
        let payload = new.payload.clone();
        let slot_text = crate::time::to_db(slot);
        let gate = self.gate(channel);
        let audience = match channel {
            Channel::App(_) => Audience::of(&schedule.to),
            Channel::Robot(_) => Audience::everyone(),
        };
        // When nothing will hold the send back, its first attempt is counted in the claim
        // itself: one database write less before the message leaves. Should the gate close in
        // the moment between, the count is taken back before the wait (below).
        let counted_ahead = !self.dry_run && gate.is_clear(&audience);
        let claimed_at = Utc::now();
        let claim = self
            .claim(&new, claimed_at, u32::from(counted_ahead))
            .await?;
        claimed();
        let held = match claim {
            Claimed::Held(held) => held,
            Claimed::Taken => {
                tracing::debug!(schedule = %schedule.name, slot = %slot_text, "slot already claimed; not sending it again");
                return Ok(Fired::Taken);
            }
            Claimed::Nowhere(finish) => {
                let outcome = self.finished(&schedule.name, slot, None, payload, finish);
                return Ok(Fired::Done(Box::new(outcome)));
            }
        };
        let id = held.id();
        if self.dry_run {
            tracing::info!(schedule = %schedule.name, slot = %slot_text, id, body = %payload, "dry run: not sending");
            let finish = Finish::new(Status::DryRun, 0);
            return Ok(Fired::Done(Box::new(SendOutcome {
                id,
                payload,
                finish,
            })));
        }
        if trigger == Trigger::Cron {
            let lag = Utc::now() - schedule.due(slot);
            self.metrics
                .observe_fire_lag(lag.to_std().unwrap_or_default());
        }
        // In flight from the claim on: a stop that gives up waiting marks it interrupted even
        // while the rate limiter still holds it back.
        self.track(id, true);
        let mut counted_ahead = counted_ahead && id.is_some();
        let waited = if gate.try_admit(&audience) {
            std::time::Duration::ZERO
        } else {
            if counted_ahead {
                counted_ahead = false;
                self.uncount(id).await;
            }
            gate.admit(&audience).await
        };
        if !waited.is_zero() {
            match channel {
                Channel::App(_) => {
                    tracing::info!(schedule = %schedule.name, slot = %slot_text, waited_s = waited.as_secs(),
                    "held back to stay within WeCom's per-member limits (30 a minute, 1000 an hour)")
                }
                Channel::Robot(robot) => {
                    tracing::info!(schedule = %schedule.name, slot = %slot_text, robot = %robot.name, waited_s = waited.as_secs(),
                    "held back to stay within the robot's limit (20 messages a minute)")
                }
            }
        }
        let started = std::time::Instant::now();
        let finish = self
            .deliver(Delivery {
                id,
                channel,
                payload: &payload,
                duplicate_check: channel.duplicate_check(schedule),
                previous_attempts: 0,
                first_counted: counted_ahead,
                maybe_delivered_since: None,
            })
            .await;
        self.metrics.observe_send(started.elapsed());
        let id = match held {
            Held::Row(id) => Some(self.record(id, new, claimed_at, &finish).await),
            Held::File(claim) => self.record_spilled(*claim, &finish).await,
        };
        Ok(Fired::Done(Box::new(self.finished(
            &schedule.name,
            slot,
            id,
            payload,
            finish,
        ))))
    }

    /// Records a slot the schedule's calendar skips (a holiday): a `skipped` row, nothing sent.
    pub async fn skip(
        &self,
        schedule: &Schedule,
        channel: &Channel,
        slot: DateTime<Utc>,
    ) -> anyhow::Result<Claim> {
        let slot_text = crate::time::to_db(slot);
        let calendar = schedule.calendar.as_ref().map_or("", |c| c.name.as_str());
        if self.dry_run {
            tracing::info!(schedule = %schedule.name, slot = %slot_text, calendar, "dry run: the slot falls on a skipped date");
            return Ok(Claim::Taken);
        }
        let new = row_for_slot(
            schedule,
            Some(channel),
            slot,
            Trigger::Cron,
            Status::Skipped,
        );
        let claim = self.store.claim(new).await?;
        tracing::info!(schedule = %schedule.name, slot = %slot_text, calendar, "skipped: the date is a holiday in the calendar");
        if let Claim::Claimed(_) = claim {
            self.metrics.count_send(&schedule.name, Status::Skipped);
        }
        Ok(claim)
    }

    /// Resends a row a crash left `pending`, byte for byte, continuing its attempt count.
    pub async fn resume(
        &self,
        row: &PendingRow,
        channel: &Channel,
        duplicate_check: Option<std::time::Duration>,
    ) -> SendOutcome {
        self.track(Some(row.id), true);
        // The crashed attempt may have reached WeCom at any moment since the row was written.
        let age = (Utc::now() - row.created_at).to_std().unwrap_or_default();
        let finish = self
            .deliver(Delivery {
                id: Some(row.id),
                channel,
                payload: &row.payload,
                duplicate_check,
                previous_attempts: row.attempts,
                first_counted: false,
                maybe_delivered_since: Some(
                    tokio::time::Instant::now()
                        .checked_sub(age)
                        .unwrap_or_else(tokio::time::Instant::now),
                ),
            })
            .await;
        let recorded = self.store.finish(row.id, finish.clone()).await;
        self.track(Some(row.id), false);
        if let Err(e) = recorded {
            let send = Unrecorded::outcome_of(
                row.id,
                row.as_new(),
                row.created_at,
                row.pid,
                finish.clone(),
            );
            self.keep_unwritten(send, &e).await;
        }
        self.finished(
            &row.schedule,
            row.scheduled_at,
            Some(row.id),
            row.payload.clone(),
            finish,
        )
    }

    /// Claims the slot of `new` before its send: its row, or, when the database refuses it and
    /// sending unrecorded is allowed, a line of the unrecorded-sends file.
    async fn claim(
        &self,
        new: &NewSend,
        claimed_at: DateTime<Utc>,
        attempts: u32,
    ) -> anyhow::Result<Claimed> {
        match self.store.claim_counting(new.clone(), attempts).await {
            Ok(Claim::Claimed(id)) => Ok(Claimed::Held(Held::Row(id))),
            Ok(Claim::Taken) => Ok(Claimed::Taken),
            // A claim outside the database guards only this process; another daemon on the
            // database may claim the slot too, which WeCom's duplicate check absorbs for an app.
            // A robot has none: its slot is not sent rather than perhaps posted twice.
            // On a database shared by several hosts (PostgreSQL) a node that cannot reach it
            // is not sent either: the others likely can, and send the slot themselves. The
            // store has already tried for a while (a restart of the server takes seconds).
            Err(e) if self.send_unrecorded && !self.dry_run && self.store.is_shared() => {
                let schedule = new.schedule.clone();
                let slot = crate::time::to_db(new.scheduled_at);
                tracing::error!(%schedule, %slot,
                    "NOT SENT by this node: the shared database did not take the claim of this slot ({e:#}); another node that reaches it sends the slot, and if none does it is recorded as missed once the database takes writes");
                let reason = format!(
                    "not sent by this node: its claim could not be recorded (database: {e:#}), and another node may have sent it"
                );
                Ok(self.not_sent(new.clone(), claimed_at, &e, reason).await)
            }
            Err(e) if self.send_unrecorded && !self.dry_run && new.robot.is_some() => {
                let schedule = new.schedule.clone();
                let slot = crate::time::to_db(new.scheduled_at);
                tracing::error!(%schedule, %slot,
                    "NOT SENT: the database refused the claim of this robot send ({e:#}); a claim kept outside it would not stop another daemon from posting the slot too, and a group robot has no duplicate check. It is recorded as missed once the database takes writes");
                let reason = format!(
                    "not sent: its claim could not be recorded (database: {e:#}), and a group robot has no duplicate check to absorb a second sender"
                );
                Ok(self.not_sent(new.clone(), claimed_at, &e, reason).await)
            }
            Err(e) if self.send_unrecorded && !self.dry_run => {
                Ok(self.claim_elsewhere(new.clone(), claimed_at, &e).await)
            }
            Err(e) => Err(e),
        }
    }

    /// Records (once the database takes writes) that the slot of `new` was not sent, and why.
    async fn not_sent(
        &self,
        new: NewSend,
        claimed_at: DateTime<Utc>,
        error: &anyhow::Error,
        reason: String,
    ) -> Claimed {
        let finish = Finish {
            errmsg: Some(reason),
            ..Finish::new(Status::Missed, 0)
        };
        let mut not_sent = Unrecorded::claim(new, claimed_at).finished(finish.clone());
        not_sent.row.status = Status::Missed;
        self.keep_unwritten(not_sent, error).await;
        Claimed::Nowhere(finish)
    }

    /// Makes the claim of a send durable outside the database, which refused it (`error`): in
    /// the unrecorded-sends file. If that fails too, the send is not made: the slot is recorded
    /// as `missed`, with the reason, once the database takes writes again.
    async fn claim_elsewhere(
        &self,
        new: NewSend,
        claimed_at: DateTime<Utc>,
        error: &anyhow::Error,
    ) -> Claimed {
        let claim = Unrecorded::claim(new, claimed_at);
        let slot = crate::time::to_db(claim.row.scheduled_at);
        let schedule = claim.row.schedule.clone();
        match self.store.spill_claim(claim.clone()).await {
            Ok(Some(file)) => {
                tracing::error!(%schedule, %slot,
                    "cannot write the history row before sending ({error:#}); its claim is kept in {} instead: sending, and recording it once the database takes writes",
                    file.display());
                Claimed::Held(Held::File(Box::new(claim)))
            }
            Ok(None) => Claimed::Taken,
            Err(spill) => {
                tracing::error!(%schedule, %slot,
                    "NOT SENT: the database refused the claim of this slot ({error:#}) and the unrecorded-sends file did too ({spill}); a send that leaves no record would be taken for missed and sent again by the next start. It is recorded as missed once the database takes writes");
                let finish = Finish {
                    errmsg: Some(format!(
                        "not sent: its claim could not be recorded (database: {error:#}; unrecorded-sends file: {spill})"
                    )),
                    ..Finish::new(Status::Missed, 0)
                };
                // Under the claim's key: should the claim's line have reached the file after
                // all (a failed sync), this one supersedes it there.
                let mut not_sent = claim.finished(finish.clone());
                not_sent.row.status = Status::Missed;
                self.keep_unwritten(not_sent, error).await;
                Claimed::Nowhere(finish)
            }
        }
    }

    /// Writes the outcome into the claimed row `id`, or keeps it until the database takes it.
    async fn record(
        &self,
        id: i64,
        new: NewSend,
        claimed_at: DateTime<Utc>,
        finish: &Finish,
    ) -> i64 {
        let recorded = self.store.finish(id, finish.clone()).await;
        self.track(Some(id), false);
        if let Err(e) = recorded {
            let pid = Some(i64::from(std::process::id()));
            let send = Unrecorded::outcome_of(id, new, claimed_at, pid, finish.clone());
            self.keep_unwritten(send, &e).await;
        }
        id
    }

    /// Writes a send whose claim is in the unrecorded-sends file; returns its row's id.
    async fn record_spilled(&self, claim: Unrecorded, finish: &Finish) -> Option<i64> {
        let send = claim.finished(finish.clone());
        match self.store.record_unrecorded(send.clone()).await {
            Ok(Recorded::Written(id) | Recorded::Claimed(id)) => Some(id),
            Ok(Recorded::Kept(id)) => {
                tracing::warn!(id, schedule = %send.row.schedule, slot = %crate::time::to_db(send.row.scheduled_at),
                    "another process recorded this slot meanwhile; keeping its row");
                None
            }
            Err(e) => {
                self.keep_unwritten(send, &e).await;
                None
            }
        }
    }

    fn finished(
        &self,
        schedule: &str,
        slot: DateTime<Utc>,
        id: Option<i64>,
        payload: String,
        finish: Finish,
    ) -> SendOutcome {
        self.metrics.count_send(schedule, finish.status);
        let outcome = SendOutcome {
            id,
            payload,
            finish,
        };
        log_outcome(schedule, slot, &outcome);
        outcome
    }
}

/// The row of `schedule`'s `slot`, with the body rendered for that slot by `channel`. Without a
/// channel (its app is gone from the config), the body is the application's with agent id 0, as
/// a record of what the slot would have said.
pub fn row_for_slot(
    schedule: &Schedule,
    channel: Option<&Channel>,
    slot: DateTime<Utc>,
    trigger: Trigger,
    status: Status,
) -> NewSend {
    let content = schedule.content_at(slot);
    let (app, agent_id, robot, payload) = match channel {
        Some(channel @ Channel::Robot(robot)) => (
            String::new(),
            0,
            Some(robot.name.clone()),
            channel.body(schedule, &content),
        ),
        Some(channel) => (
            channel.name().to_string(),
            channel.agent_id(),
            None,
            channel.body(schedule, &content),
        ),
        None => (
            schedule.app().to_string(),
            0,
            schedule.robot().map(str::to_string),
            crate::channel::app::body(0, schedule, &content),
        ),
    };
    NewSend {
        schedule: schedule.name.to_string(),
        trigger,
        scheduled_at: slot,
        app,
        agent_id,
        robot,
        msgtype: content.msgtype().to_string(),
        payload,
        status,
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
