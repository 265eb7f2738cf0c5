//! The bound on requests in flight per application: WeCom refuses concurrent calls beyond its
//! limit (45033), and a burst of hundreds of sends must not become hundreds of connections.
//!
//! Every HTTP call of an app (gettoken, message/send, message/recall) holds one permit of the
//! app's semaphore for the call itself and nothing else: not while it waits for a token, a
//! back-off or the app's frequency-limit pause. A send therefore never holds a permit while it
//! waits for the gettoken that needs one, and the bound cannot deadlock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{App, Robot};

/// One app's semaphore and the bound it was made for.
#[derive(Debug)]
struct Bound {
    permits: usize,
    semaphore: Arc<Semaphore>,
}

impl Bound {
    fn new(permits: usize) -> Bound {
        Bound {
            permits,
            semaphore: Arc::new(Semaphore::new(permits)),
        }
    }
}

/// Whose bound a call counts against.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    App(&'a App),
    Robot(&'a Robot),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// (corp id, agent id)
    App(String, i64),
    /// The robot's name.
    Robot(String),
}

/// A group robot's requests in flight at once (it takes 20 messages a minute anyway).
const ROBOT_MAX_IN_FLIGHT: usize = 2;

/// The apps' and robots' semaphores, shared by every clone of the [`Client`](super::Client).
#[derive(Debug, Default)]
pub struct InFlight {
    bounds: Mutex<HashMap<Key, Bound>>,
}

impl InFlight {
    /// Waits for a free permit of the caller's bound. A reload that changes the bound makes a
    /// new semaphore: calls still holding the old one finish under it, new calls take the new one.
    pub async fn permit(&self, caller: Caller<'_>) -> Option<OwnedSemaphorePermit> {
        let (key, permits) = match caller {
            Caller::App(app) => (
                Key::App(app.corp_id.clone(), app.agent_id),
                app.max_in_flight,
            ),
            Caller::Robot(robot) => (Key::Robot(robot.name.clone()), ROBOT_MAX_IN_FLIGHT),
        };
        let semaphore = {
            let mut bounds = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
            let bound = bounds.entry(key).or_insert_with(|| Bound::new(permits));
            if bound.permits != permits {
                *bound = Bound::new(permits);
            }
            bound.semaphore.clone()
        };
        // The semaphore is never closed, so this is always a permit; were it closed, the call
        // would go ahead unbounded rather than fail.
        semaphore.acquire_owned().await.ok()
    }
}
