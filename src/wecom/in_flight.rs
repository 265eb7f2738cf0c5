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

use crate::config::App;

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

/// The apps' semaphores, shared by every clone of the [`Client`](super::Client).
#[derive(Debug, Default)]
pub struct InFlight {
    /// Keyed by (corp id, agent id).
    apps: Mutex<HashMap<(String, i64), Bound>>,
}

impl InFlight {
    /// Waits for a free permit of `app`'s bound. A reload that changes the bound makes a new
    /// semaphore: calls still holding the old one finish under it, new calls take the new one.
    pub async fn permit(&self, app: &App) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let key = (app.corp_id.clone(), app.agent_id);
            let bound = apps
                .entry(key)
                .or_insert_with(|| Bound::new(app.max_in_flight));
            if bound.permits != app.max_in_flight {
                *bound = Bound::new(app.max_in_flight);
            }
            bound.semaphore.clone()
        };
        // The semaphore is never closed, so this is always a permit; were it closed, the call
        // would go ahead unbounded rather than fail.
        semaphore.acquire_owned().await.ok()
    }
}
