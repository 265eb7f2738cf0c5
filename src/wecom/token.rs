//! Access tokens: one per application, fetched once per lifetime and shared through SQLite.
//!
//! Three layers, cheapest first: the in-memory copy; the `access_tokens` row (another process
//! may have refreshed it); and a refresh under the database's write lock. Inside one process a
//! per-app async mutex makes concurrent sends wait for a single refresh.

use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};

use super::PerApp;
use super::client::{AccessToken, Client, TokenError};
use crate::config::App;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::tokens::StoredToken;

/// Tokens are used until this long before they expire, so that none expires in flight.
pub const DEFAULT_SAFETY_MARGIN: Duration = Duration::minutes(5);

/// How long a failed gettoken answers for the callers that were waiting for it, so that a
/// burst of sends during an outage makes one call, not one each.
const FAILURE_SHARED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Slot {
    current: Mutex<Option<StoredToken>>,
    refresh: tokio::sync::Mutex<()>,
    failed: Mutex<Option<(std::time::Instant, TokenError)>>,
}

/// The token cache of every app of this process.
pub struct TokenCache {
    store: Store,
    client: Client,
    slots: PerApp<Slot>,
    metrics: Arc<Metrics>,
}

impl TokenCache {
    pub fn new(store: Store, client: Client) -> TokenCache {
        TokenCache {
            store,
            client,
            slots: PerApp::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts gettoken calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> TokenCache {
        self.metrics = metrics;
        self
    }

    fn slot(&self, app: &App) -> Arc<Slot> {
        self.slots.get(app)
    }

    fn fresh(&self, slot: &Slot) -> Option<AccessToken> {
        let current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|t| t.is_fresh(DEFAULT_SAFETY_MARGIN, Utc::now()))
            .map(|t| t.token.clone())
    }

    /// A token for `app`: cached if still fresh, otherwise fetched by exactly one caller.
    pub async fn get(&self, app: &App) -> Result<AccessToken, TokenError> {
        let slot = self.slot(app);
        if let Some(token) = self.fresh(&slot) {
            return Ok(token);
        }
        let _refreshing = slot.refresh.lock().await;
        if let Some(token) = self.fresh(&slot) {
            return Ok(token);
        }
        if let Some((at, error)) = slot
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < FAILURE_SHARED_FOR
        {
            return Err(error.clone());
        }
        let stored = match self.refresh(app).await {
            Ok(stored) => stored,
            Err(error) => {
                *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::time::Instant::now(), error.clone()));
                return Err(error);
            }
        };
        let token = stored.token.clone();
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
        *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(token)
    }

    /// The stored token if another process refreshed it, else one fetched under the
    /// database's write lock.
    async fn refresh(&self, app: &App) -> Result<StoredToken, TokenError> {
        // A database that refuses reads or writes must not stop sending: the token is then
        // fetched and kept in memory only (still one fetch at a time within this process).
        let stored = match self.store.load_token(&app.corp_id, app.agent_id).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!("cannot read the cached token: {e:#}");
                None
            }
        };
        let fetch = || async {
            tracing::info!(app = %app.name, "fetching a new access token");
            self.metrics.count_gettoken(&app.name);
            self.client.get_token(app).await
        };
        let stored = match stored.filter(|t| t.is_fresh(DEFAULT_SAFETY_MARGIN, Utc::now())) {
            Some(stored) => stored,
            None => match self
                .store
                .refresh_token(&app.corp_id, app.agent_id, DEFAULT_SAFETY_MARGIN, fetch)
                .await
            {
                Ok(result) => result?,
                Err(e) => {
                    tracing::warn!(
                        "cannot share the token refresh through the database ({e:#}); fetching without it"
                    );
                    StoredToken::fresh(fetch().await?, Utc::now())
                }
            },
        };
        Ok(stored)
    }

    /// Forgets `failed` after WeCom rejected it (40014/42001/41001), in memory and in the
    /// database, unless it was already replaced. A database that refuses is logged here, for
    /// every caller.
    pub async fn invalidate(&self, app: &App, failed: &AccessToken) {
        let slot = self.slot(app);
        {
            let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|t| &t.token == failed) {
                *current = None;
            }
        }
        if let Err(e) = self
            .store
            .drop_token(&app.corp_id, app.agent_id, failed)
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not drop the rejected token");
        }
    }

    /// Drops every trace of an app's token (its credentials changed on reload).
    pub async fn forget(&self, app: &App) -> anyhow::Result<()> {
        let slot = self.slot(app);
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // A gettoken failure with the old credentials says nothing about the new ones.
        *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.store.forget_token(&app.corp_id, app.agent_id).await
    }
}
