//! The `sends` table: a row claimed before the HTTP call, finished with WeCom's answer.

use chrono::{DateTime, Utc};
use rusqlite::{ErrorCode, params};

use super::Store;

/// Why a row exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// The `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
pub struct NewSend {
    pub schedule: String,
    pub trigger: Trigger,
    pub scheduled_at: DateTime<Utc>,
    pub app: String,
    pub agent_id: i64,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Store {
    /// Writes the row for a fire. For `cron` and `catch_up` rows the unique index on
    /// `(schedule, scheduled_at)` makes this the at-most-once gate of a slot.
    pub async fn claim(&self, new: NewSend) -> anyhow::Result<Claim> {
        self.call(move |conn| {
            let now = crate::time::now_db();
            let finished = (new.status != Status::Pending).then(|| now.clone());
            let result = conn.execute(
                "INSERT INTO sends (schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app, agent_id, msgtype, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10)",
                params![
                    new.schedule,
                    new.trigger.as_str(),
                    crate::time::to_db(new.scheduled_at),
                    now,
                    finished,
                    new.status.as_str(),
                    new.app,
                    new.agent_id,
                    new.msgtype,
                    new.payload
                ],
            );
            match result {
                Ok(_) => Ok(Claim::Claimed(conn.last_insert_rowid())),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                    Ok(Claim::Taken)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Counts an attempt before it is made, so a crash mid-send leaves an honest count.
    pub async fn set_attempts(&self, id: i64, attempts: u32) -> anyhow::Result<()> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET attempts = ?2 WHERE id = ?1",
                params![id, attempts],
            )
            .map(|_| ())
        })
        .await
    }

    /// Finishes a row with WeCom's answer.
    pub async fn finish(&self, id: i64, finish: Finish) -> anyhow::Result<()> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET finished_at = ?2, status = ?3, attempts = ?4, errcode = ?5, errmsg = ?6, msgid = ?7,
                        invaliduser = ?8, invalidparty = ?9, invalidtag = ?10, unlicenseduser = ?11
                 WHERE id = ?1",
                params![
                    id,
                    crate::time::now_db(),
                    finish.status.as_str(),
                    finish.attempts,
                    finish.errcode,
                    finish.errmsg,
                    finish.msgid,
                    finish.invaliduser,
                    finish.invalidparty,
                    finish.invalidtag,
                    finish.unlicenseduser
                ],
            )
            .map(|_| ())
        })
        .await
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
}
