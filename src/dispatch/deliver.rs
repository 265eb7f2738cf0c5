//! Sending one body until WeCom accepts it, fails for good, or the retry budget is spent.

use std::time::Duration;

use tokio::time::Instant;

use super::Dispatcher;
use crate::channel::Channel;
use crate::gate::AppGate;
use crate::store::history::{Finish, Status};
use crate::wecom::client::{AccessToken, Reply, TokenError, Transport};
use crate::wecom::error::{ErrorClass, classify, describe};

/// One attempt's result, before the policy decides what to do about it.
enum Attempt {
    /// WeCom's answer, and the token the request carried (none for a robot).
    Answer(Reply, Option<AccessToken>),
    Token(TokenError),
    Transport(Transport),
}

/// One body to deliver, and what is known of attempts made before this call.
pub struct Delivery<'a> {
    /// The row to count attempts in (none when it could not be written).
    pub id: Option<i64>,
    pub channel: &'a Channel,
    pub payload: &'a str,
    /// The channel's duplicate-check window for this body (see [`Channel::duplicate_check`]).
    pub duplicate_check: Option<Duration>,
    /// Attempts already counted in the row (a resumed row).
    pub previous_attempts: u32,
    /// The first attempt of this call is counted in the row already (by its claim): it is not
    /// written again, unless a wait comes first (the count is then taken back for the wait).
    pub first_counted: bool,
    /// Since when an earlier attempt may already have reached WeCom (a resumed row: since the
    /// row was written). Resends stay inside the duplicate-check window that starts there.
    pub maybe_delivered_since: Option<Instant>,
}

impl Dispatcher {
    /// Sends the body until it is accepted, fails for good, or the retry budget is spent.
    pub async fn deliver(&self, delivery: Delivery<'_>) -> Finish {
        let Delivery {
            id,
            channel,
            payload,
            duplicate_check,
            previous_attempts,
            mut first_counted,
            maybe_delivered_since,
        } = delivery;
        let started = Instant::now();
        let window = self.policy.ambiguous_window(duplicate_check);
        // Without a duplicate check (a group robot), what may have arrived is never resent.
        let at_most_once = duplicate_check.is_none();
        let gate = self.gate(channel);
        let mut first_ambiguous = maybe_delivered_since;
        let mut refreshed_token = false;
        let mut attempts = previous_attempts;
        let mut last_failure: Option<Finish> = None;
        loop {
            if !first_counted {
                gate.wait().await;
            } else if gate.is_paused() {
                // The attempt counted ahead is not made before the pause ends. (A pause that
                // begins after this look is met as one beginning right after a wait.)
                first_counted = false;
                self.uncount(id).await;
                gate.wait().await;
            }
            // Checked again after every wait (the back-off, another send's pause): a resend
            // after the duplicate-check window could deliver the message twice.
            let reason = self.give_up(
                attempts - previous_attempts,
                started,
                first_ambiguous,
                window,
                Duration::ZERO,
            );
            if let Some(reason) =
                reason.filter(|_| last_failure.is_some() || first_ambiguous.is_some())
            {
                tracing::warn!(id, attempts, "giving up: {reason}");
                let failure = last_failure.unwrap_or_else(|| {
                    Finish::local_error(attempts, format!("not resent: {reason}"))
                });
                return unknown_outcome(at_most_once, first_ambiguous, failure);
            }
            attempts += 1;
            if let Some(id) = id.filter(|_| !std::mem::take(&mut first_counted))
                && let Err(e) = self.store.set_attempts(id, attempts).await
            {
                tracing::warn!(id, error = %format!("{e:#}"), "could not count an attempt in the history");
            }
            if let Some(id) = id
                && !self.store.lease_holds(started.into_std())
            {
                // Another daemon on the database may have taken the row over by now, and
                // resolves it; a further attempt of this one would race that daemon. Checked
                // after the count was written, which may have waited for the database for
                // longer than the lease (the attempt counted is not made).
                let lease = self.store.owner().lease.num_seconds();
                let reason = format!(
                    "not sent again: this send's claim (a lease of {lease} s) could not be renewed, the database did not take it, so another daemon may have taken the send over"
                );
                attempts -= 1;
                tracing::error!(id, attempts, "giving up: {reason}");
                return Finish {
                    errmsg: Some(match &last_failure {
                        Some(failure) => {
                            format!("{reason}; the last attempt: {}", failure_reason(failure))
                        }
                        None => reason,
                    }),
                    ..Finish::new(Status::Interrupted, attempts)
                };
            }
            // A request that times out may have reached WeCom as soon as it was sent.
            let attempt_started = Instant::now();
            let attempt = self.attempt(channel, payload).await;
            let (delay, failure) = match attempt {
                Attempt::Answer(reply, token) => match (classify(reply.errcode), token) {
                    (ErrorClass::Ok, _) => return Finish::from_reply(attempts, reply),
                    (ErrorClass::RefreshToken, Some(token))
                        if !refreshed_token && let Channel::App(app) = channel =>
                    {
                        // WeCom may invalidate a token early; fetch a new one and retry once,
                        // with a URL built afresh around the new token.
                        refreshed_token = true;
                        self.tokens.invalidate(app, &token).await;
                        last_failure = Some(Finish::from_reply(attempts, reply));
                        continue;
                    }
                    (class, _) => {
                        let failure = Finish::from_reply(attempts, reply);
                        match self.retry_delay(class, attempts, &gate) {
                            Some(delay) => (delay, failure),
                            None => return failure,
                        }
                    }
                },
                Attempt::Token(TokenError::WeCom { errcode, errmsg }) => {
                    let failure = Finish::wecom_error(attempts, errcode, errmsg);
                    match self.retry_delay(classify(errcode), attempts, &gate) {
                        Some(delay) => (delay, failure),
                        None => return failure,
                    }
                }
                Attempt::Token(TokenError::NoSecret(field)) => {
                    return Finish::local_error(
                        attempts,
                        format!("the app's secret ({field}) is not available"),
                    );
                }
                Attempt::Token(TokenError::Transport(transport)) if transport.permanent => {
                    return Finish::local_error(attempts, format!("gettoken: {transport}"));
                }
                Attempt::Token(failure) => (
                    self.policy.backoff(attempts),
                    Finish::local_error(attempts, failure.to_string()),
                ),
                // A redirect or a 4xx answers the same to every retry.
                Attempt::Transport(transport) if transport.permanent => {
                    return Finish::local_error(attempts, transport.detail);
                }
                Attempt::Transport(transport) => {
                    if transport.maybe_delivered {
                        first_ambiguous.get_or_insert(attempt_started);
                    }
                    (
                        self.policy.backoff(attempts),
                        Finish::local_error(attempts, transport.detail),
                    )
                }
            };
            if let Some(reason) = self.give_up(
                attempts - previous_attempts,
                started,
                first_ambiguous,
                window,
                delay,
            ) {
                tracing::warn!(id, attempts, "giving up: {reason}");
                return unknown_outcome(at_most_once, first_ambiguous, failure);
            }
            tracing::info!(id, attempts, delay_ms = delay.as_millis() as u64, reason = %failure_reason(&failure), "send failed, retrying");
            tokio::time::sleep(delay).await;
            last_failure = Some(failure);
        }
    }

    /// Takes back the first attempt a claim counted ahead (it waits instead): a stop during
    /// the wait then says truly that it never left.
    pub(super) async fn uncount(&self, id: Option<i64>) {
        if let Some(id) = id
            && let Err(e) = self.store.set_attempts(id, 0).await
        {
            tracing::warn!(id, error = %format!("{e:#}"), "could not take back the attempt counted ahead in the history (the send waits before it is made)");
        }
    }

    /// How long to wait before retrying after WeCom answered with an errcode of `class`, or
    /// `None` when a retry cannot help. A frequency limit (45009) pauses the whole app.
    fn retry_delay(&self, class: ErrorClass, attempts: u32, gate: &AppGate) -> Option<Duration> {
        match class {
            ErrorClass::Busy => Some(self.policy.backoff(attempts)),
            ErrorClass::RateLimited => {
                let pause = self.policy.rate_limit_backoff();
                gate.pause(pause);
                Some(pause)
            }
            ErrorClass::Ok | ErrorClass::RefreshToken | ErrorClass::Permanent => None,
        }
    }

    /// Why no further attempt may start `delay` from now, if so.
    fn give_up(
        &self,
        attempts: u32,
        started: Instant,
        first_ambiguous: Option<Instant>,
        window: Duration,
        delay: Duration,
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
            && first.elapsed() + delay >= window
        {
            return Some(if window.is_zero() {
                "an earlier attempt may have arrived, and without a duplicate check a resend could deliver it twice".to_string()
            } else {
                "an earlier attempt may have arrived, and a resend after the duplicate-check interval could deliver it twice".to_string()
            });
        }
        None
    }

    async fn attempt(&self, channel: &Channel, payload: &str) -> Attempt {
        let app = match channel {
            Channel::App(app) => app,
            Channel::Robot(robot) => {
                return match self.client.robot_send(robot, payload).await {
                    Ok(reply) => Attempt::Answer(reply, None),
                    Err(transport) => Attempt::Transport(transport),
                };
            }
        };
        let token = match self.tokens.get(app).await {
            Ok(token) => token,
            Err(failure) => return Attempt::Token(failure),
        };
        match self.client.send(app, &token, payload).await {
            Ok(reply) => Attempt::Answer(reply, Some(token)),
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
        let nonempty = |list: Option<String>| list.filter(|l| !l.is_empty());
        let mut finish = Finish {
            status: Status::Failed,
            attempts,
            errcode: Some(reply.errcode),
            errmsg: Some(reply.errmsg),
            msgid: nonempty(reply.msgid),
            invaliduser: nonempty(reply.invaliduser),
            invalidparty: nonempty(reply.invalidparty),
            invalidtag: nonempty(reply.invalidtag),
            unlicenseduser: nonempty(reply.unlicenseduser),
        };
        if reply.errcode == 0 {
            // Accepted, but WeCom named recipients it could not reach.
            let rejected = finish.invaliduser.is_some()
                || finish.invalidparty.is_some()
                || finish.invalidtag.is_some()
                || finish.unlicenseduser.is_some();
            finish.status = if rejected {
                Status::Partial
            } else {
                Status::Sent
            };
        }
        finish
    }

    pub(super) fn wecom_error(attempts: u32, errcode: i64, errmsg: String) -> Finish {
        Finish {
            errcode: Some(errcode),
            errmsg: Some(errmsg),
            ..Finish::new(Status::Failed, attempts)
        }
    }

    pub(super) fn local_error(attempts: u32, detail: String) -> Finish {
        Finish {
            errmsg: Some(detail),
            ..Finish::new(Status::Failed, attempts)
        }
    }
}

/// The end of a send given up on: when it may have arrived and the channel has no duplicate
/// check, its outcome is unknown, and the row says so (`interrupted`, with the reason).
fn unknown_outcome(
    at_most_once: bool,
    first_ambiguous: Option<Instant>,
    failure: Finish,
) -> Finish {
    if !(at_most_once && first_ambiguous.is_some()) {
        return failure;
    }
    Finish {
        status: Status::Interrupted,
        errmsg: Some(format!(
            "not resent: {}. A group robot has no duplicate check, so a resend could post it twice; it may or may not have arrived: look in the group chat",
            failure_reason(&failure)
        )),
        ..failure
    }
}

fn failure_reason(finish: &Finish) -> String {
    match finish.errcode {
        Some(errcode) => describe(errcode, finish.errmsg.as_deref().unwrap_or("")),
        None => finish.errmsg.clone().unwrap_or_default(),
    }
}
