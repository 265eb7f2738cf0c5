//! The `sends` table: a row claimed before the HTTP call, finished with WeCom's answer.

use chrono::{DateTime, Utc};
use std::collections::HashSet;

use rusqlite::{Connection, ErrorCode, params};
use serde::{Deserialize, Serialize};

use super::Store;

/// Why a row exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The daemon fired a slot on time.
    Cron,
    /// `wecom-notify send`.
    Manual,
    /// A slot missed while the daemon was down, sent late.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Manual => "manual",
            Trigger::CatchUp => "catch_up",
        }
    }

    pub fn parse(text: &str) -> Option<Trigger> {
        Some(match text {
            "cron" => Trigger::Cron,
            "manual" => Trigger::Manual,
            "catch_up" => Trigger::CatchUp,
            _ => return None,
        })
    }
}

/// The `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Sent,
    Partial,
    Failed,
    Interrupted,
    DryRun,
    Missed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::DryRun => "dry_run",
            Status::Missed => "missed",
            Status::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "pending" => Status::Pending,
            "sent" => Status::Sent,
            "partial" => Status::Partial,
            "failed" => Status::Failed,
            "interrupted" => Status::Interrupted,
            "dry_run" => Status::DryRun,
            "missed" => Status::Missed,
            "skipped" => Status::Skipped,
            _ => return None,
        })
    }
}

/// A row about to be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSend {
    pub schedule: String,
    pub trigger: Trigger,
    pub scheduled_at: DateTime<Utc>,
    pub app: String,
    pub agent_id: i64,
    /// The group robot it goes through (by name), `None` for an application send. Absent from
    /// unrecorded-sends files written before robots existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<String>,
    pub msgtype: String,
    pub payload: String,
    pub status: Status,
}

/// The result of claiming a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The row was written; its id.
    Claimed(i64),
    /// Another fire (a doubled tick, another daemon) already holds this slot.
    Taken,
}

/// How a send ended, for its row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    pub status: Status,
    pub attempts: u32,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub msgid: Option<String>,
    pub invaliduser: Option<String>,
    pub invalidparty: Option<String>,
    pub invalidtag: Option<String>,
    pub unlicenseduser: Option<String>,
}

/// A row left `pending`: a send that was in flight when its process died (or still is).
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub id: i64,
    pub schedule: String,
    pub trigger: Trigger,
    pub scheduled_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub app: String,
    pub agent_id: i64,
    pub robot: Option<String>,
    pub msgtype: String,
    pub payload: String,
    pub attempts: u32,
    pub pid: Option<i64>,
}

impl PendingRow {
    /// The row as it was claimed, to write it again should it have been lost.
    pub fn as_new(&self) -> NewSend {
        NewSend {
            schedule: self.schedule.clone(),
            trigger: self.trigger,
            scheduled_at: self.scheduled_at,
            app: self.app.clone(),
            agent_id: self.agent_id,
            robot: self.robot.clone(),
            msgtype: self.msgtype.clone(),
            payload: self.payload.clone(),
            status: Status::Pending,
        }
    }
}

/// A column of ours that does not read back as written.
fn unreadable(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("not a {what} this program writes").into(),
    )
}

/// A timestamp column.
fn timestamp(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(column)?;
    crate::time::from_db(&text).ok_or_else(|| unreadable(column, "timestamp"))
}

/// Inserts a row created now by this process; with `finish`, the row is written finished.
fn insert(conn: &Connection, new: &NewSend, finish: Option<&Finish>) -> rusqlite::Result<Claim> {
    let now = Utc::now();
    let pid = Some(i64::from(std::process::id()));
    insert_as(conn, None, new, now, finish.map(|f| (f, now)), pid)
}

/// Inserts a row as it was created at `created_at` by process `pid`, under `id` if given.
pub(super) fn insert_as(
    conn: &Connection,
    id: Option<i64>,
    new: &NewSend,
    created_at: DateTime<Utc>,
    finish: Option<(&Finish, DateTime<Utc>)>,
    pid: Option<i64>,
) -> rusqlite::Result<Claim> {
    let status = finish.map_or(new.status, |(f, _)| f.status);
    let finished_at = finish
        .map(|(_, at)| at)
        .or_else(|| (new.status != Status::Pending).then_some(created_at));
    let finish = finish.map(|(f, _)| f);
    // Cached statements: the claim, the attempt count and the finish run for every send.
    let result = conn.prepare_cached(
        "INSERT INTO sends (id, schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app, agent_id,
                            msgtype, payload, errcode, errmsg, msgid, invaliduser, invalidparty, invalidtag,
                            unlicenseduser, pid, robot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
    )?.execute(
        params![
            id,
            new.schedule,
            new.trigger.as_str(),
            crate::time::to_db(new.scheduled_at),
            crate::time::to_db(created_at),
            finished_at.map(crate::time::to_db),
            status.as_str(),
            finish.map_or(0, |f| f.attempts),
            new.app,
            new.agent_id,
            new.msgtype,
            new.payload,
            finish.and_then(|f| f.errcode),
            finish.and_then(|f| f.errmsg.clone()),
            finish.and_then(|f| f.msgid.clone()),
            finish.and_then(|f| f.invaliduser.clone()),
            finish.and_then(|f| f.invalidparty.clone()),
            finish.and_then(|f| f.invalidtag.clone()),
            finish.and_then(|f| f.unlicenseduser.clone()),
            pid,
            new.robot,
        ],
    );
    match result {
        Ok(_) => Ok(Claim::Claimed(conn.last_insert_rowid())),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            Ok(Claim::Taken)
        }
        Err(e) => Err(e),
    }
}

/// Writes `finish` into row `id`; returns how many rows changed.
pub(super) fn update_finish(
    conn: &Connection,
    id: i64,
    finish: &Finish,
    finished_at: DateTime<Utc>,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE sends SET finished_at = ?2, status = ?3, attempts = ?4, errcode = ?5, errmsg = ?6, msgid = ?7,
                invaliduser = ?8, invalidparty = ?9, invalidtag = ?10, unlicenseduser = ?11
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        crate::time::to_db(finished_at),
        finish.status.as_str(),
        finish.attempts,
        finish.errcode,
        finish.errmsg,
        finish.msgid,
        finish.invaliduser,
        finish.invalidparty,
        finish.invalidtag,
        finish.unlicenseduser
    ])
}

impl Store {
    /// Writes the row for a fire. For `cron` and `catch_up` rows the unique index on
    /// `(schedule, scheduled_at)` makes this the at-most-once gate of a slot.
    pub async fn claim(&self, new: NewSend) -> anyhow::Result<Claim> {
        self.call(move |conn| insert(conn, &new, None)).await
    }

    /// Writes `missed` rows (already finished) in one transaction; returns how many were new.
    pub async fn record_missed(&self, rows: Vec<NewSend>) -> anyhow::Result<usize> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let mut written = 0;
            for row in &rows {
                if let Claim::Claimed(_) = insert(&tx, row, None)? {
                    written += 1;
                }
            }
            tx.commit()?;
            Ok(written)
        })
        .await
    }

    /// Deletes finished rows whose slot is older than `before`, in batches of `batch` so that
    /// other writers are never held up for long; returns how many went.
    pub async fn prune(&self, before: DateTime<Utc>, batch: usize) -> anyhow::Result<usize> {
        let before = crate::time::to_db(before);
        let mut total = 0;
        loop {
            let cutoff = before.clone();
            let deleted = self
                .call(move |conn| {
                    conn.execute(
                        "DELETE FROM sends WHERE id IN (SELECT id FROM sends INDEXED BY sends_by_slot
                             WHERE scheduled_at < ?1 AND status <> 'pending' LIMIT ?2)",
                        params![cutoff, batch as i64],
                    )
                })
                .await?;
            total += deleted;
            if deleted < batch {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Counts an attempt before it is made, so a crash mid-send leaves an honest count.
    pub async fn set_attempts(&self, id: i64, attempts: u32) -> anyhow::Result<()> {
        self.call(move |conn| {
            conn.prepare_cached("UPDATE sends SET attempts = ?2 WHERE id = ?1")?
                .execute(params![id, attempts])
                .map(|_| ())
        })
        .await
    }

    /// Finishes a row with WeCom's answer. An error unless the row was there to finish: a
    /// send is never reported as recorded when its row is missing.
    pub async fn finish(&self, id: i64, finish: Finish) -> anyhow::Result<()> {
        let changed = self
            .call(move |conn| update_finish(conn, id, &finish, Utc::now()))
            .await?;
        if changed == 0 {
            anyhow::bail!("history row #{id} is missing from the database");
        }
        Ok(())
    }

    /// Marks a row that is still `pending` as `interrupted`; false if it had already finished.
    pub async fn interrupt(&self, id: i64) -> anyhow::Result<bool> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2 WHERE id = ?1 AND status = 'pending'",
                params![id, crate::time::now_db()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// [`Store::interrupt`] at a stop that gave up waiting for the send, saying in `errmsg`
    /// whether an attempt had started (a row still held back by a rate limit never left).
    pub async fn interrupt_at_stop(&self, id: i64) -> anyhow::Result<bool> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2,
                        errmsg = CASE WHEN attempts = 0
                            THEN 'not sent: the daemon stopped before its first attempt (held back by a rate limit or a pause)'
                            ELSE 'the daemon stopped while it was being sent; it may or may not have arrived' END
                 WHERE id = ?1 AND status = 'pending'",
                params![id, crate::time::now_db()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// [`Store::interrupt`], recording `reason` in `errmsg`.
    pub async fn interrupt_because(&self, id: i64, reason: String) -> anyhow::Result<bool> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2, errmsg = ?3 WHERE id = ?1 AND status = 'pending'",
                params![id, crate::time::now_db(), reason],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// Every row still `pending`.
    pub async fn pending_rows(&self) -> anyhow::Result<Vec<PendingRow>> {
        self.call(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, schedule, trigger, scheduled_at, created_at, app, agent_id, msgtype, payload, attempts, pid, robot
                 FROM sends WHERE status = 'pending' ORDER BY id",
            )?;
            let rows = statement.query_map([], |r| {
                let trigger: String = r.get(2)?;
                Ok(PendingRow {
                    id: r.get(0)?,
                    schedule: r.get(1)?,
                    trigger: Trigger::parse(&trigger).ok_or_else(|| unreadable(2, "trigger"))?,
                    scheduled_at: timestamp(r, 3)?,
                    created_at: timestamp(r, 4)?,
                    app: r.get(5)?,
                    agent_id: r.get(6)?,
                    msgtype: r.get(7)?,
                    payload: r.get(8)?,
                    attempts: r.get(9)?,
                    pid: r.get(10)?,
                    robot: r.get(11)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The slots of `schedule` from `from` on that have a row (cron and catch-up rows, any
    /// status): a seek in the partial unique index.
    pub async fn recorded_slots(
        &self,
        schedule: &str,
        from: DateTime<Utc>,
    ) -> anyhow::Result<HashSet<DateTime<Utc>>> {
        let schedule = schedule.to_string();
        let from = crate::time::to_db(from);
        self.call(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT scheduled_at FROM sends
                 WHERE schedule = ?1 AND scheduled_at >= ?2
                     AND trigger IN ('cron', 'catch_up') AND status <> 'dry_run'",
            )?;
            let rows = statement.query_map(params![schedule, from], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })
        .await
        .map(|rows| {
            rows.iter()
                .filter_map(|at| crate::time::from_db(at))
                .collect()
        })
    }
}

/// The last moment a daemon was known to run on this database: its latest event or scheduled
/// send. `None` when no daemon ever ran here.
pub(super) fn last_alive(conn: &Connection) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let at = conn.query_row(
        "SELECT max(at) FROM (SELECT max(at) AS at FROM events
             UNION ALL SELECT * FROM (SELECT created_at FROM sends
                 WHERE trigger IN ('cron', 'catch_up') AND status <> 'dry_run'
                 ORDER BY id DESC LIMIT 1))",
        [],
        |r| r.get::<_, Option<String>>(0),
    )?;
    Ok(at.as_deref().and_then(crate::time::from_db))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Rows for the store's unit tests.
    use super::*;

    /// A pending `standup` row of `trigger` for the slot 2026-11-30T01:MM:00Z.
    pub fn row(minute: u32, trigger: Trigger) -> NewSend {
        let slot = format!("2026-11-30T01:{minute:02}:00Z");
        NewSend {
            schedule: "standup".into(),
            trigger,
            scheduled_at: crate::time::from_db(&slot).unwrap_or_default(),
            app: "ops".into(),
            agent_id: 1,
            robot: None,
            msgtype: "text".into(),
            payload: format!("{{\"slot\":\"{slot}\"}}"),
            status: Status::Pending,
        }
    }

    /// A new database in a folder of its own (kept as long as the folder is).
    pub fn fresh_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let store = Store::open(&dir.path().join("w.db")).unwrap_or_else(|e| panic!("{e:#}"));
        (dir, store)
    }

    /// WeCom's answer to a send it took.
    pub fn sent() -> Finish {
        Finish {
            msgid: Some("msg1".into()),
            errcode: Some(0),
            errmsg: Some("ok".into()),
            ..Finish::new(Status::Sent, 1)
        }
    }
}
