//! The `sends` table: a row claimed before the HTTP call, finished with WeCom's answer.

use chrono::{DateTime, SubsecRound, Utc};
use std::collections::HashSet;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Owner, Store};

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
    /// The instance that claimed it (`None` for rows written before claims named one).
    pub instance: Option<String>,
    /// Until when its claim holds; `None` for rows written before leases (the pid decides).
    pub lease_until: Option<DateTime<Utc>>,
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

/// When a lease taken at `now` ends, rounded up to the whole second it is stored in: another
/// daemon waits at least the whole lease.
pub(crate) fn lease_end(now: DateTime<Utc>, lease: chrono::Duration) -> DateTime<Utc> {
    let end = now + lease;
    let whole = end.trunc_subsecs(0);
    if whole < end {
        whole + chrono::Duration::seconds(1)
    } else {
        whole
    }
}

/// Inserts a row created now by this process; with `finish`, the row is written finished,
/// else with `attempts` counted. A `pending` row carries `owner`'s lease from now.
fn insert(
    conn: &Connection,
    new: &NewSend,
    finish: Option<&Finish>,
    attempts: u32,
    owner: &Owner,
) -> rusqlite::Result<Claim> {
    let now = Utc::now();
    let pid = Some(i64::from(std::process::id()));
    let lease_until = Some(lease_end(now, owner.lease));
    insert_as(
        conn,
        None,
        new,
        now,
        finish.map(|f| (f, now)),
        attempts,
        pid,
        (owner.instance.as_deref(), lease_until),
    )
}

/// Inserts a row as it was created at `created_at` by process `pid`, under `id` if given,
/// claimed by `instance` with a lease (kept only while the row is `pending`). An unfinished
/// row has `attempts` counted.
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_as(
    conn: &Connection,
    id: Option<i64>,
    new: &NewSend,
    created_at: DateTime<Utc>,
    finish: Option<(&Finish, DateTime<Utc>)>,
    attempts: u32,
    pid: Option<i64>,
    (instance, lease_until): (Option<&str>, Option<DateTime<Utc>>),
) -> rusqlite::Result<Claim> {
    let status = finish.map_or(new.status, |(f, _)| f.status);
    let lease_until = lease_until.filter(|_| status == Status::Pending);
    let finished_at = finish
        .map(|(_, at)| at)
        .or_else(|| (new.status != Status::Pending).then_some(created_at));
    let finish = finish.map(|(f, _)| f);
    // Cached statements: the claim, the attempt count and the finish run for every send.
    let result = conn.prepare_cached(
        "INSERT INTO sends (id, schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app, agent_id,
                            msgtype, payload, errcode, errmsg, msgid, invaliduser, invalidparty, invalidtag,
                            unlicenseduser, pid, robot, instance, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )?.execute(
        params![
            id,
            new.schedule,
            new.trigger.as_str(),
            crate::time::to_db(new.scheduled_at),
            crate::time::to_db(created_at),
            finished_at.map(crate::time::to_db),
            status.as_str(),
            finish.map_or(attempts, |f| f.attempts),
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
            instance,
            lease_until.map(crate::time::to_db),
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
    update_finish_if(conn, id, finish, finished_at, None)
}

/// [`update_finish`], with `held_by` only while the row names that pid and instance.
fn update_finish_if(
    conn: &Connection,
    id: i64,
    finish: &Finish,
    finished_at: DateTime<Utc>,
    held_by: Option<(i64, Option<&str>)>,
) -> rusqlite::Result<usize> {
    let (check, pid, instance) = match held_by {
        Some((pid, instance)) => (true, Some(pid), instance),
        None => (false, None, None),
    };
    conn.prepare_cached(
        "UPDATE sends SET finished_at = ?2, status = ?3, attempts = ?4, errcode = ?5, errmsg = ?6, msgid = ?7,
                invaliduser = ?8, invalidparty = ?9, invalidtag = ?10, unlicenseduser = ?11,
                lease_until = NULL
         WHERE id = ?1 AND (NOT ?12 OR (pid IS ?13 AND instance IS ?14))",
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
        finish.unlicenseduser,
        check,
        pid,
        instance
    ])
}

impl Store {
    /// Writes the row for a fire. For `cron` and `catch_up` rows the unique index on
    /// `(schedule, scheduled_at)` makes this the at-most-once gate of a slot.
    pub async fn claim(&self, new: NewSend) -> anyhow::Result<Claim> {
        self.claim_counting(new, 0).await
    }

    /// [`Store::claim`], with `attempts` already counted in the `pending` row: a send whose
    /// first attempt follows at once counts it here instead of in a write of its own.
    pub async fn claim_counting(&self, new: NewSend, attempts: u32) -> anyhow::Result<Claim> {
        let owner = self.owner();
        if let Some(pg) = self.pg() {
            let claim = pg.claim(&new, &owner, attempts).await?;
            if let Claim::Claimed(id) = claim {
                self.hold(id, true);
            }
            return Ok(claim);
        }
        // Grouped: the claims of one slot's schedules commit together.
        self.call_grouped(move |conn| insert(conn, &new, None, attempts, &owner))
            .await
    }

    /// Writes `missed` rows (already finished) in one transaction; returns how many were new.
    pub async fn record_missed(&self, rows: Vec<NewSend>) -> anyhow::Result<usize> {
        let owner = self.owner();
        if let Some(pg) = self.pg() {
            return pg.record_missed(&rows, &owner).await;
        }
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let mut written = 0;
            for row in &rows {
                if let Claim::Claimed(_) = insert(&tx, row, None, 0, &owner)? {
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
            let deleted = if let Some(pg) = self.pg() {
                pg.prune_batch(&cutoff, batch).await?
            } else {
                self.call(move |conn| {
                    conn.execute(
                        "DELETE FROM sends WHERE id IN (SELECT id FROM sends INDEXED BY sends_by_slot
                             WHERE scheduled_at < ?1 AND status <> 'pending' LIMIT ?2)",
                        params![cutoff, batch as i64],
                    )
                })
                .await?
            };
            total += deleted;
            if deleted < batch {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Counts an attempt before it is made, so a crash mid-send leaves an honest count.
    pub async fn set_attempts(&self, id: i64, attempts: u32) -> anyhow::Result<()> {
        if let Some(pg) = self.pg() {
            return pg.set_attempts(id, attempts).await;
        }
        self.call_grouped(move |conn| {
            conn.prepare_cached("UPDATE sends SET attempts = ?2 WHERE id = ?1")?
                .execute(params![id, attempts])
                .map(|_| ())
        })
        .await
    }

    /// Finishes a row with WeCom's answer. An error unless the row was there to finish: a
    /// send is never reported as recorded when its row is missing.
    ///
    /// Only while the row is this process's: once another daemon took it over (its lease
    /// lapsed), that daemon's resolution stands and this is an error naming it.
    pub async fn finish(&self, id: i64, finish: Finish) -> anyhow::Result<()> {
        let (pid, instance) = self.me();
        self.hold(id, false);
        let holder = if let Some(pg) = self.pg() {
            let me = (pid, instance.as_deref().map(str::to_string));
            pg.finish(id, &finish, me).await?
        } else {
            self.call_grouped(move |conn| {
                let held_by = Some((pid, instance.as_deref()));
                if update_finish_if(conn, id, &finish, Utc::now(), held_by)? == 1 {
                    return Ok(None);
                }
                conn.query_row(
                    "SELECT coalesce(instance, '') || ' (pid ' || coalesce(pid, '?') || ')' FROM sends WHERE id = ?1",
                    [id],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map(|holder| Some(holder.unwrap_or_default()))
            })
            .await?
        };
        match holder {
            None => Ok(()),
            Some(holder) if holder.is_empty() => {
                anyhow::bail!("history row #{id} is missing from the database")
            }
            Some(holder) => anyhow::bail!(
                "history row #{id} was taken over by {holder}: this send's claim lapsed while it was in flight"
            ),
        }
    }

    /// This process as rows name it: its pid and instance.
    fn me(&self) -> (i64, Option<std::sync::Arc<str>>) {
        (i64::from(std::process::id()), self.owner().instance)
    }

    /// Marks a row that is still `pending` as `interrupted`; false if it had already finished.
    pub async fn interrupt(&self, id: i64) -> anyhow::Result<bool> {
        let (pid, instance) = self.me();
        if let Some(pg) = self.pg() {
            let me = (pid, instance.as_deref().map(str::to_string));
            self.hold(id, false);
            return pg.interrupt(id, None, false, me).await;
        }
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2, lease_until = NULL
                 WHERE id = ?1 AND status = 'pending' AND pid IS ?3 AND instance IS ?4",
                params![id, crate::time::now_db(), pid, instance.as_deref()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// [`Store::interrupt`] at a stop that gave up waiting for the send, saying in `errmsg`
    /// whether an attempt had started (a row still held back by a rate limit never left).
    pub async fn interrupt_at_stop(&self, id: i64) -> anyhow::Result<bool> {
        let (pid, instance) = self.me();
        if let Some(pg) = self.pg() {
            let me = (pid, instance.as_deref().map(str::to_string));
            self.hold(id, false);
            return pg.interrupt(id, None, true, me).await;
        }
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2, lease_until = NULL,
                        errmsg = CASE WHEN attempts = 0
                            THEN 'not sent: the daemon stopped before its first attempt (held back by a rate limit or a pause)'
                            ELSE 'the daemon stopped while it was being sent; it may or may not have arrived' END
                 WHERE id = ?1 AND status = 'pending' AND pid IS ?3 AND instance IS ?4",
                params![id, crate::time::now_db(), pid, instance.as_deref()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// [`Store::interrupt`], recording `reason` in `errmsg`.
    pub async fn interrupt_because(&self, id: i64, reason: String) -> anyhow::Result<bool> {
        let (pid, instance) = self.me();
        if let Some(pg) = self.pg() {
            let me = (pid, instance.as_deref().map(str::to_string));
            self.hold(id, false);
            return pg.interrupt(id, Some(reason), false, me).await;
        }
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET status = 'interrupted', finished_at = ?2, errmsg = ?3, lease_until = NULL
                 WHERE id = ?1 AND status = 'pending' AND pid IS ?4 AND instance IS ?5",
                params![id, crate::time::now_db(), reason, pid, instance.as_deref()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// Renews the lease of every row this process holds `pending` (its sends in flight, and
    /// those whose outcome waits for the database): they stay its own for one more lease.
    /// Returns how many rows were renewed.
    pub async fn renew_leases(&self) -> anyhow::Result<usize> {
        let owner = self.owner();
        let pid = i64::from(std::process::id());
        let began = std::time::Instant::now();
        let renewed = if let Some(pg) = self.pg() {
            pg.renew_leases(&owner, self.live()).await?
        } else {
            self.call(move |conn| {
            let until = crate::time::to_db(lease_end(Utc::now(), owner.lease));
            conn.prepare_cached(
                "UPDATE sends SET lease_until = ?1
                 WHERE status = 'pending' AND pid = ?2 AND instance IS ?3 AND lease_until IS NOT NULL",
            )?
            .execute(params![until, pid, owner.instance.as_deref()])
        })
        .await?
        };
        *self
            .shared
            .renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(began);
        Ok(renewed)
    }

    /// Takes row `row` over for this process, to resolve it as a crash row: only if it is still
    /// `pending` with the owner and lease read in `row`, so that of several daemons that saw
    /// it at once exactly one resolves it. True when this process now holds it (with a fresh
    /// lease, renewed like its own sends).
    pub async fn take_over(&self, row: &PendingRow) -> anyhow::Result<bool> {
        let owner = self.owner();
        if let Some(pg) = self.pg() {
            let taken = pg.take_over(row, &owner).await?;
            if taken {
                self.hold(row.id, true);
            }
            return Ok(taken);
        }
        let pid = i64::from(std::process::id());
        let (id, seen_pid, seen_instance) = (row.id, row.pid, row.instance.clone());
        let seen_lease = row.lease_until.map(crate::time::to_db);
        self.call(move |conn| {
            let until = crate::time::to_db(lease_end(Utc::now(), owner.lease));
            conn.execute(
                "UPDATE sends SET pid = ?1, instance = ?2, lease_until = ?3
                 WHERE id = ?4 AND status = 'pending'
                     AND pid IS ?5 AND instance IS ?6 AND lease_until IS ?7",
                params![
                    pid,
                    owner.instance.as_deref(),
                    until,
                    id,
                    seen_pid,
                    seen_instance,
                    seen_lease
                ],
            )
            .map(|n| n == 1)
        })
        .await
    }

    /// Every row still `pending`.
    pub async fn pending_rows(&self) -> anyhow::Result<Vec<PendingRow>> {
        if let Some(pg) = self.pg() {
            return pg.pending_rows().await;
        }
        self.call(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, schedule, trigger, scheduled_at, created_at, app, agent_id, msgtype, payload, attempts, pid, robot,
                        instance, lease_until
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
                    instance: r.get(12)?,
                    lease_until: match r.get::<_, Option<String>>(13)? {
                        Some(text) => Some(
                            crate::time::from_db(&text).ok_or_else(|| unreadable(13, "timestamp"))?,
                        ),
                        None => None,
                    },
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
        if let Some(pg) = self.pg() {
            return pg.recorded_slots(schedule, from).await;
        }
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

#[cfg(test)]
mod lease_tests {
    use super::fixtures::{fresh_store, row, sent};
    use super::*;

    fn owner(instance: &str, lease_seconds: i64) -> Owner {
        Owner {
            instance: Some(instance.into()),
            lease: chrono::Duration::seconds(lease_seconds),
        }
    }

    /// Two nodes (two connections, two instances) see one claim of a third whose lease
    /// lapsed: exactly one takes it over, and only that one may finish it; the dead node's
    /// late answer cannot overwrite the resolution.
    #[tokio::test]
    async fn a_lapsed_claim_is_taken_over_by_one_node_and_finished_only_by_it() {
        let (dir, dead) = fresh_store();
        dead.set_owner(owner("node-dead", 3));
        let claimed_at = Utc::now();
        let Claim::Claimed(id) = dead.claim(row(30, Trigger::Cron)).await.unwrap() else {
            panic!("claimed")
        };
        let first = Store::open(&dir.path().join("w.db")).unwrap();
        first.set_owner(owner("node-one", 3));
        let second = Store::open(&dir.path().join("w.db")).unwrap();
        second.set_owner(owner("node-two", 3));
        let seen = first.pending_rows().await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].instance.as_deref(), Some("node-dead"));
        let lease = seen[0].lease_until.expect("a leased claim");
        // At least the whole lease from the claim (rounded up to the stored second).
        let left = lease - claimed_at;
        assert!(
            left >= chrono::Duration::seconds(3) && left <= chrono::Duration::seconds(5),
            "the lease runs from the claim: {left}"
        );
        let (one, two) = tokio::join!(first.take_over(&seen[0]), second.take_over(&seen[0]));
        let (one, two) = (one.unwrap(), two.unwrap());
        assert!(one != two, "exactly one node takes it over: {one} {two}");
        let (winner, loser) = if one {
            (&first, &second)
        } else {
            (&second, &first)
        };
        // A row read before the takeover no longer matches: taking it again fails.
        assert!(!loser.take_over(&seen[0]).await.unwrap());
        let error = dead.finish(id, sent()).await.unwrap_err().to_string();
        assert!(error.contains("taken over by node-"), "{error}");
        assert!(
            !loser.interrupt(id).await.unwrap(),
            "only the holder closes it"
        );
        winner.renew_leases().await.unwrap();
        winner.finish(id, sent()).await.unwrap();
        let rows = winner.pending_rows().await.unwrap();
        assert!(rows.is_empty(), "finished: {rows:?}");
    }

    /// A renewal moves the lease of this process's pending rows only.
    #[tokio::test]
    async fn a_renewal_extends_this_processs_pending_claims() {
        let (_dir, store) = fresh_store();
        store.set_owner(owner("node-a", 3));
        let Claim::Claimed(_) = store.claim(row(30, Trigger::Cron)).await.unwrap() else {
            panic!("claimed")
        };
        let before = store.pending_rows().await.unwrap()[0].lease_until.unwrap();
        store.set_owner(owner("node-a", 60));
        assert_eq!(store.renew_leases().await.unwrap(), 1);
        let after = store.pending_rows().await.unwrap()[0].lease_until.unwrap();
        assert!(
            after - before > chrono::Duration::seconds(50),
            "{before} → {after}"
        );
        store.set_owner(owner("node-b", 60));
        assert_eq!(store.renew_leases().await.unwrap(), 0, "not node-b's row");
    }
}

#[cfg(test)]
mod grouped_tests {
    use super::fixtures::{fresh_store, row};
    use super::*;

    /// Claims queued together commit in one transaction, and each still gets its own answer:
    /// one row per slot, the doubled claims `Taken`, and a statement that fails (here, on a
    /// table that does not exist) takes none of the others with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_queued_together_each_get_their_own_answer() {
        let (_dir, store) = fresh_store();
        // Keeps the database thread busy for 300 ms while the claims queue up behind it; they
        // are queued once it has started.
        let (started, busy_started) = tokio::sync::oneshot::channel();
        let busy = {
            let store = store.clone();
            let mut started = Some(started);
            tokio::spawn(async move {
                store
                    .call(move |_| {
                        if let Some(started) = started.take() {
                            let _ = started.send(());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), busy_started)
            .await
            .unwrap_or_else(|e| panic!("the busy job never started: {e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut claims = Vec::new();
        for i in 0..40u32 {
            let claimer = store.clone();
            claims.push(tokio::spawn(async move {
                claimer.claim(row(i % 20, Trigger::Cron)).await
            }));
            if i == 10 {
                let store = store.clone();
                claims.push(tokio::spawn(async move {
                    store
                        .call_grouped(|conn| {
                            conn.execute("INSERT INTO no_such_table VALUES (1)", [])
                        })
                        .await
                        .map(|_| Claim::Taken)
                        .map_err(|e| anyhow::anyhow!("failed as it should: {e:#}"))
                }));
            }
        }
        busy.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (mut claimed, mut taken, mut failed) = (Vec::new(), 0, 0);
        for claim in claims {
            match claim.await.unwrap_or_else(|e| panic!("{e}")) {
                Ok(Claim::Claimed(id)) => claimed.push(id),
                Ok(Claim::Taken) => taken += 1,
                Err(e) => {
                    assert!(format!("{e:#}").contains("no_such_table"), "{e:#}");
                    failed += 1;
                }
            }
        }
        claimed.sort();
        claimed.dedup();
        assert_eq!((claimed.len(), taken, failed), (20, 20, 1));
        let rows: i64 = store
            .call(|conn| conn.query_row("SELECT count(*) FROM sends", [], |r| r.get(0)))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            rows, 20,
            "one row per slot, every claim that was answered kept"
        );
        let ids: Vec<i64> = store
            .call(|conn| {
                conn.prepare("SELECT id FROM sends ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            ids, claimed,
            "each claim was answered with its own row's id"
        );
    }
}
