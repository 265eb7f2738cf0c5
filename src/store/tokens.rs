//! The `access_tokens` table, and the cross-process single flight of a token refresh.
//!
//! A refresh runs inside `BEGIN IMMEDIATE` on a connection of its own: the first process takes
//! SQLite's write lock, re-checks the row, calls gettoken and commits; every other process waits
//! in SQLite's busy handler (no polling loop of ours), then re-checks and finds the new token.

use std::fmt;
use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::Store;

/// An access token. Like the app secret, it prints as a mask.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(value: impl Into<String>) -> AccessToken {
        AccessToken(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// A freshly issued token and its lifetime in seconds.
#[derive(Debug)]
pub struct FreshToken {
    pub token: AccessToken,
    pub expires_in: i64,
}

/// A token as stored.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: AccessToken,
    pub fetched_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl StoredToken {
    /// A token WeCom just issued.
    pub fn fresh(issued: FreshToken, now: DateTime<Utc>) -> StoredToken {
        // The client bounds expires_in, so this cannot overflow.
        StoredToken {
            token: issued.token,
            fetched_at: now,
            expires_at: now + Duration::seconds(issued.expires_in),
        }
    }

    /// Usable until `margin` before it expires, or half its lifetime if that is shorter (a
    /// token that lives less than two margins would otherwise never be used at all).
    pub fn is_fresh(&self, margin: Duration, now: DateTime<Utc>) -> bool {
        let margin = margin.min((self.expires_at - self.fetched_at) / 2);
        self.expires_at - margin > now
    }
}

fn read(conn: &Connection, corp_id: &str, agent_id: i64) -> rusqlite::Result<Option<StoredToken>> {
    conn.query_row(
        "SELECT access_token, fetched_at, expires_at FROM access_tokens WHERE corp_id = ?1 AND agent_id = ?2",
        params![corp_id, agent_id],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)),
    )
    .optional()
    .map(|found| {
        found.and_then(|(token, fetched_at, expires_at)| {
            Some(StoredToken {
                token: AccessToken::new(token),
                fetched_at: crate::time::from_db(&fetched_at)?,
                expires_at: crate::time::from_db(&expires_at)?,
            })
        })
    })
}

impl Store {
    /// The stored token of an app, if any.
    pub async fn load_token(
        &self,
        corp_id: &str,
        agent_id: i64,
    ) -> anyhow::Result<Option<StoredToken>> {
        if let Some(pg) = self.pg() {
            return pg.load_token(corp_id, agent_id).await;
        }
        let corp_id = corp_id.to_string();
        self.call(move |conn| read(conn, &corp_id, agent_id)).await
    }

    /// Deletes the stored token, but only if it is still `failed` (another process may already
    /// have replaced it with a good one).
    pub async fn drop_token(
        &self,
        corp_id: &str,
        agent_id: i64,
        failed: &AccessToken,
    ) -> anyhow::Result<()> {
        let corp_id = corp_id.to_string();
        let failed = failed.expose().to_string();
        if let Some(pg) = self.pg() {
            return pg.delete_token(&corp_id, agent_id, Some(failed)).await;
        }
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM access_tokens WHERE corp_id = ?1 AND agent_id = ?2 AND access_token = ?3",
                params![corp_id, agent_id, failed],
            )
            .map(|_| ())
        })
        .await
    }

    /// Deletes the stored token whatever it is (the app's credentials changed).
    pub async fn forget_token(&self, corp_id: &str, agent_id: i64) -> anyhow::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.delete_token(corp_id, agent_id, None).await;
        }
        let corp_id = corp_id.to_string();
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM access_tokens WHERE corp_id = ?1 AND agent_id = ?2",
                params![corp_id, agent_id],
            )
            .map(|_| ())
        })
        .await
    }

    /// Returns a fresh stored token, or runs `fetch` while holding the database's write lock
    /// and stores its result. `fetch` runs at most once across every process sharing the file.
    pub async fn refresh_token<F, Fut, E>(
        &self,
        corp_id: &str,
        agent_id: i64,
        margin: Duration,
        fetch: F,
    ) -> anyhow::Result<Result<StoredToken, E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FreshToken, E>>,
    {
        if let Some(pg) = self.pg() {
            return pg.refresh_token(corp_id, agent_id, margin, fetch).await;
        }
        // The transaction holds SQLite's write lock across the gettoken call: on a connection
        // and a thread of its own, so that nothing it needs to finish can be queued behind the
        // writes it is holding up.
        let worker = self.separate_worker()?;
        let key = (corp_id.to_string(), agent_id);
        let existing = worker
            .run(move |conn| {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                read(conn, &key.0, key.1)
            })
            .await?;
        if let Some(token) = existing.filter(|t| t.is_fresh(margin, Utc::now())) {
            worker.run(|conn| conn.execute_batch("COMMIT")).await?;
            return Ok(Ok(token));
        }
        let fresh = match fetch().await {
            Ok(fresh) => fresh,
            Err(e) => {
                worker.run(|conn| conn.execute_batch("ROLLBACK")).await?;
                return Ok(Err(e));
            }
        };
        let now = Utc::now();
        let stored = StoredToken::fresh(fresh, now);
        let row = (
            corp_id.to_string(),
            agent_id,
            stored.token.expose().to_string(),
            stored.expires_at,
        );
        let saved = worker
            .run(move |conn| {
                conn.execute(
                    "INSERT INTO access_tokens (corp_id, agent_id, access_token, fetched_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (corp_id, agent_id) DO UPDATE SET access_token = excluded.access_token,
                         fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
                    params![row.0, row.1, row.2, crate::time::to_db(now), crate::time::to_db(row.3)],
                )?;
                conn.execute_batch("COMMIT")
            })
            .await;
        if let Err(e) = saved {
            // The token is good even if it could not be kept: use it, and let the next
            // process fetch its own.
            tracing::warn!("could not store the new access token: {e:#}");
        }
        Ok(Ok(stored))
    }
}
