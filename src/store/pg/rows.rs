//! The other tables on PostgreSQL: `events`, `heartbeats`, `access_tokens`, and the reads of
//! `sends` that `history` and `recall` make. The same meaning as their SQLite counterparts in
//! [`crate::store`].

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{LOCK_TOKEN, Pg};
use crate::store::events::EventKind;
use crate::store::heartbeats::Heartbeat;
use crate::store::query::{HistoryFilter, ScheduleActivity, SendRow, columns};
use crate::store::recall::RecallClaim;
use crate::store::tokens::{AccessToken, FreshToken, StoredToken};

fn send_row(row: &Row) -> Result<SendRow, tokio_postgres::Error> {
    let robot: Option<String> = row.try_get(20)?;
    let app: String = row.try_get(8)?;
    Ok(SendRow {
        id: row.try_get(0)?,
        schedule: row.try_get(1)?,
        trigger: row.try_get(2)?,
        scheduled_at: row.try_get(3)?,
        created_at: row.try_get(4)?,
        finished_at: row.try_get(5)?,
        status: row.try_get(6)?,
        attempts: row.try_get(7)?,
        destination: match &robot {
            Some(robot) => format!("robot {robot}"),
            None => format!("app {app}"),
        },
        app,
        agent_id: row.try_get(9)?,
        msgtype: row.try_get(10)?,
        payload: row.try_get(11)?,
        errcode: row.try_get(12)?,
        errmsg: row.try_get(13)?,
        msgid: row.try_get(14)?,
        invaliduser: row.try_get(15)?,
        invalidparty: row.try_get(16)?,
        invalidtag: row.try_get(17)?,
        unlicenseduser: row.try_get(18)?,
        recalled_at: row.try_get(19)?,
        robot,
        instance: row.try_get(21)?,
    })
}

/// The heartbeat rows and the last sign of life, read in one transaction.
async fn read_previous_runs(
    client: &mut deadpool_postgres::Object,
) -> Result<(Vec<Heartbeat>, Option<DateTime<Utc>>), tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows = tx
        .query(
            "SELECT pid, alive_at, fired_through, stopped_at, instance FROM heartbeats",
            &[],
        )
        .await?;
    let beats = rows
        .iter()
        .filter_map(|r| {
            Some(Heartbeat {
                pid: r.get(0),
                alive_at: crate::time::from_db(&r.get::<_, String>(1))?,
                fired_through: crate::time::from_db(&r.get::<_, String>(2))?,
                stopped_at: r
                    .get::<_, Option<String>>(3)
                    .as_deref()
                    .and_then(crate::time::from_db),
                instance: Some(r.get::<_, String>(4)).filter(|i| !i.is_empty()),
            })
        })
        .collect();
    let alive: Option<String> = tx
        .query_one(
            "SELECT max(at) FROM (SELECT max(at) AS at FROM events
                 UNION ALL (SELECT created_at FROM sends
                     WHERE trigger IN ('cron', 'catch_up') AND status <> 'dry_run'
                     ORDER BY id DESC LIMIT 1)) AS signs",
            &[],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok((beats, alive.as_deref().and_then(crate::time::from_db)))
}

impl Pg {
    /// [`crate::store::Store::record_event_at`]. A repeat after a lost commit may write the
    /// event twice; an event is a log line, and a doubled one says nothing false.
    pub async fn record_event(
        &self,
        kind: EventKind,
        at: DateTime<Utc>,
        digest: &str,
        detail: &str,
        instance: Option<String>,
    ) -> anyhow::Result<()> {
        let (at, digest, detail) = (
            crate::time::to_db(at),
            digest.to_string(),
            detail.to_string(),
        );
        let pid = i64::from(std::process::id());
        self.retrying(|client| {
            let (at, digest, detail, instance) = (at.clone(), digest.clone(), detail.clone(), instance.clone());
            async move {
                client
                    .execute(
                        "INSERT INTO events (at, kind, config_digest, pid, version, detail, instance)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&at, &kind.as_str(), &digest, &pid, &env!("CARGO_PKG_VERSION"), &detail, &instance],
                    )
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// [`crate::store::Store::previous_runs`].
    pub async fn previous_runs(&self) -> anyhow::Result<(Vec<Heartbeat>, Option<DateTime<Utc>>)> {
        self.retrying(|mut client| async move { read_previous_runs(&mut client).await })
            .await
    }

    /// [`crate::store::Store::beat`].
    pub async fn beat(
        &self,
        instance: Option<String>,
        started_at: DateTime<Utc>,
        fired_through: Option<DateTime<Utc>>,
        stopped: bool,
        forget: Vec<(Option<String>, i64)>,
    ) -> anyhow::Result<()> {
        let pid = i64::from(std::process::id());
        let instance = instance.unwrap_or_default();
        self.retrying(|mut client| {
            let (instance, forget) = (instance.clone(), forget.clone());
            async move {
                let tx = client.transaction().await?;
                for (gone_instance, gone) in &forget {
                    let gone_instance = gone_instance.clone().unwrap_or_default();
                    tx.execute("DELETE FROM heartbeats WHERE instance = $1 AND pid = $2", &[&gone_instance, gone])
                        .await?;
                }
                let now = crate::time::now_db();
                match fired_through {
                    None => {
                        tx.execute(
                            "UPDATE heartbeats SET alive_at = $3 WHERE instance = $1 AND pid = $2",
                            &[&instance, &pid, &now],
                        )
                        .await?;
                    }
                    Some(through) => {
                        tx.execute(
                            "INSERT INTO heartbeats (instance, pid, started_at, alive_at, fired_through, stopped_at)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (instance, pid) DO UPDATE SET started_at = excluded.started_at,
                                 alive_at = excluded.alive_at, fired_through = excluded.fired_through,
                                 stopped_at = excluded.stopped_at",
                            &[
                                &instance,
                                &pid,
                                &crate::time::to_db(started_at),
                                &now,
                                &crate::time::to_db(through),
                                &stopped.then_some(now.clone()),
                            ],
                        )
                        .await?;
                    }
                }
                tx.commit().await
            }
        })
        .await
    }

    /// [`crate::store::Store::load_token`].
    pub async fn load_token(
        &self,
        corp_id: &str,
        agent_id: i64,
    ) -> anyhow::Result<Option<StoredToken>> {
        let corp_id = corp_id.to_string();
        let row = self
            .retrying(|client| {
                let corp_id = corp_id.clone();
                async move {
                    client
                        .query_opt(
                            "SELECT access_token, fetched_at, expires_at FROM access_tokens WHERE corp_id = $1 AND agent_id = $2",
                            &[&corp_id, &agent_id],
                        )
                        .await
                }
            })
            .await?;
        Ok(row.as_ref().and_then(stored_token))
    }

    /// [`crate::store::Store::drop_token`] (with `only`) and
    /// [`crate::store::Store::forget_token`].
    pub async fn delete_token(
        &self,
        corp_id: &str,
        agent_id: i64,
        only: Option<String>,
    ) -> anyhow::Result<()> {
        let corp_id = corp_id.to_string();
        self.retrying(|client| {
            let (corp_id, only) = (corp_id.clone(), only.clone());
            async move {
                client
                    .execute(
                        "DELETE FROM access_tokens WHERE corp_id = $1 AND agent_id = $2
                             AND ($3::text IS NULL OR access_token = $3)",
                        &[&corp_id, &agent_id, &only],
                    )
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// [`crate::store::Store::refresh_token`]: a fresh stored token, or `fetch` run while this
    /// transaction holds the application's advisory lock, and its result stored. The lock is
    /// the transaction's: it goes with the transaction, or with the connection should it
    /// break, so no node can leave it held. Every other node waits for it, then finds the new
    /// token.
    pub async fn refresh_token<F, Fut, E>(
        &self,
        corp_id: &str,
        agent_id: i64,
        margin: chrono::Duration,
        fetch: F,
    ) -> anyhow::Result<Result<StoredToken, E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FreshToken, E>>,
    {
        let _permit = self.refreshes.acquire().await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A lock held longer than a gettoken call can take means its holder is stuck.
        tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
        let key = format!("{corp_id}:{agent_id}");
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_TOKEN, &key],
        )
        .await?;
        let existing = tx
            .query_opt(
                "SELECT access_token, fetched_at, expires_at FROM access_tokens WHERE corp_id = $1 AND agent_id = $2",
                &[&corp_id, &agent_id],
            )
            .await?;
        if let Some(token) = existing
            .as_ref()
            .and_then(stored_token)
            .filter(|t| t.is_fresh(margin, Utc::now()))
        {
            tx.commit().await?;
            return Ok(Ok(token));
        }
        let fresh = match fetch().await {
            Ok(fresh) => fresh,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        let now = Utc::now();
        let stored = StoredToken::fresh(fresh, now);
        let saved = async {
            tx.execute(
                "INSERT INTO access_tokens (corp_id, agent_id, access_token, fetched_at, expires_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (corp_id, agent_id) DO UPDATE SET access_token = excluded.access_token,
                     fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
                &[&corp_id, &agent_id, &stored.token.expose(), &crate::time::to_db(now), &crate::time::to_db(stored.expires_at)],
            )
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = saved {
            // The token is good even if it could not be kept: use it, and let the next
            // process fetch its own.
            tracing::warn!(
                "could not store the new access token: {}",
                super::describe(&e)
            );
        }
        Ok(Ok(stored))
    }

    /// [`crate::store::Store::history`].
    pub async fn history(&self, filter: &HistoryFilter) -> anyhow::Result<Vec<SendRow>> {
        let mut conditions = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        if let Some(schedule) = &filter.schedule {
            texts.push(schedule.clone());
            conditions.push(format!("schedule = ${}", texts.len()));
        }
        if let Some(status) = filter.status {
            texts.push(status.as_str().to_string());
            conditions.push(format!("status = ${}", texts.len()));
        }
        if let Some(since) = filter.since {
            texts.push(crate::time::to_db(since));
            conditions.push(format!("scheduled_at >= ${}", texts.len()));
        }
        let mut sql = format!("SELECT {} FROM sends", columns());
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", texts.len() + 1));
        let limit = i64::from(filter.limit);
        let rows = self
            .retrying(|client| {
                let (sql, texts) = (sql.clone(), texts.clone());
                async move {
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = texts
                        .iter()
                        .map(|t| t as &(dyn tokio_postgres::types::ToSql + Sync))
                        .collect();
                    params.push(&limit);
                    client.query(&sql, &params).await
                }
            })
            .await?;
        Ok(rows.iter().map(send_row).collect::<Result<_, _>>()?)
    }

    /// [`crate::store::Store::send_row`].
    pub async fn send_row(&self, id: i64) -> anyhow::Result<Option<SendRow>> {
        let sql = format!("SELECT {} FROM sends WHERE id = $1", columns());
        let row = self
            .retrying(|client| {
                let sql = sql.clone();
                async move { client.query_opt(&sql, &[&id]).await }
            })
            .await?;
        Ok(row.as_ref().map(send_row).transpose()?)
    }

    /// [`crate::store::Store::identical_send_since`].
    pub async fn identical_send_since(
        &self,
        schedule: &str,
        payload: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Option<(i64, String)>> {
        let (schedule, payload, since) = (
            schedule.to_string(),
            payload.to_string(),
            crate::time::to_db(since),
        );
        let row = self
            .retrying(|client| {
                let (schedule, payload, since) = (schedule.clone(), payload.clone(), since.clone());
                async move {
                    client
                        .query_opt(
                            "SELECT id, created_at FROM sends WHERE schedule = $1 AND payload = $2 AND created_at >= $3
                                 AND status IN ('sent', 'partial') ORDER BY id DESC LIMIT 1",
                            &[&schedule, &payload, &since],
                        )
                        .await
                }
            })
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// [`crate::store::Store::activity`].
    pub async fn activity(
        &self,
        schedules: Vec<String>,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ScheduleActivity>> {
        let since = crate::time::to_db(since);
        self.retrying(|client| {
            let (schedules, since) = (schedules.clone(), since.clone());
            async move {
                let mut names = schedules;
                let all = client
                    .query(
                        "WITH RECURSIVE names(name) AS (
                             SELECT min(schedule) FROM sends
                             UNION ALL
                             SELECT (SELECT min(schedule) FROM sends WHERE schedule > names.name)
                             FROM names WHERE names.name IS NOT NULL
                         )
                         SELECT name FROM names WHERE name IS NOT NULL",
                        &[],
                    )
                    .await?;
                for row in &all {
                    let name: String = row.get(0);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                let failures = client
                    .query(
                        "SELECT schedule, count(*) FROM sends WHERE scheduled_at >= $1 AND status = 'failed' GROUP BY schedule",
                        &[&since],
                    )
                    .await?;
                let last = client
                    .prepare(
                        "SELECT id, scheduled_at, status FROM sends WHERE schedule = $1 AND trigger IN ('cron', 'catch_up')
                         ORDER BY id DESC LIMIT 1",
                    )
                    .await?;
                let mut activity = Vec::with_capacity(names.len());
                for schedule in names {
                    let last_slot = client
                        .query_opt(&last, &[&schedule])
                        .await?
                        .map(|r| (r.get(0), r.get(1), r.get(2)));
                    let failed = failures
                        .iter()
                        .find(|r| r.get::<_, String>(0) == schedule)
                        .map_or(0, |r| r.get::<_, i64>(1));
                    activity.push(ScheduleActivity { schedule, last_slot, failed });
                }
                Ok(activity)
            }
        })
        .await
    }

    /// [`crate::store::Store::mark_recalled`].
    pub async fn mark_recalled(&self, id: i64, at: DateTime<Utc>) -> anyhow::Result<bool> {
        let at = crate::time::to_db(at);
        let mut tried = false;
        self.retrying(|client| {
            let again = std::mem::replace(&mut tried, true);
            let at = at.clone();
            async move {
                let changed = client
                    .execute(
                        "UPDATE sends SET recalled_at = $2, recall_started_at = NULL WHERE id = $1 AND recalled_at IS NULL",
                        &[&id, &at],
                    )
                    .await?;
                if changed > 0 {
                    return Ok(true);
                }
                if !again {
                    return Ok(false);
                }
                // A repeat after a lost commit finds this very mark.
                let repeat = client
                    .query_opt("SELECT 1 FROM sends WHERE id = $1 AND recalled_at = $2", &[&id, &at])
                    .await?;
                Ok(repeat.is_some())
            }
        })
        .await
    }

    /// [`crate::store::Store::claim_recall`].
    pub async fn claim_recall(
        &self,
        id: i64,
        at: String,
        stale_before: String,
    ) -> anyhow::Result<RecallClaim> {
        let mut tried = false;
        self.retrying(|client| {
            let again = std::mem::replace(&mut tried, true);
            let (at, stale_before) = (at.clone(), stale_before.clone());
            async move {
                let claimed = client
                    .execute(
                        "UPDATE sends SET recall_started_at = $2 WHERE id = $1 AND recalled_at IS NULL
                             AND (recall_started_at IS NULL OR recall_started_at < $3)",
                        &[&id, &at, &stale_before],
                    )
                    .await?;
                if claimed == 1 {
                    return Ok(RecallClaim::Claimed(at));
                }
                let state = client
                    .query_opt("SELECT recalled_at, recall_started_at FROM sends WHERE id = $1", &[&id])
                    .await?;
                Ok(match state {
                    None => RecallClaim::NoRow,
                    Some(row) => match (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1)) {
                        (Some(recalled), _) => RecallClaim::AlreadyRecalled(recalled),
                        // A repeat after a lost commit finds its own claim.
                        (None, Some(since)) if again && since == at => RecallClaim::Claimed(at),
                        (None, since) => RecallClaim::InProgress(since),
                    },
                })
            }
        })
        .await
    }

    /// [`crate::store::Store::release_recall`].
    pub async fn release_recall(&self, id: i64, claimed: &str) -> anyhow::Result<()> {
        let claimed = claimed.to_string();
        self.retrying(|client| {
            let claimed = claimed.clone();
            async move {
                client
                    .execute(
                        "UPDATE sends SET recall_started_at = NULL WHERE id = $1 AND recall_started_at = $2",
                        &[&id, &claimed],
                    )
                    .await
                    .map(|_| ())
            }
        })
        .await
    }
}

fn stored_token(row: &Row) -> Option<StoredToken> {
    Some(StoredToken {
        token: AccessToken::new(row.get::<_, String>(0)),
        fetched_at: crate::time::from_db(&row.get::<_, String>(1))?,
        expires_at: crate::time::from_db(&row.get::<_, String>(2))?,
    })
}
