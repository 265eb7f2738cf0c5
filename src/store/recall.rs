//! The claim `recall` takes on a row before it calls WeCom, so that of several `recall ID` run
//! at once exactly one makes the call (`recall_started_at`, see `migrations/sqlite/04-recall-claim`).

use chrono::{DateTime, Duration, Utc};
use rusqlite::{OptionalExtension, params};

use super::Store;

/// What claiming the recall of a row found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecallClaim {
    /// This process holds the claim, taken at this instant (as stored; it releases with it).
    Claimed(String),
    /// The row was recalled at this instant.
    AlreadyRecalled(String),
    /// Another process started recalling it at this instant (`None`: it has just ended).
    InProgress(Option<String>),
    /// No such row.
    NoRow,
}

impl Store {
    /// Claims the recall of row `id` at `now`: taken when the row is not recalled and no other
    /// claim younger than `stale` holds it (an older one was left by a process that died).
    pub async fn claim_recall(
        &self,
        id: i64,
        now: DateTime<Utc>,
        stale: Duration,
    ) -> anyhow::Result<RecallClaim> {
        let at = crate::time::to_db(now);
        let stale_before = crate::time::to_db(now - stale);
        if let Some(pg) = self.pg() {
            return pg.claim_recall(id, at, stale_before).await;
        }
        self.call(move |conn| {
            // One statement: SQLite's write lock makes the test and the claim one step.
            let claimed = conn.execute(
                "UPDATE sends SET recall_started_at = ?2 WHERE id = ?1 AND recalled_at IS NULL
                 AND (recall_started_at IS NULL OR recall_started_at < ?3)",
                params![id, at, stale_before],
            )?;
            if claimed == 1 {
                return Ok(RecallClaim::Claimed(at.clone()));
            }
            let state: Option<(Option<String>, Option<String>)> = conn
                .query_row(
                    "SELECT recalled_at, recall_started_at FROM sends WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match state {
                None => RecallClaim::NoRow,
                Some((Some(recalled), _)) => RecallClaim::AlreadyRecalled(recalled),
                Some((None, since)) => RecallClaim::InProgress(since),
            })
        })
        .await
    }

    /// Gives up the claim taken at `claimed` (the call failed), so that the recall can be tried
    /// again at once.
    pub async fn release_recall(&self, id: i64, claimed: &str) -> anyhow::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.release_recall(id, claimed).await;
        }
        let claimed = claimed.to_string();
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET recall_started_at = NULL WHERE id = ?1 AND recall_started_at = ?2",
                params![id, claimed],
            )
            .map(|_| ())
        })
        .await
    }
}
