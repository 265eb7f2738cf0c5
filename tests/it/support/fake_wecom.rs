//! Owns the fake WeCom server of the tests and benchmarks: a strict `gettoken`, `message/send`
//! (text, textcard, markdown, news, template_card), `message/recall` and group robot
//! `webhook/send` on 127.0.0.1:0, with scripted replies, chaos, holds and real drops.
//!
//! Design notes:
//! - The server is `axum::serve` over a custom [`Listener`] whose connections carry a kill switch
//!   (handed to handlers through `ConnectInfo`). `Reply::Drop` flips it: every later read/write on
//!   that socket fails, hyper abandons the connection and the socket is closed with `SO_LINGER=0`
//!   (RST) before a single response byte is written. The client sees a genuine connection error,
//!   with no panic, no new crate and no hand-written HTTP parser.
//! - A `message/send` is processed in a detached task, so a client that times out does not
//!   cancel the server-side work: as with the real server, a request that arrived may be delivered
//!   although its answer is never read (this is what makes duplicate-check retries observable).
//! - `send_calls` counts arrivals immediately; the request enters `all_requests` once its outcome
//!   is known (after any hold is released).
//! - Every request of any endpoint counts as in flight from its arrival until its answer is
//!   ready (`max_in_flight` keeps the most seen at once), and every accepted TCP connection is
//!   counted (`connections`): the two figures a concurrency limit like WeCom's 45033 looks at.
//! - Group robots (`webhook/send?key=`) are a second, separate record: `robot_requests`,
//!   `robot_messages` and `robot_calls` are robot-only, and `messages`, `all_requests` and
//!   `send_calls` stay application-only. What the two share: `hold_sends` holds both (and
//!   `sends_waiting` counts both), `set_chaos` applies to both, the in-flight and connection
//!   counts cover both. Robot scripted replies have their own queue (`script_robot`).
//! - A robot has no duplicate check and no msgid: every accepted body is delivered, even an
//!   identical repeat (`Outcome::Delivered` with an empty `msgid`). It takes `robot_limit`
//!   messages (default 20) per rolling `robot_window` (default 60 s, measured on the monotonic
//!   clock, so no test depends on the date); only accepted messages count toward the limit, and
//!   the next one is refused with 45009 until the oldest leaves the window.
//! - The robot key is never written into an errmsg (WeCom's own 93000 does not echo it), so a
//!   client that logs errmsg cannot leak the key because of the fake.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// One `message/send` POST as the fake saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: SystemTime,
    pub access_token: String,
    /// Of the token used; empty / 0 when the token is unknown.
    pub corp_id: String,
    pub agent_id: i64,
    /// The body exactly as received (lossy UTF-8).
    pub raw: String,
    /// The parsed body, `Null` if it did not parse.
    pub json: Value,
    pub outcome: Outcome,
}

/// One `webhook/send` POST (group robot) as the fake saw it.
#[derive(Debug, Clone)]
pub struct RobotReceived {
    pub at: SystemTime,
    /// The `key` query parameter, empty when missing (known or not: see `outcome`).
    pub key: String,
    /// The body exactly as received (lossy UTF-8).
    pub raw: String,
    /// The parsed body, `Null` if it did not parse.
    pub json: Value,
    /// Never `Duplicate`; `Delivered` has an empty `msgid` (robots have none).
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// For a robot message, `msgid` is empty: WeCom gives robots none.
    Delivered {
        msgid: String,
    },
    /// Answered errcode 0 but dropped by WeCom's duplicate check.
    Duplicate,
    Rejected {
        errcode: i64,
        reason: String,
    },
    /// Answered by `script_send` / `script_robot` or by a chaos fault; not delivered.
    Scripted,
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// HTTP 200 `{"errcode":N,"errmsg":"<realistic text>"}`.
    Errcode(i64),
    /// HTTP 200 with this exact JSON.
    Json(Value),
    /// That status with that raw body.
    Http(u16, String),
    /// That status (a 3xx) with this `Location`, as a proxy or a login page would answer.
    Redirect(u16, String),
    /// HTTP 200, `application/json`, this raw body.
    Raw(String),
    /// HTTP 200, a streamed body of that many bytes (spaces, then `{}`).
    Huge(usize),
    /// Close the connection without answering (RST, no response byte).
    Drop,
    Delay(Duration, Box<Reply>),
}

/// Random faults on `message/send` and robot `webhook/send`, each a fraction in 0..=1 of all
/// sends (a scripted reply, when queued, goes first).
#[derive(Debug, Clone, Copy, Default)]
pub struct Chaos {
    /// errcode -1 "system busy".
    pub busy_fraction: f64,
    pub drop_fraction: f64,
    /// HTTP 502 with an HTML body.
    pub bad_gateway_fraction: f64,
    /// Delivered (or dropped as a duplicate) normally, but the answer is lost: the
    /// connection drops. The client cannot tell this from a request that never arrived.
    pub lost_answer_fraction: f64,
}

/// While alive, `message/send` and robot `webhook/send` requests wait after arriving. Drop or
/// `release` to let them go.
pub struct Hold {
    shared: Arc<Shared>,
}

impl Hold {
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.shared.holds.send_modify(|n| *n -= 1);
    }
}

pub struct FakeWeCom {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Number of live `Hold`s.
    holds: watch::Sender<usize>,
    /// Requests (any endpoint) between arrival and answer, and the most seen at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
}

/// Counts one request as in flight for as long as it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct App {
    corp_id: String,
    secret: String,
    agent_id: i64,
}

#[derive(PartialEq)]
enum TokenState {
    Live,
    Expired,
    Invalid,
}

struct Token {
    corp_id: String,
    agent_id: i64,
    expires_at: Instant,
    state: TokenState,
}

#[derive(Default)]
struct Inner {
    apps: Vec<App>,
    tokens: HashMap<String, Token>,
    ttl: i64,
    gettoken_calls: Vec<(String, String)>,
    send_calls: usize,
    requests: Vec<Received>,
    send_script: VecDeque<Reply>,
    gettoken_script: VecDeque<Reply>,
    chaos: Chaos,
    send_delay: Duration,
    gettoken_delay: Duration,
    unknown_users: HashSet<String>,
    unknown_parties: HashSet<String>,
    unknown_tags: HashSet<String>,
    /// Delivered msgids not recalled yet.
    recallable: HashSet<String>,
    recalls: Vec<String>,
    /// Every `message/recall` that arrived, answered ok or not.
    recall_arrivals: usize,
    recall_script: VecDeque<Reply>,
    recall_delay: Duration,
    /// (corp_id, agent_id, json_hash) → indexes of delivered entries of `requests`.
    delivered_index: HashMap<(String, i64, u64), Vec<usize>>,
    /// Held `message/send` requests.
    waiting: usize,
    /// Registered robot keys.
    robots: HashSet<String>,
    /// Every `webhook/send` that arrived, counted at arrival.
    robot_calls: usize,
    robot_requests: Vec<RobotReceived>,
    robot_script: VecDeque<Reply>,
    robot_delay: Duration,
    /// Rolling rate limit: at most `robot_limit` accepted messages per `robot_window`.
    robot_window: Duration,
    robot_limit: usize,
    /// Per key, when each message still inside the window was accepted.
    robot_accepted: HashMap<String, VecDeque<Instant>>,
    robot_refusals_45009: usize,
    /// Held `webhook/send` requests.
    robot_waiting: usize,
}

/// Which kind of send a held request is, for the waiting counts.
#[derive(Clone, Copy)]
enum Side {
    App,
    Robot,
}

impl Inner {
    fn waiting_mut(&mut self, side: Side) -> &mut usize {
        match side {
            Side::App => &mut self.waiting,
            Side::Robot => &mut self.robot_waiting,
        }
    }
}

/// (errcode, precise reason)
type Rej = (i64, String);

/// A JSON object of a request body.
type Obj = Map<String, Value>;

impl FakeWeCom {
    /// Binds 127.0.0.1:0 and serves on the caller's tokio runtime.
    pub async fn start() -> FakeWeCom {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake WeCom: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake WeCom: local_addr");
        let inner = Inner {
            ttl: 7200,
            robot_window: Duration::from_secs(60),
            robot_limit: 20,
            ..Inner::default()
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            holds: watch::Sender::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: connections.clone(),
        });
        let app = Router::new()
            .route("/cgi-bin/gettoken", get(gettoken))
            .route("/cgi-bin/message/send", post(send))
            .route("/cgi-bin/message/recall", post(recall))
            .route("/cgi-bin/webhook/send", post(robot_send))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = axum::serve(
            KillListener {
                listener,
                connections,
            },
            app.into_make_service_with_connect_info::<Conn>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        });
        tokio::spawn(async move {
            let _ = server.await;
        });
        FakeWeCom {
            shared,
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_app(&self, corp_id: &str, secret: &str, agent_id: i64) {
        self.shared.lock().apps.push(App {
            corp_id: corp_id.to_owned(),
            secret: secret.to_owned(),
            agent_id,
        });
    }

    pub fn gettoken_calls(&self) -> usize {
        self.shared.lock().gettoken_calls.len()
    }

    pub fn gettoken_calls_for(&self, corp_id: &str, secret: &str) -> usize {
        let inner = self.shared.lock();
        let calls = inner.gettoken_calls.iter();
        calls.filter(|(c, s)| c == corp_id && s == secret).count()
    }

    pub fn send_calls(&self) -> usize {
        self.shared.lock().send_calls
    }

    /// The most requests (every endpoint, robots included) that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Received> {
        let inner = self.shared.lock();
        let delivered = inner.requests.iter();
        delivered
            .filter(|r| matches!(r.outcome, Outcome::Delivered { .. }))
            .cloned()
            .collect()
    }

    pub fn all_requests(&self) -> Vec<Received> {
        self.shared.lock().requests.clone()
    }

    pub fn expire_all_tokens(&self) {
        for t in self.shared.lock().tokens.values_mut() {
            t.state = TokenState::Expired;
        }
    }

    pub fn invalidate_all_tokens(&self) {
        for t in self.shared.lock().tokens.values_mut() {
            t.state = TokenState::Invalid;
        }
    }

    /// `expires_in` of future tokens; they really expire after it (≤ 0: at once).
    pub fn set_token_ttl(&self, secs: i64) {
        self.shared.lock().ttl = secs;
    }

    pub fn script_send(&self, r: Reply) {
        self.shared.lock().send_script.push_back(r);
    }

    pub fn script_gettoken(&self, r: Reply) {
        self.shared.lock().gettoken_script.push_back(r);
    }

    pub fn set_chaos(&self, chaos: Chaos) {
        self.shared.lock().chaos = chaos;
    }

    /// Every gettoken answer is delayed by `d` (the token is issued when the call arrives).
    pub fn set_gettoken_delay(&self, d: Duration) {
        self.shared.lock().gettoken_delay = d;
    }

    pub fn set_send_delay(&self, d: Duration) {
        self.shared.lock().send_delay = d;
    }

    /// Holds `message/send` and robot `webhook/send` requests until the `Hold` goes.
    pub fn hold_sends(&self) -> Hold {
        self.shared.holds.send_modify(|n| *n += 1);
        Hold {
            shared: self.shared.clone(),
        }
    }

    /// Held requests right now, application and robot sends together.
    pub fn sends_waiting(&self) -> usize {
        let inner = self.shared.lock();
        inner.waiting + inner.robot_waiting
    }

    /// Held robot `webhook/send` requests right now.
    pub fn robot_sends_waiting(&self) -> usize {
        self.shared.lock().robot_waiting
    }

    /// Polls every 10 ms until `messages().len() >= n` and returns `messages()`; fails the
    /// test after `timeout`.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} message(s) delivered within {timeout:?}, expected {n}",
                    messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `message/recall` requests that arrived, whatever their answer.
    pub fn recall_arrivals(&self) -> usize {
        self.shared.lock().recall_arrivals
    }

    /// The next `message/recall` is answered with `r` (nothing is recalled).
    pub fn script_recall(&self, r: Reply) {
        self.shared.lock().recall_script.push_back(r);
    }

    /// Every `message/recall` waits `d` after arriving, before it is processed.
    pub fn set_recall_delay(&self, d: Duration) {
        self.shared.lock().recall_delay = d;
    }

    /// Msgids successfully recalled, in order.
    pub fn recall_calls(&self) -> Vec<String> {
        self.shared.lock().recalls.clone()
    }

    /// These user ids (case-insensitive) are unknown: listed in `invaliduser`, or 81013 if alone.
    pub fn set_unknown_users(&self, users: &[&str]) {
        self.shared.lock().unknown_users = users.iter().map(|u| u.to_lowercase()).collect();
    }

    pub fn set_unknown_parties(&self, parties: &[&str]) {
        self.shared.lock().unknown_parties = parties.iter().map(|p| p.to_string()).collect();
    }

    pub fn set_unknown_tags(&self, tags: &[&str]) {
        self.shared.lock().unknown_tags = tags.iter().map(|t| t.to_string()).collect();
    }

    // ------------------------------------------------------------ group robots

    /// Registers a group robot: `webhook/send?key=KEY` now answers for it (any other key: 93000).
    pub fn add_robot(&self, key: &str) {
        self.shared.lock().robots.insert(key.to_owned());
    }

    /// Robot `webhook/send` requests that arrived, counted at once (before any hold).
    pub fn robot_calls(&self) -> usize {
        self.shared.lock().robot_calls
    }

    /// Every robot request whose outcome is known, in order, whatever the outcome.
    pub fn robot_requests(&self) -> Vec<RobotReceived> {
        self.shared.lock().robot_requests.clone()
    }

    /// Robot messages delivered into their group, in order.
    pub fn robot_messages(&self) -> Vec<RobotReceived> {
        let inner = self.shared.lock();
        let delivered = inner.robot_requests.iter();
        delivered
            .filter(|r| matches!(r.outcome, Outcome::Delivered { .. }))
            .cloned()
            .collect()
    }

    /// The next robot `webhook/send` is answered with `r` (nothing is delivered, nothing counts
    /// toward the rate limit).
    pub fn script_robot(&self, r: Reply) {
        self.shared.lock().robot_script.push_back(r);
    }

    /// Every robot answer is delayed by `d` after it is decided.
    pub fn set_robot_delay(&self, d: Duration) {
        self.shared.lock().robot_delay = d;
    }

    /// The rolling window of the robot rate limit (default 60 s).
    pub fn set_robot_window(&self, window: Duration) {
        self.shared.lock().robot_window = window;
    }

    /// Accepted messages per robot per window (default 20); the next is refused with 45009.
    pub fn set_robot_limit(&self, limit: usize) {
        self.shared.lock().robot_limit = limit;
    }

    /// Robot messages refused with 45009 by the rate limit (scripted 45009s are not counted).
    pub fn robot_refusals_45009(&self) -> usize {
        self.shared.lock().robot_refusals_45009
    }

    /// Polls every 10 ms until `robot_messages().len() >= n` and returns `robot_messages()`;
    /// fails the test after `timeout`.
    pub async fn wait_for_robot_messages(&self, n: usize, timeout: Duration) -> Vec<RobotReceived> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.robot_messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} robot message(s) delivered within {timeout:?}, expected {n}",
                    messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeWeCom {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------- handlers

type Params = Query<HashMap<String, String>>;

async fn gettoken(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let reply = {
        let mut inner = shared.lock();
        let corp_id = q.get("corpid").cloned().unwrap_or_default();
        let secret = q.get("corpsecret").cloned().unwrap_or_default();
        inner.gettoken_calls.push((corp_id.clone(), secret.clone()));
        let reply = match inner.gettoken_script.pop_front() {
            Some(r) => r,
            None => Reply::Json(match inner.issue_token(&corp_id, &secret) {
                Ok(v) => v,
                Err((code, reason)) => err_json(code, &reason),
            }),
        };
        match inner.gettoken_delay {
            d if d.is_zero() => reply,
            d => Reply::Delay(d, Box::new(reply)),
        }
    };
    render(reply, &conn).await
}

async fn send(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let in_flight = InFlight::enter(&shared);
    let scripted = {
        let mut inner = shared.lock();
        inner.send_calls += 1;
        inner.send_script.pop_front()
    };
    // Detached: see the module notes.
    let task = tokio::spawn(async move {
        wait_while_held(&shared, Side::App).await;
        let mut inner = shared.lock();
        let token = q.get("access_token").cloned().unwrap_or_default();
        let (corp_id, agent_id) = match inner.tokens.get(&token) {
            Some(t) => (t.corp_id.clone(), t.agent_id),
            None => (String::new(), 0),
        };
        let mut rec = Received {
            at,
            access_token: token,
            corp_id,
            agent_id,
            raw: String::from_utf8_lossy(&body).into_owned(),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            outcome: Outcome::Scripted,
        };
        let lose_answer = rand::rng().random::<f64>() < inner.chaos.lost_answer_fraction;
        let reply = match scripted.or_else(|| inner.chaos_fault()) {
            Some(r) => r,
            None => Reply::Json(match inner.try_send(&rec, &headers) {
                Ok((outcome, v)) => {
                    rec.outcome = outcome;
                    v
                }
                Err((errcode, reason)) => {
                    let v = err_json(errcode, &reason);
                    rec.outcome = Outcome::Rejected { errcode, reason };
                    v
                }
            }),
        };
        let reply = match reply {
            Reply::Json(_) if lose_answer => Reply::Drop,
            other => other,
        };
        inner.record(rec);
        (reply, inner.send_delay)
    });
    let (reply, delay) = match task.await {
        Ok(done) => done,
        Err(e) => (
            Reply::Http(500, format!("fake WeCom task failed: {e}")),
            Duration::ZERO,
        ),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await; // even a zero sleep costs a 1 ms timer tick
    }
    let response = render(reply, &conn).await;
    drop(in_flight);
    response
}

async fn recall(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&shared);
    let delay = {
        let mut inner = shared.lock();
        inner.recall_arrivals += 1;
        inner.recall_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = {
        let mut inner = shared.lock();
        match inner.recall_script.pop_front() {
            Some(scripted) => scripted,
            None => Reply::Json(
                match inner.try_recall(q.get("access_token"), &headers, &body) {
                    Ok(()) => json!({"errcode": 0, "errmsg": "ok"}),
                    Err((code, reason)) => err_json(code, &reason),
                },
            ),
        }
    };
    render(reply, &conn).await
}

/// Robot `webhook/send`: the same detached processing, holds, scripts, chaos and in-flight
/// count as `message/send`, with its own record (see the module notes).
async fn robot_send(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = SystemTime::now();
    let in_flight = InFlight::enter(&shared);
    let scripted = {
        let mut inner = shared.lock();
        inner.robot_calls += 1;
        inner.robot_script.pop_front()
    };
    // Detached: see the module notes.
    let task = tokio::spawn(async move {
        wait_while_held(&shared, Side::Robot).await;
        let mut inner = shared.lock();
        let mut rec = RobotReceived {
            at,
            key: q.get("key").cloned().unwrap_or_default(),
            raw: String::from_utf8_lossy(&body).into_owned(),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            outcome: Outcome::Scripted,
        };
        let lose_answer = rand::rng().random::<f64>() < inner.chaos.lost_answer_fraction;
        let reply = match scripted.or_else(|| inner.chaos_fault()) {
            Some(r) => r,
            None => Reply::Json(match inner.try_robot_send(&rec, &headers) {
                Ok(()) => {
                    rec.outcome = Outcome::Delivered {
                        msgid: String::new(),
                    };
                    json!({"errcode": 0, "errmsg": "ok"})
                }
                Err((errcode, reason)) => {
                    let v = err_json(errcode, &reason);
                    rec.outcome = Outcome::Rejected { errcode, reason };
                    v
                }
            }),
        };
        let reply = match reply {
            Reply::Json(_) if lose_answer => Reply::Drop,
            other => other,
        };
        inner.robot_requests.push(rec);
        (reply, inner.robot_delay)
    });
    let (reply, delay) = match task.await {
        Ok(done) => done,
        Err(e) => (
            Reply::Http(500, format!("fake WeCom task failed: {e}")),
            Duration::ZERO,
        ),
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = render(reply, &conn).await;
    drop(in_flight);
    response
}

async fn wait_while_held(shared: &Shared, side: Side) {
    struct Waiting<'a>(&'a Shared, Side);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            *self.0.lock().waiting_mut(self.1) -= 1;
        }
    }
    let mut rx = shared.holds.subscribe();
    if *rx.borrow_and_update() == 0 {
        return;
    }
    *shared.lock().waiting_mut(side) += 1;
    let _waiting = Waiting(shared, side);
    let _ = rx.wait_for(|n| *n == 0).await;
}

// ---------------------------------------------------------------- emulation

/// `return Err((errcode, format!(reason...)))`
macro_rules! bail {
    ($code:expr, $($reason:tt)+) => {
        return Err(($code, format!($($reason)+)))
    };
}

/// The top-level keys an application body may have. `safe` is documented for `text` only among
/// the types played here (WeCom's textcard, markdown, news and template_card pages do not list
/// it), so it is refused with any other `msgtype`, as it always was for `textcard`.
const SEND_KEYS: &str = "touser toparty totag msgtype agentid text textcard markdown news \
                         template_card safe enable_id_trans enable_duplicate_check \
                         duplicate_check_interval";

/// The application message types, each also the name of its key.
const APP_TYPES: [&str; 5] = ["text", "textcard", "markdown", "news", "template_card"];

/// The robot message types, each also the name of its key.
const ROBOT_TYPES: [&str; 3] = ["text", "markdown", "news"];

/// Application-envelope fields, which a robot body must not carry.
const APP_ONLY_KEYS: [&str; 8] = [
    "agentid",
    "touser",
    "toparty",
    "totag",
    "safe",
    "enable_id_trans",
    "enable_duplicate_check",
    "duplicate_check_interval",
];

/// The errcodes a side answers for a limit. `message/send` says 45002 (content size out of
/// limit) for a string over its byte limit and 45008 for a news message outside 1..=8 articles;
/// the robot webhook answers every oversized or malformed parameter with 40058 "invalid Request
/// Parameter" (live answers read "markdown.content exceed max length 4096. invalid Request
/// Parameter"), which the design notes name for robot markdown.
#[derive(Clone, Copy)]
struct Limits {
    too_long: i64,
    too_many: i64,
}

const APP_LIMITS: Limits = Limits {
    too_long: 45002,
    too_many: 45008,
};

const ROBOT_LIMITS: Limits = Limits {
    too_long: 40058,
    too_many: 40058,
};

impl Inner {
    fn issue_token(&mut self, corp_id: &str, secret: &str) -> Result<Value, Rej> {
        if corp_id.is_empty() {
            bail!(41002, "corpid missing");
        }
        if secret.is_empty() {
            bail!(41004, "corpsecret missing");
        }
        if !self.apps.iter().any(|a| a.corp_id == corp_id) {
            bail!(40013, "invalid corpid");
        }
        let mut apps = self.apps.iter();
        let Some(app) = apps.find(|a| a.corp_id == corp_id && a.secret == secret) else {
            bail!(40001, "{}", errmsg_base(40001));
        };
        let token = random_string(96);
        let now = Instant::now();
        let ttl = Duration::from_secs(self.ttl.max(0).unsigned_abs());
        let t = Token {
            corp_id: app.corp_id.clone(),
            agent_id: app.agent_id,
            expires_at: now.checked_add(ttl).unwrap_or(now),
            state: TokenState::Live,
        };
        self.tokens.insert(token.clone(), t);
        Ok(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.ttl}))
    }

    /// The token's (corp_id, agent_id), or its errcode. Empty counts as missing.
    fn check_token(&self, token: Option<&String>) -> Result<(String, i64), Rej> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!(41001, "access_token missing");
        };
        let Some(t) = self.tokens.get(token) else {
            bail!(40014, "invalid access_token: never issued");
        };
        if t.state == TokenState::Invalid {
            bail!(40014, "invalid access_token: invalidated by the server");
        }
        if t.state == TokenState::Expired || Instant::now() >= t.expires_at {
            bail!(42001, "access_token expired");
        }
        Ok((t.corp_id.clone(), t.agent_id))
    }

    fn chaos_fault(&self) -> Option<Reply> {
        let c = self.chaos;
        let roll: f64 = rand::rng().random();
        if roll < c.busy_fraction {
            Some(Reply::Errcode(-1))
        } else if roll < c.busy_fraction + c.drop_fraction {
            Some(Reply::Drop)
        } else if roll < c.busy_fraction + c.drop_fraction + c.bad_gateway_fraction {
            let html = "<html><head><title>502 Bad Gateway</title></head></html>";
            Some(Reply::Http(502, html.to_owned()))
        } else {
            None
        }
    }

    fn try_send(&mut self, rec: &Received, headers: &HeaderMap) -> Result<(Outcome, Value), Rej> {
        let (corp_id, agent_id) = self.check_token(Some(&rec.access_token))?;
        let obj = json_object(headers, rec.raw.as_bytes())?;
        validate_message(&obj, agent_id)?;
        let [users, parties, tags] = self.invalid_recipients(&obj)?;
        let msgid = random_string(43);
        let v = json!({
            "errcode": 0, "errmsg": "ok", "invaliduser": users, "invalidparty": parties,
            "invalidtag": tags, "unlicenseduser": "", "msgid": msgid,
        });
        if obj.get("enable_duplicate_check").and_then(Value::as_i64) == Some(1) {
            let secs = obj.get("duplicate_check_interval").and_then(Value::as_u64);
            let interval = Duration::from_secs(secs.unwrap_or(1800));
            let recent = |at: SystemTime| rec.at.duration_since(at).map_or(true, |d| d < interval);
            let key = (corp_id, agent_id, json_hash(&rec.json));
            let same = self.delivered_index.get(&key).into_iter().flatten();
            let duplicate = same
                .map(|&i| &self.requests[i])
                .any(|r| r.json == rec.json && recent(r.at));
            if duplicate {
                return Ok((Outcome::Duplicate, v));
            }
        }
        self.recallable.insert(msgid.clone());
        Ok((Outcome::Delivered { msgid }, v))
    }

    fn record(&mut self, rec: Received) {
        if let Outcome::Delivered { .. } = rec.outcome {
            let key = (rec.corp_id.clone(), rec.agent_id, json_hash(&rec.json));
            let index = self.delivered_index.entry(key).or_default();
            index.push(self.requests.len());
        }
        self.requests.push(rec);
    }

    /// `[invaliduser, invalidparty, invalidtag]`, each `|`-joined ("" when none).
    fn invalid_recipients(&self, obj: &Map<String, Value>) -> Result<[String; 3], Rej> {
        let fields = [
            ("touser", 1000, &self.unknown_users),
            ("toparty", 100, &self.unknown_parties),
            ("totag", 100, &self.unknown_tags),
        ];
        let (mut total, mut all_invalid, mut out) = (0, true, [const { String::new() }; 3]);
        for (i, (key, limit, unknown)) in fields.into_iter().enumerate() {
            let list = match obj.get(key) {
                None => continue,
                Some(Value::String(s)) => s,
                Some(v) => bail!(40058, "invalid parameter: {key} must be a string, got {v}"),
            };
            let ids: Vec<&str> = list.split('|').filter(|id| !id.is_empty()).collect();
            if ids.len() > limit {
                bail!(
                    40058,
                    "invalid parameter: {key} has {} ids, limit {limit}",
                    ids.len()
                );
            }
            // WeCom answers user ids lowercased; "@all" is always valid.
            let norm = |id: &&str| (key == "touser").then(|| id.to_lowercase());
            let invalid: Vec<String> = (ids.iter())
                .map(|id| norm(id).unwrap_or_else(|| id.to_string()))
                .filter(|id| id != "@all" && unknown.contains(id))
                .collect();
            total += ids.len();
            all_invalid &= invalid.len() == ids.len();
            out[i] = invalid.join("|");
        }
        if total == 0 {
            bail!(
                40003,
                "invalid userid: touser, toparty and totag all absent or empty"
            );
        }
        if all_invalid {
            bail!(
                81013,
                "user & party & tag all invalid: no listed recipient exists"
            );
        }
        Ok(out)
    }

    /// A robot `webhook/send`: key, body, then the rolling rate limit (only accepted messages
    /// count, so a refused body does not use up the robot's minute).
    fn try_robot_send(&mut self, rec: &RobotReceived, headers: &HeaderMap) -> Result<(), Rej> {
        // Never name the key in a reason: it would reach the client's errmsg (module notes).
        if rec.key.is_empty() {
            bail!(93000, "invalid webhook url: key missing");
        }
        if !self.robots.contains(&rec.key) {
            bail!(93000, "invalid webhook url: no robot has this key");
        }
        let obj = json_object(headers, rec.raw.as_bytes())?;
        validate_robot(&obj)?;
        let (now, window, limit) = (Instant::now(), self.robot_window, self.robot_limit);
        let accepted = self.robot_accepted.entry(rec.key.clone()).or_default();
        while accepted
            .front()
            .is_some_and(|&t| now.duration_since(t) >= window)
        {
            accepted.pop_front();
        }
        if accepted.len() >= limit {
            self.robot_refusals_45009 += 1;
            bail!(
                45009,
                "api freq out of limit: this robot took {} messages in the last {window:?}, limit {limit}",
                accepted.len()
            );
        }
        accepted.push_back(now);
        Ok(())
    }

    fn try_recall(
        &mut self,
        token: Option<&String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Rej> {
        self.check_token(token)?;
        let obj = json_object(headers, body)?;
        if let Some(key) = obj.keys().find(|k| *k != "msgid") {
            bail!(40058, "invalid parameter: {key}");
        }
        let Some(Value::String(msgid)) = obj.get("msgid") else {
            bail!(40003, "invalid msgid: missing or not a string");
        };
        if !self.recallable.remove(msgid) {
            bail!(40003, "invalid msgid: {msgid} unknown or already recalled");
        }
        self.recalls.push(msgid.clone());
        Ok(())
    }
}

fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Rej> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    let mime = ct.unwrap_or("").split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        bail!(
            47001,
            "data format error: Content-Type {ct:?}, want application/json"
        );
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(v) => bail!(47001, "data format error: body is not a JSON object: {v}"),
        Err(e) => bail!(47001, "data format error: body is not JSON: {e}"),
    }
}

/// Everything but recipients and the duplicate check.
fn validate_message(obj: &Map<String, Value>, agent_id: i64) -> Result<(), Rej> {
    if let Some(key) = obj
        .keys()
        .find(|k| !SEND_KEYS.split_whitespace().any(|a| a == *k))
    {
        bail!(40058, "invalid parameter: {key}");
    }
    match obj.get("agentid") {
        Some(v) if v.as_i64() == Some(agent_id) => {}
        Some(v) if v.is_i64() => bail!(40056, "invalid agentid: {v}, the token is for {agent_id}"),
        Some(v) => bail!(40056, "invalid agentid: must be a JSON integer, got {v}"),
        None => bail!(40056, "invalid agentid: agentid missing"),
    }
    let msgtype = match obj.get("msgtype") {
        Some(Value::String(t)) if APP_TYPES.contains(&t.as_str()) => t.as_str(),
        got => {
            let got = got.map_or("nothing".to_owned(), Value::to_string);
            bail!(
                40008,
                "invalid message type: {got}, want one of {}",
                APP_TYPES.join(", ")
            );
        }
    };
    if let Some(other) = APP_TYPES
        .iter()
        .find(|t| **t != msgtype && obj.contains_key(**t))
    {
        bail!(40058, "invalid parameter: {other} (msgtype is {msgtype})");
    }
    if msgtype != "text" && obj.contains_key("safe") {
        bail!(
            40058,
            "invalid parameter: safe ({msgtype} does not support safe)"
        );
    }
    let body = match obj.get(msgtype) {
        Some(Value::Object(m)) => m,
        Some(v) => bail!(
            40058,
            "invalid parameter: {msgtype} must be an object, got {v}"
        ),
        None => bail!(44004, "empty content: msgtype needs {msgtype:?}"),
    };
    match msgtype {
        "text" => {
            only_keys(body, "text", &["content"])?;
            string_field(body, "text", "content", 2048)?;
        }
        "textcard" => {
            only_keys(body, "textcard", &["title", "description", "url", "btntxt"])?;
            string_field(body, "textcard", "title", 128)?;
            string_field(body, "textcard", "description", 512)?;
            string_field(body, "textcard", "url", 2048)?;
            match body.get("btntxt") {
                None => {}
                Some(Value::String(b)) if b.chars().count() <= 4 => {}
                Some(Value::String(b)) => {
                    let n = b.chars().count();
                    bail!(
                        45002,
                        "content size out of limit: textcard.btntxt has {n} chars, limit 4"
                    );
                }
                Some(v) => bail!(
                    40058,
                    "invalid parameter: textcard.btntxt must be a string: {v}"
                ),
            }
        }
        "markdown" => {
            only_keys(body, "markdown", &["content"])?;
            string_field(body, "markdown", "content", 2048)?;
        }
        "news" => news_articles(body, "news", APP_LIMITS)?,
        _ => template_card(body)?,
    }
    int_field(obj, "safe", 0, 1)?;
    int_field(obj, "enable_id_trans", 0, 1)?;
    int_field(obj, "enable_duplicate_check", 0, 1)?;
    int_field(obj, "duplicate_check_interval", 1, 14400)
}

/// A robot body: `msgtype` and its one type key, nothing else.
///
/// A field a robot does not take is refused with 40058, not 40035 or 40008: 40058 is what the
/// webhook answers for the parameters it does check (see [`Limits`]) and what `message/send`
/// answers for an unknown key; 40008 means a bad `msgtype` value (used for that) and 40035 is
/// not in WeCom's global errcode table. Whatever WeCom does with an extra field, the fake refuses
/// it so that a client that sends an application envelope to a robot is caught, with the field
/// named in the reason.
fn validate_robot(obj: &Map<String, Value>) -> Result<(), Rej> {
    let msgtype = match obj.get("msgtype") {
        Some(Value::String(t)) if ROBOT_TYPES.contains(&t.as_str()) => t.as_str(),
        got => {
            let got = got.map_or("nothing".to_owned(), Value::to_string);
            bail!(
                40008,
                "invalid message type: {got}, a robot takes one of {}",
                ROBOT_TYPES.join(", ")
            );
        }
    };
    if let Some(key) = obj.keys().find(|k| *k != "msgtype" && *k != msgtype) {
        if APP_ONLY_KEYS.contains(&key.as_str()) {
            bail!(
                40058,
                "invalid parameter: {key} is an application message field; a robot body has only msgtype and {msgtype}"
            );
        }
        if APP_TYPES.contains(&key.as_str()) {
            bail!(40058, "invalid parameter: {key} (msgtype is {msgtype})");
        }
        bail!(40058, "invalid parameter: {key}");
    }
    let body = match obj.get(msgtype) {
        Some(Value::Object(m)) => m,
        Some(v) => bail!(
            40058,
            "invalid parameter: {msgtype} must be an object, got {v}"
        ),
        None => bail!(44004, "empty content: msgtype needs {msgtype:?}"),
    };
    let too_long = ROBOT_LIMITS.too_long;
    match msgtype {
        "text" => {
            let keys = ["content", "mentioned_list", "mentioned_mobile_list"];
            only_keys(body, "text", &keys)?;
            limited_string(body, "text", "content", 2048, too_long)?;
            string_list(body, "text", "mentioned_list")?;
            string_list(body, "text", "mentioned_mobile_list")
        }
        "markdown" => {
            only_keys(body, "markdown", &["content"])?;
            limited_string(body, "markdown", "content", 4096, too_long)
        }
        _ => news_articles(body, "news", ROBOT_LIMITS),
    }
}

/// `{"articles": [...]}`, 1..=8 articles of title ≤ 128 bytes, description ≤ 512 bytes
/// (optional), url http(s) ≤ 2048 bytes, picurl http(s) (optional). WeCom's application news
/// also documents mini-program articles (`appid`, `pagepath`); the fake plays URL articles only.
fn news_articles(news: &Map<String, Value>, ctx: &str, limits: Limits) -> Result<(), Rej> {
    only_keys(news, ctx, &["articles"])?;
    let articles = match news.get("articles") {
        Some(Value::Array(a)) => a,
        Some(v) => bail!(
            40058,
            "invalid parameter: {ctx}.articles must be an array, got {v}"
        ),
        None => bail!(44004, "empty content: {ctx}.articles missing"),
    };
    if articles.is_empty() {
        bail!(44004, "empty content: {ctx}.articles is empty");
    }
    if articles.len() > 8 {
        let (code, n) = (limits.too_many, articles.len());
        bail!(
            code,
            "{}: {ctx}.articles has {n} articles, limit 8",
            errmsg_base(code)
        );
    }
    for (i, article) in articles.iter().enumerate() {
        let ctx = format!("{ctx}.articles[{i}]");
        let Value::Object(article) = article else {
            bail!(
                40058,
                "invalid parameter: {ctx} must be an object, got {article}"
            );
        };
        only_keys(article, &ctx, &["title", "description", "url", "picurl"])?;
        limited_string(article, &ctx, "title", 128, limits.too_long)?;
        if let Some(d) = opt_string(article, &ctx, "description")? {
            check_len(&ctx, "description", d, 512, limits.too_long)?;
        }
        url_field(article, &ctx, "url", true, limits.too_long)?;
        url_field(article, &ctx, "picurl", false, limits.too_long)?;
    }
    Ok(())
}

/// `template_card` of `card_type` `text_notice` or `news_notice`: the fields that type documents
/// (any other is refused, also inside each section), the ones it requires, list lengths, jump
/// targets, and `task_id` (required with `action_menu`). WeCom's length figures for card texts
/// are advice ("建议不超过"; it truncates), so the fake does not enforce them. Errors are 40058.
fn template_card(card: &Map<String, Value>) -> Result<(), Rej> {
    const COMMON: [&str; 9] = [
        "card_type",
        "source",
        "action_menu",
        "task_id",
        "main_title",
        "quote_area",
        "horizontal_content_list",
        "jump_list",
        "card_action",
    ];
    let ctx = "template_card";
    let card_type = match opt_string(card, ctx, "card_type")? {
        Some(t) => t,
        None => bail!(40058, "invalid parameter: template_card.card_type missing"),
    };
    let own: &[&str] = match card_type {
        "text_notice" => &["emphasis_content", "sub_title_text"],
        "news_notice" => &["image_text_area", "card_image", "vertical_content_list"],
        other => bail!(
            40058,
            "invalid parameter: template_card.card_type {other:?}, want \"text_notice\" or \"news_notice\""
        ),
    };
    let known = |k: &String| COMMON.contains(&k.as_str()) || own.contains(&k.as_str());
    if let Some(key) = card.keys().find(|k| !known(k)) {
        bail!(
            40058,
            "invalid parameter: template_card.{key} (not a field of {card_type})"
        );
    }
    if let Some(source) = object(card, ctx, "source")? {
        let ctx = "template_card.source";
        only_keys(source, ctx, &["icon_url", "desc", "desc_color"])?;
        url_field(source, ctx, "icon_url", false, 40058)?;
        opt_string(source, ctx, "desc")?;
        opt_int(source, ctx, "desc_color", 0, 3)?;
    }
    let mut title = None;
    if let Some(main) = object(card, ctx, "main_title")? {
        let ctx = "template_card.main_title";
        only_keys(main, ctx, &["title", "desc"])?;
        title = opt_string(main, ctx, "title")?.filter(|t| !t.is_empty());
        opt_string(main, ctx, "desc")?;
    }
    if card_type == "text_notice" {
        let sub = opt_string(card, ctx, "sub_title_text")?.filter(|t| !t.is_empty());
        if title.is_none() && sub.is_none() {
            bail!(
                40058,
                "invalid parameter: text_notice needs template_card.main_title.title or template_card.sub_title_text"
            );
        }
        if let Some(emphasis) = object(card, ctx, "emphasis_content")? {
            let ctx = "template_card.emphasis_content";
            only_keys(emphasis, ctx, &["title", "desc"])?;
            opt_string(emphasis, ctx, "title")?;
            opt_string(emphasis, ctx, "desc")?;
        }
    } else {
        if title.is_none() {
            bail!(
                40058,
                "invalid parameter: news_notice needs template_card.main_title.title"
            );
        }
        let image = object(card, ctx, "card_image")?;
        let area = object(card, ctx, "image_text_area")?;
        if image.is_none() && area.is_none() {
            bail!(
                40058,
                "invalid parameter: news_notice needs template_card.card_image.url or template_card.image_text_area"
            );
        }
        if let Some(image) = image {
            let ctx = "template_card.card_image";
            only_keys(image, ctx, &["url", "aspect_ratio"])?;
            require(image, ctx, "url")?;
            url_field(image, ctx, "url", false, 40058)?;
            match image.get("aspect_ratio") {
                None => {}
                Some(v) if v.as_f64().is_some_and(|r| (1.3..=2.25).contains(&r)) => {}
                Some(v) => bail!(
                    40058,
                    "invalid parameter: {ctx}.aspect_ratio must be a number in 1.3..=2.25: {v}"
                ),
            }
        }
        if let Some(area) = area {
            let ctx = "template_card.image_text_area";
            let keys = [
                "type",
                "url",
                "appid",
                "pagepath",
                "title",
                "desc",
                "image_url",
            ];
            only_keys(area, ctx, &keys)?;
            jump_target(area, ctx, 0, false)?;
            opt_string(area, ctx, "title")?;
            opt_string(area, ctx, "desc")?;
            require(area, ctx, "image_url")?;
            url_field(area, ctx, "image_url", false, 40058)?;
        }
        for (ctx, item) in list(card, ctx, "vertical_content_list", 4)? {
            only_keys(item, &ctx, &["title", "desc"])?;
            card_string(item, &ctx, "title")?;
            opt_string(item, &ctx, "desc")?;
        }
    }
    if let Some(quote) = object(card, ctx, "quote_area")? {
        let ctx = "template_card.quote_area";
        let keys = ["type", "url", "appid", "pagepath", "title", "quote_text"];
        only_keys(quote, ctx, &keys)?;
        jump_target(quote, ctx, 0, false)?;
        opt_string(quote, ctx, "title")?;
        opt_string(quote, ctx, "quote_text")?;
    }
    for (ctx, item) in list(card, ctx, "horizontal_content_list", 6)? {
        let keys = ["type", "keyname", "value", "url", "media_id", "userid"];
        only_keys(item, &ctx, &keys)?;
        card_string(item, &ctx, "keyname")?;
        opt_string(item, &ctx, "value")?;
        let needs = match opt_int(item, &ctx, "type", 0, 3)? {
            Some(1) => Some("url"),
            Some(2) => Some("media_id"),
            Some(3) => Some("userid"),
            _ => None,
        };
        url_field(item, &ctx, "url", false, 40058)?;
        opt_string(item, &ctx, "media_id")?;
        opt_string(item, &ctx, "userid")?;
        if let Some(key) = needs.filter(|k| !item.contains_key(*k)) {
            bail!(
                40058,
                "invalid parameter: {ctx}.{key} missing, its type needs it"
            );
        }
    }
    for (ctx, item) in list(card, ctx, "jump_list", 3)? {
        only_keys(item, &ctx, &["type", "title", "url", "appid", "pagepath"])?;
        card_string(item, &ctx, "title")?;
        jump_target(item, &ctx, 0, false)?;
    }
    let Some(action) = object(card, ctx, "card_action")? else {
        bail!(
            40058,
            "invalid parameter: {card_type} needs template_card.card_action"
        );
    };
    let ctx = "template_card.card_action";
    only_keys(action, ctx, &["type", "url", "appid", "pagepath"])?;
    jump_target(action, ctx, 1, true)?;
    if let Some(menu) = object(card, "template_card", "action_menu")? {
        let ctx = "template_card.action_menu";
        only_keys(menu, ctx, &["desc", "action_list"])?;
        opt_string(menu, ctx, "desc")?;
        let actions = list(menu, ctx, "action_list", 3)?;
        if actions.is_empty() {
            bail!(
                40058,
                "invalid parameter: {ctx}.action_list needs 1..=3 actions"
            );
        }
        for (ctx, action) in actions {
            only_keys(action, &ctx, &["text", "key"])?;
            card_string(action, &ctx, "text")?;
            card_string(action, &ctx, "key")?;
        }
        if !card.contains_key("task_id") {
            bail!(
                40058,
                "invalid parameter: template_card.task_id missing, action_menu needs it"
            );
        }
    }
    if let Some(task_id) = opt_string(card, "template_card", "task_id")? {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-@".contains(c);
        if task_id.is_empty() || task_id.len() > 128 || !task_id.chars().all(allowed) {
            bail!(
                40058,
                "invalid parameter: template_card.task_id must be 1..=128 bytes of letters, digits, _, - and @: {task_id:?}"
            );
        }
    }
    Ok(())
}

/// A required, non-empty string inside a template_card (40058 like every card error).
fn card_string(obj: &Obj, ctx: &str, key: &str) -> Result<(), Rej> {
    match opt_string(obj, ctx, key)? {
        Some("") => bail!(40058, "invalid parameter: {ctx}.{key} is empty"),
        Some(_) => Ok(()),
        None => bail!(40058, "invalid parameter: {ctx}.{key} missing"),
    }
}

/// Inside a template_card a missing field is 40058 like every other card error.
fn require(obj: &Obj, ctx: &str, key: &str) -> Result<(), Rej> {
    match obj.contains_key(key) {
        true => Ok(()),
        false => bail!(40058, "invalid parameter: {ctx}.{key} missing"),
    }
}

/// A click target: `type` (absent = 0 unless `required`) from `min` to 2; 1 needs an http(s)
/// `url`, 2 a mini-program `appid` (`pagepath` optional).
fn jump_target(obj: &Map<String, Value>, ctx: &str, min: i64, required: bool) -> Result<(), Rej> {
    let kind = match opt_int(obj, ctx, "type", min, 2)? {
        Some(kind) => kind,
        None if required => bail!(40058, "invalid parameter: {ctx}.type missing"),
        None => 0,
    };
    if kind == 1 {
        require(obj, ctx, "url")?;
    }
    url_field(obj, ctx, "url", false, 40058)?;
    if kind == 2 {
        card_string(obj, ctx, "appid")?;
    } else {
        opt_string(obj, ctx, "appid")?;
    }
    opt_string(obj, ctx, "pagepath")?;
    Ok(())
}

fn only_keys(obj: &Map<String, Value>, ctx: &str, allowed: &[&str]) -> Result<(), Rej> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => bail!(40058, "invalid parameter: {ctx}.{key}"),
        None => Ok(()),
    }
}

/// A required, non-empty string of at most `max` bytes (over it: 45002, as `message/send` says).
fn string_field(obj: &Map<String, Value>, ctx: &str, key: &str, max: usize) -> Result<(), Rej> {
    limited_string(obj, ctx, key, max, 45002)
}

/// A required, non-empty string of at most `max` bytes; over it, errcode `too_long`.
fn limited_string(
    obj: &Map<String, Value>,
    ctx: &str,
    key: &str,
    max: usize,
    too_long: i64,
) -> Result<(), Rej> {
    match opt_string(obj, ctx, key)? {
        Some("") => bail!(44004, "empty content: {ctx}.{key} is empty"),
        Some(s) => check_len(ctx, key, s, max, too_long),
        None => bail!(44004, "empty content: {ctx}.{key} missing"),
    }
}

fn check_len(ctx: &str, key: &str, s: &str, max: usize, too_long: i64) -> Result<(), Rej> {
    if s.len() > max {
        let (n, what) = (s.len(), errmsg_base(too_long));
        bail!(too_long, "{what}: {ctx}.{key} has {n} bytes, limit {max}");
    }
    Ok(())
}

/// The string at `key`, `None` when absent; anything but a string is refused.
fn opt_string<'a>(
    obj: &'a Map<String, Value>,
    ctx: &str,
    key: &str,
) -> Result<Option<&'a str>, Rej> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!(
            40058,
            "invalid parameter: {ctx}.{key} must be a string, got {v}"
        ),
    }
}

/// An http(s) URL of at most 2048 bytes (over it: `too_long`), required or optional.
fn url_field(
    obj: &Map<String, Value>,
    ctx: &str,
    key: &str,
    required: bool,
    too_long: i64,
) -> Result<(), Rej> {
    let url = match opt_string(obj, ctx, key)? {
        Some(url) => url,
        None if required => bail!(44004, "empty content: {ctx}.{key} missing"),
        None => return Ok(()),
    };
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        bail!(
            40058,
            "invalid parameter: {ctx}.{key} must be an http(s) URL: {url:?}"
        );
    }
    check_len(ctx, key, url, 2048, too_long)
}

/// An optional array of strings (robot `mentioned_list`, `mentioned_mobile_list`).
fn string_list(obj: &Map<String, Value>, ctx: &str, key: &str) -> Result<(), Rej> {
    match obj.get(key) {
        None => Ok(()),
        Some(Value::Array(items)) => match items.iter().find(|v| !v.is_string()) {
            Some(v) => bail!(
                40058,
                "invalid parameter: {ctx}.{key} must hold strings only, got {v}"
            ),
            None => Ok(()),
        },
        Some(v) => bail!(
            40058,
            "invalid parameter: {ctx}.{key} must be an array of strings, got {v}"
        ),
    }
}

/// The object at `key`, `None` when absent.
fn object<'a>(
    obj: &'a Map<String, Value>,
    ctx: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, Rej> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(v) => bail!(
            40058,
            "invalid parameter: {ctx}.{key} must be an object, got {v}"
        ),
    }
}

/// The objects of the array at `key` (at most `max`; absent = none), each with its own context.
fn list<'a>(
    obj: &'a Map<String, Value>,
    ctx: &str,
    key: &str,
    max: usize,
) -> Result<Vec<(String, &'a Obj)>, Rej> {
    let items = match obj.get(key) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => bail!(
            40058,
            "invalid parameter: {ctx}.{key} must be an array, got {v}"
        ),
    };
    if items.len() > max {
        let n = items.len();
        bail!(
            40058,
            "invalid parameter: {ctx}.{key} has {n} items, limit {max}"
        );
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ctx = format!("{ctx}.{key}[{i}]");
        match item {
            Value::Object(m) => out.push((ctx, m)),
            v => bail!(40058, "invalid parameter: {ctx} must be an object, got {v}"),
        }
    }
    Ok(out)
}

/// An optional integer in `lo..=hi`.
fn opt_int(
    obj: &Map<String, Value>,
    ctx: &str,
    key: &str,
    lo: i64,
    hi: i64,
) -> Result<Option<i64>, Rej> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64().filter(|n| (lo..=hi).contains(n)) {
            Some(n) => Ok(Some(n)),
            None => bail!(
                40058,
                "invalid parameter: {ctx}.{key} must be an integer in {lo}..={hi}: {v}"
            ),
        },
    }
}

fn int_field(obj: &Map<String, Value>, key: &str, lo: i64, hi: i64) -> Result<(), Rej> {
    match obj.get(key) {
        None => Ok(()),
        Some(v) if v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)) => Ok(()),
        Some(v) => bail!(
            40058,
            "invalid parameter: {key} must be an integer in {lo}..={hi}: {v}"
        ),
    }
}

fn errmsg_base(code: i64) -> &'static str {
    match code {
        0 => "ok",
        -1 => "system busy",
        40001 => "invalid credential, access_token is invalid or not latest",
        40003 => "invalid userid",
        40008 => "invalid message type",
        40013 => "invalid corpid",
        40014 => "invalid access_token",
        40056 => "invalid agentid",
        40058 => "invalid Request Parameter",
        41001 => "access_token missing",
        42001 => "access_token expired",
        44004 => "empty content",
        45002 => "content size out of limit",
        45008 => "article size out of limit",
        45009 => "api freq out of limit",
        45033 => "api concurrent out of limit",
        47001 => "data format error",
        48002 => "api forbidden",
        60020 => "not allow to access from your ip",
        81013 => "user & party & tag all invalid",
        82001 => "All touser & toparty & totag invalid",
        93000 => "invalid webhook url",
        301002 => "not allow operate another agent with this accesstoken.",
        _ => "unknown error",
    }
}

/// `{"errcode","errmsg"}` with WeCom's hint suffix, so clients cannot get away with matching errmsg.
fn err_json(code: i64, detail: &str) -> Value {
    if code == 0 {
        return json!({"errcode": 0, "errmsg": "ok"});
    }
    let hint = random_string(20);
    let errmsg = format!(
        "{detail}, hint: [{hint}], from ip: 127.0.0.1, more info at https://open.work.weixin.qq.com/devtool/query?e={code}"
    );
    json!({"errcode": code, "errmsg": errmsg})
}

/// Hash consistent with `Value`'s `==` (object key order does not matter), for the duplicate index.
fn json_hash(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    match v {
        Value::Object(m) => {
            let pair = |(k, v): (&String, &Value)| {
                let mut h = DefaultHasher::new();
                (k, json_hash(v)).hash(&mut h);
                h.finish()
            };
            ('o', m.iter().map(pair).fold(0u64, u64::wrapping_add)).hash(&mut h);
        }
        Value::Array(a) => ('a', a.iter().map(json_hash).collect::<Vec<_>>()).hash(&mut h),
        scalar => ('s', scalar.to_string()).hash(&mut h),
    }
    h.finish()
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn json_response(v: &Value) -> Response {
    let ct = [(header::CONTENT_TYPE, "application/json; charset=UTF-8")];
    (ct, v.to_string()).into_response()
}

const CHUNK: usize = 64 * 1024;
static SPACES: [u8; CHUNK] = [b' '; CHUNK];

async fn render(mut reply: Reply, conn: &Conn) -> Response {
    loop {
        return match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
                continue;
            }
            Reply::Errcode(code) => json_response(&err_json(code, errmsg_base(code))),
            Reply::Json(v) => json_response(&v),
            Reply::Http(status, body) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
            }
            Reply::Redirect(status, location) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
                (status, [(header::LOCATION, location)], "").into_response()
            }
            Reply::Raw(body) => {
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Reply::Huge(n) => {
                let spaces = n.saturating_sub(2);
                let tail: &'static [u8] = &b"{}"[..n.min(2)];
                let chunks = (0..spaces.div_ceil(CHUNK))
                    .map(move |k| Bytes::from_static(&SPACES[..CHUNK.min(spaces - k * CHUNK)]))
                    .chain(std::iter::once(Bytes::from_static(tail)))
                    .map(Ok::<_, io::Error>);
                let body = Body::from_stream(futures::stream::iter(chunks));
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Reply::Drop => {
                conn.kill.store(true, Ordering::SeqCst);
                StatusCode::OK.into_response() // never written: the socket refuses it
            }
        };
    }
}

// ---------------------------------------------------------------- killable connections

struct KillListener {
    listener: TcpListener,
    connections: Arc<AtomicUsize>,
}

/// Per-connection kill switch, reaching handlers as `ConnectInfo<Conn>`.
#[derive(Clone, Debug, Default)]
struct Conn {
    kill: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, KillListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Listener for KillListener {
    type Io = KillIo;
    type Addr = Conn;

    async fn accept(&mut self) -> (KillIo, Conn) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    self.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn::default();
                    let kill = conn.kill.clone();
                    return (KillIo { tcp, kill }, conn);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        Ok(Conn::default())
    }
}

struct KillIo {
    tcp: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillIo {
    /// Once killed, every I/O fails and the socket will close with RST.
    fn alive(&self) -> io::Result<()> {
        if !self.kill.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.tcp.set_zero_linger();
        let kind = io::ErrorKind::ConnectionAborted;
        Err(io::Error::new(kind, "fake WeCom: Reply::Drop"))
    }
}

impl AsyncRead for KillIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.alive()?;
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.alive()?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.alive()?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.alive()?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::{Client, RequestBuilder};

    const CORP: &str = "wwfake0123456789";
    const SECRET: &str = "s3cret";
    const AGENT: i64 = 1000002;

    async fn setup() -> (FakeWeCom, Client) {
        let fake = FakeWeCom::start().await;
        fake.add_app(CORP, SECRET, AGENT);
        wecom_notify::wecom::client::install_crypto_provider();
        let client = Client::builder().timeout(Duration::from_secs(10)).build();
        (fake, client.expect("reqwest client"))
    }

    async fn call(req: RequestBuilder) -> reqwest::Result<Value> {
        req.send().await?.json().await
    }

    async fn gettoken(fake: &FakeWeCom, client: &Client, secret: &str) -> Value {
        let url = format!(
            "{}/cgi-bin/gettoken?corpid={CORP}&corpsecret={secret}",
            fake.base_url()
        );
        call(client.get(url)).await.expect("gettoken")
    }

    async fn token(fake: &FakeWeCom, client: &Client) -> String {
        let v = gettoken(fake, client, SECRET).await;
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    fn send(fake: &FakeWeCom, client: &Client, token: &str, body: &Value) -> RequestBuilder {
        let url = format!(
            "{}/cgi-bin/message/send?access_token={token}",
            fake.base_url()
        );
        client.post(url).json(body)
    }

    fn text(content: &str) -> Value {
        json!({"touser": "ZhangSan|LiSi", "msgtype": "text", "agentid": AGENT,
               "text": {"content": content}, "enable_duplicate_check": 1})
    }

    #[tokio::test]
    async fn gettoken_success_and_wrong_secret() {
        let (fake, client) = setup().await;
        let v = gettoken(&fake, &client, SECRET).await;
        assert_eq!(
            (v["errcode"].as_i64(), v["expires_in"].as_i64()),
            (Some(0), Some(7200))
        );
        assert!(v["access_token"].as_str().is_some_and(|t| t.len() >= 64));
        let again = token(&fake, &client).await;
        assert_ne!(v["access_token"], again, "each gettoken issues a new token");
        let v = gettoken(&fake, &client, "nope").await;
        assert_eq!(v["errcode"], 40001, "{v}");
        assert_eq!(fake.gettoken_calls(), 3);
        assert_eq!(fake.gettoken_calls_for(CORP, SECRET), 2);
    }

    #[tokio::test]
    async fn valid_text_is_delivered_and_recalled() {
        let (fake, client) = setup().await;
        fake.set_unknown_users(&["LiSi"]);
        let t = token(&fake, &client).await;
        let v = call(send(&fake, &client, &t, &text("hello")))
            .await
            .expect("send");
        assert_eq!(
            (v["errcode"].as_i64(), v["invaliduser"].as_str()),
            (Some(0), Some("lisi"))
        );
        let msgs = fake.wait_for_messages(1, Duration::from_secs(1)).await;
        assert_eq!(
            (msgs.len(), msgs[0].corp_id.as_str(), msgs[0].agent_id),
            (1, CORP, AGENT)
        );
        let msgid = v["msgid"].as_str().expect("msgid").to_owned();
        assert_eq!(
            msgs[0].outcome,
            Outcome::Delivered {
                msgid: msgid.clone()
            }
        );
        let url = format!(
            "{}/cgi-bin/message/recall?access_token={t}",
            fake.base_url()
        );
        let recall = || client.post(&url);
        let v = call(recall().json(&json!({ "msgid": msgid }))).await;
        assert_eq!(v.expect("recall")["errcode"], 0);
        let v = call(recall().json(&json!({ "msgid": msgid }))).await;
        assert_eq!(v.expect("recall")["errcode"], 40003);
        assert_eq!(fake.recall_calls(), vec![msgid]);
    }

    #[tokio::test]
    async fn unknown_key_is_rejected_with_its_name() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        let mut body = text("hello");
        body["totally_unknown"] = json!(1);
        let v = call(send(&fake, &client, &t, &body)).await.expect("send");
        assert_eq!(v["errcode"], 40058, "{v}");
        let outcome = fake.all_requests().remove(0).outcome;
        let Outcome::Rejected {
            errcode: 40058,
            reason,
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("totally_unknown"), "{reason}");
        assert!(fake.messages().is_empty());
    }

    #[tokio::test]
    async fn duplicate_within_interval_is_not_delivered() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        let first = call(send(&fake, &client, &t, &text("same")))
            .await
            .expect("send");
        let second = call(send(&fake, &client, &t, &text("same")))
            .await
            .expect("send");
        assert_eq!(
            (first["errcode"].as_i64(), second["errcode"].as_i64()),
            (Some(0), Some(0))
        );
        assert_ne!(first["msgid"], second["msgid"]);
        assert_eq!(fake.messages().len(), 1);
        assert_eq!(fake.all_requests()[1].outcome, Outcome::Duplicate);
    }

    #[tokio::test]
    async fn expired_token_answers_42001() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        fake.expire_all_tokens();
        let v = call(send(&fake, &client, &t, &text("x")))
            .await
            .expect("send");
        assert_eq!(v["errcode"], 42001);
        fake.set_token_ttl(0);
        let t = token(&fake, &client).await;
        let v = call(send(&fake, &client, &t, &text("x")))
            .await
            .expect("send");
        assert_eq!(v["errcode"], 42001);
        assert_eq!((fake.send_calls(), fake.messages().len()), (2, 0));
    }

    #[tokio::test]
    async fn drop_is_a_connection_error() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        fake.script_send(Reply::Drop);
        let err = send(&fake, &client, &t, &text("x"))
            .send()
            .await
            .expect_err("dropped");
        assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
        assert_eq!(fake.all_requests()[0].outcome, Outcome::Scripted);
        let v = call(send(&fake, &client, &t, &text("x")))
            .await
            .expect("next send");
        assert_eq!(v["errcode"], 0);
    }

    #[tokio::test]
    async fn scripted_replies_are_served_as_asked() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        fake.script_send(Reply::Http(502, "<html>bad gateway</html>".into()));
        fake.script_send(Reply::Delay(
            Duration::from_millis(50),
            Box::new(Reply::Huge(1 << 20)),
        ));
        let resp = send(&fake, &client, &t, &text("x"))
            .send()
            .await
            .expect("502");
        assert_eq!(resp.status(), 502);
        let body = send(&fake, &client, &t, &text("x"))
            .send()
            .await
            .expect("huge");
        let body = body.bytes().await.expect("huge body");
        assert_eq!((body.len(), &body[body.len() - 2..]), (1 << 20, &b"{}"[..]));
        assert!(fake.messages().is_empty());
    }

    #[tokio::test]
    async fn hold_sends_holds_then_releases() {
        let (fake, client) = setup().await;
        let t = token(&fake, &client).await;
        let hold = fake.hold_sends();
        let pending = tokio::spawn(call(send(&fake, &client, &t, &text("held"))));
        let deadline = Instant::now() + Duration::from_secs(5);
        while fake.sends_waiting() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!((fake.sends_waiting(), fake.send_calls()), (1, 1));
        assert!(fake.messages().is_empty());
        hold.release();
        let v = pending.await.expect("join").expect("send");
        assert_eq!(v["errcode"], 0);
        assert_eq!((fake.sends_waiting(), fake.messages().len()), (0, 1));
    }
}
