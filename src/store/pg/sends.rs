//! The `sends` table on PostgreSQL: the same claims, leases and rules as
//! [`crate::store::history`] and [`crate::store::replay`], in PostgreSQL's SQL.
//!
//! Every write here may be tried again after a connection broke ([`Pg::retrying`]), so each is
//! written to come out the same when repeated: a claim that finds its slot held by a row of
//! this very claim (same process, same instant) takes it for its own; an update names the row
//! and the state it moves from.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::Pg;
use crate::store::Owner;
use crate::store::history::{Claim, Finish, PendingRow, Status, Trigger, lease_end};
use crate::store::replay::{Recorded, delivered};
use crate::store::unrecorded::Unrecorded;

/// The columns of an insert, in order ($1..$23).
const INSERT: &str = "INSERT INTO sends (schedule, trigger, scheduled_at, created_at, finished_at, status, attempts,
        app, agent_id, msgtype, payload, errcode, errmsg, msgid, invaliduser, invalidparty, invalidtag,
        unlicenseduser, pid, robot, instance, lease_until, claim_key";

/// The unique slot claim, as `ON CONFLICT` names it (the index's columns and predicate).
const ON_SLOT: &str = "ON CONFLICT (schedule, scheduled_at) WHERE trigger IN ('cron', 'catch_up') AND status <> 'dry_run'
     DO NOTHING RETURNING id";

/// A row to insert, every value owned (a retry builds its parameters again).
#[derive(Clone)]
pub(super) struct Insert {
    /// The id the row had before it was lost (kept for the replay's own-row check; a row is
    /// written again under a new id).
    pub id: Option<i64>,
    pub new: crate::store::history::NewSend,
    pub created_at: DateTime<Utc>,
    pub finish: Option<(Finish, DateTime<Utc>)>,
    pub pid: Option<i64>,
    pub instance: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// The attempts counted in an unfinished row (the first, when it follows the claim at once).
    pub attempts: u32,
    /// Random, per insert: what a repeat of it looks for (`sends.claim_key`).
    pub key: String,
}

/// A new random insert key.
fn insert_key() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

impl Insert {
    /// A row created now by this process, claimed with `owner`'s lease while `pending`.
    fn now(new: &crate::store::history::NewSend, finish: Option<&Finish>, owner: &Owner) -> Insert {
        let now = Utc::now();
        Insert {
            attempts: 0,
            id: None,
            new: new.clone(),
            created_at: now,
            finish: finish.map(|f| (f.clone(), now)),
            pid: Some(i64::from(std::process::id())),
            instance: owner.instance.as_deref().map(str::to_string),
            lease_until: Some(lease_end(now, owner.lease)),
            key: insert_key(),
        }
    }
}

/// Inserts `row`: the id of the new row, or `None` when another row holds its slot. With
/// `again` (a repeat after the connection broke), a row this very insert wrote is its result.
async fn insert(
    client: &impl deadpool_postgres::GenericClient,
    row: &Insert,
    again: bool,
) -> Result<Option<i64>, tokio_postgres::Error> {
    if again
        && let Some(found) = client
            .query_opt("SELECT id FROM sends WHERE claim_key = $1", &[&row.key])
            .await?
    {
        return Ok(Some(found.get(0)));
    }
    let status = row
        .finish
        .as_ref()
        .map_or(row.new.status, |(f, _)| f.status);
    let lease_until = row
        .lease_until
        .filter(|_| status == Status::Pending)
        .map(crate::time::to_db);
    let finished_at = row
        .finish
        .as_ref()
        .map(|(_, at)| *at)
        .or_else(|| (row.new.status != Status::Pending).then_some(row.created_at))
        .map(crate::time::to_db);
    let finish = row.finish.as_ref().map(|(f, _)| f);
    let attempts = i64::from(finish.map_or(row.attempts, |f| f.attempts));
    let (scheduled_at, created_at) = (
        crate::time::to_db(row.new.scheduled_at),
        crate::time::to_db(row.created_at),
    );
    let errcode = finish.and_then(|f| f.errcode);
    let text = |pick: fn(&Finish) -> &Option<String>| finish.and_then(|f| pick(f).clone());
    let (errmsg, msgid) = (text(|f| &f.errmsg), text(|f| &f.msgid));
    let (invaliduser, invalidparty) = (text(|f| &f.invaliduser), text(|f| &f.invalidparty));
    let (invalidtag, unlicenseduser) = (text(|f| &f.invalidtag), text(|f| &f.unlicenseduser));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 23] = [
        &row.new.schedule,
        &row.new.trigger.as_str(),
        &scheduled_at,
        &created_at,
        &finished_at,
        &status.as_str(),
        &attempts,
        &row.new.app,
        &row.new.agent_id,
        &row.new.msgtype,
        &row.new.payload,
        &errcode,
        &errmsg,
        &msgid,
        &invaliduser,
        &invalidparty,
        &invalidtag,
        &unlicenseduser,
        &row.pid,
        &row.new.robot,
        &row.instance,
        &lease_until,
        &row.key,
    ];
    // Rows are never written under an id of their own choosing here: setting the identity
    // back in step would race other nodes' inserts. A replayed row gets a new id.
    let sql = format!(
        "{INSERT}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) {ON_SLOT}"
    );
    // Prepared once per connection: the claim runs for every send.
    let statement = client.prepare_cached(&sql).await?;
    match client.query_opt(&statement, &params).await {
        Ok(Some(found)) => return Ok(Some(found.get(0))),
        Ok(None) if !again => return Ok(None),
        // A repeat: the slot (or, for a manual row, the key itself) may be held by the first
        // attempt, whose transaction was still open when the lookup above ran. The insert
        // waited for it to end: look again.
        Ok(None) => {}
        Err(e) if again && is_key_taken(&e) => {}
        Err(e) => return Err(e),
    }
    let found = client
        .query_opt("SELECT id FROM sends WHERE claim_key = $1", &[&row.key])
        .await?;
    Ok(found.map(|r| r.get(0)))
}

/// The insert met a row with its own `claim_key`: the first attempt's.
fn is_key_taken(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("sends_by_claim_key")
    })
}

/// Writes `finish` into row `id`; with `held_by`, only while the row names that pid and
/// instance. Returns how many rows changed.
async fn update_finish(
    client: &impl deadpool_postgres::GenericClient,
    id: i64,
    finish: &Finish,
    finished_at: DateTime<Utc>,
    held_by: Option<(i64, Option<&str>)>,
) -> Result<u64, tokio_postgres::Error> {
    let (check, pid, instance) = match held_by {
        Some((pid, instance)) => (true, Some(pid), instance),
        None => (false, None, None),
    };
    let statement = client
        .prepare_cached(
            "UPDATE sends SET finished_at = $2, status = $3, attempts = $4, errcode = $5, errmsg = $6, msgid = $7,
                    invaliduser = $8, invalidparty = $9, invalidtag = $10, unlicenseduser = $11, lease_until = NULL
             WHERE id = $1 AND (NOT $12 OR (pid IS NOT DISTINCT FROM $13 AND instance IS NOT DISTINCT FROM $14))",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &id,
                &crate::time::to_db(finished_at),
                &finish.status.as_str(),
                &i64::from(finish.attempts),
                &finish.errcode,
                &finish.errmsg,
                &finish.msgid,
                &finish.invaliduser,
                &finish.invalidparty,
                &finish.invalidtag,
                &finish.unlicenseduser,
                &check,
                &pid,
                &instance,
            ],
        )
        .await
}

fn timestamp(row: &Row, column: usize) -> anyhow::Result<DateTime<Utc>> {
    let text: String = row.try_get(column)?;
    crate::time::from_db(&text).ok_or_else(|| {
        anyhow::anyhow!("column {column} is not a timestamp this program writes: {text:?}")
    })
}

impl Pg {
    /// [`crate::store::Store::claim`].
    pub async fn claim(
        &self,
        new: &crate::store::history::NewSend,
        owner: &Owner,
        attempts: u32,
    ) -> anyhow::Result<Claim> {
        let row = Insert {
            attempts,
            ..Insert::now(new, None, owner)
        };
        let mut tried = false;
        let id = self
            .retrying(|client| {
                let row = row.clone();
                let again = std::mem::replace(&mut tried, true);
                async move { insert(&client, &row, again).await }
            })
            .await?;
        Ok(id.map_or(Claim::Taken, Claim::Claimed))
    }

    /// [`crate::store::Store::record_missed`]: one transaction.
    pub async fn record_missed(
        &self,
        rows: &[crate::store::history::NewSend],
        owner: &Owner,
    ) -> anyhow::Result<usize> {
        let rows: Vec<Insert> = rows
            .iter()
            .map(|new| Insert::now(new, None, owner))
            .collect();
        let mut tried = false;
        self.retrying(|mut client| {
            let rows = rows.clone();
            let again = std::mem::replace(&mut tried, true);
            async move {
                let tx = client.transaction().await?;
                let mut written = 0;
                for row in &rows {
                    if insert(&tx, row, again).await?.is_some() {
                        written += 1;
                    }
                }
                tx.commit().await?;
                Ok(written)
            }
        })
        .await
    }

    /// [`crate::store::Store::prune`]: one batch; how many rows went.
    pub async fn prune_batch(&self, before: &str, batch: usize) -> anyhow::Result<usize> {
        let (before, batch) = (before.to_string(), batch as i64);
        self.retrying(|client| {
            let before = before.clone();
            async move {
                client
                    .execute(
                        "DELETE FROM sends WHERE id IN (SELECT id FROM sends
                             WHERE scheduled_at < $1 AND status <> 'pending' LIMIT $2)",
                        &[&before, &batch],
                    )
                    .await
                    .map(|n| n as usize)
            }
        })
        .await
    }

    /// [`crate::store::Store::set_attempts`].
    pub async fn set_attempts(&self, id: i64, attempts: u32) -> anyhow::Result<()> {
        self.retrying(|client| async move {
            let statement = client
                .prepare_cached("UPDATE sends SET attempts = $2 WHERE id = $1")
                .await?;
            client
                .execute(&statement, &[&id, &i64::from(attempts)])
                .await
                .map(|_| ())
        })
        .await
    }

    /// [`crate::store::Store::finish`]: `None` when written, else who holds the row now
    /// (empty: no such row).
    pub async fn finish(
        &self,
        id: i64,
        finish: &Finish,
        me: (i64, Option<String>),
    ) -> anyhow::Result<Option<String>> {
        let finished_at = Utc::now();
        self.retrying(|client| {
            let (finish, me) = (finish.clone(), me.clone());
            async move {
                let held_by = Some((me.0, me.1.as_deref()));
                if update_finish(&client, id, &finish, finished_at, held_by).await? == 1 {
                    return Ok(None);
                }
                // A repeat after a lost commit finds the row finished as this finish says.
                let row = client
                    .query_opt(
                        "SELECT coalesce(instance, '') || ' (pid ' || coalesce(pid::text, '?') || ')',
                                status = $2 AND finished_at = $3 AND pid IS NOT DISTINCT FROM $4
                                    AND instance IS NOT DISTINCT FROM $5
                         FROM sends WHERE id = $1",
                        &[&id, &finish.status.as_str(), &crate::time::to_db(finished_at), &me.0, &me.1],
                    )
                    .await?;
                Ok(match row {
                    None => Some(String::new()),
                    Some(row) if row.get::<_, bool>(1) => None,
                    Some(row) => Some(row.get::<_, String>(0)),
                })
            }
        })
        .await
    }

    /// [`crate::store::Store::interrupt`] and its kin: `errmsg` is the reason, or, with
    /// `None`, kept (or, `at_stop`, said from the attempts made).
    pub async fn interrupt(
        &self,
        id: i64,
        reason: Option<String>,
        at_stop: bool,
        me: (i64, Option<String>),
    ) -> anyhow::Result<bool> {
        let now = crate::time::now_db();
        let mut tried = false;
        self.retrying(|client| {
            let again = std::mem::replace(&mut tried, true);
            let (reason, me, now) = (reason.clone(), me.clone(), now.clone());
            async move {
                let errmsg = if at_stop {
                    "CASE WHEN attempts = 0
                         THEN 'not sent: the daemon stopped before its first attempt (held back by a rate limit or a pause)'
                         ELSE 'the daemon stopped while it was being sent; it may or may not have arrived' END"
                } else {
                    "coalesce($5, errmsg)"
                };
                let sql = format!(
                    "UPDATE sends SET status = 'interrupted', finished_at = $2, lease_until = NULL, errmsg = {errmsg}
                     WHERE id = $1 AND status = 'pending' AND pid IS NOT DISTINCT FROM $3 AND instance IS NOT DISTINCT FROM $4"
                );
                let changed = if at_stop {
                    client.execute(&sql, &[&id, &now, &me.0, &me.1]).await?
                } else {
                    client.execute(&sql, &[&id, &now, &me.0, &me.1, &reason]).await?
                };
                if changed > 0 {
                    return Ok(true);
                }
                if !again {
                    return Ok(false);
                }
                // A repeat after a lost commit: this very interruption.
                let repeat = client
                    .query_opt(
                        "SELECT 1 FROM sends WHERE id = $1 AND status = 'interrupted' AND finished_at = $2
                             AND pid IS NOT DISTINCT FROM $3 AND instance IS NOT DISTINCT FROM $4",
                        &[&id, &now, &me.0, &me.1],
                    )
                    .await?;
                Ok(repeat.is_some())
            }
        })
        .await
    }

    /// [`crate::store::Store::renew_leases`].
    pub async fn renew_leases(&self, owner: &Owner, live: Vec<i64>) -> anyhow::Result<usize> {
        if live.is_empty() {
            return Ok(0);
        }
        let pid = i64::from(std::process::id());
        let instance = owner.instance.as_deref().map(str::to_string);
        let lease = owner.lease;
        self.retrying(|client| {
            let (instance, live) = (instance.clone(), live.clone());
            async move {
                let until = crate::time::to_db(lease_end(Utc::now(), lease));
                client
                    .execute(
                        "UPDATE sends SET lease_until = $1
                         WHERE status = 'pending' AND pid = $2 AND instance IS NOT DISTINCT FROM $3
                             AND lease_until IS NOT NULL AND id = ANY($4)",
                        &[&until, &pid, &instance, &live],
                    )
                    .await
                    .map(|n| n as usize)
            }
        })
        .await
    }

    /// [`crate::store::Store::take_over`].
    pub async fn take_over(&self, row: &PendingRow, owner: &Owner) -> anyhow::Result<bool> {
        let pid = i64::from(std::process::id());
        let instance = owner.instance.as_deref().map(str::to_string);
        let until = crate::time::to_db(lease_end(Utc::now(), owner.lease));
        let (id, seen_pid, seen_instance) = (row.id, row.pid, row.instance.clone());
        let seen_lease = row.lease_until.map(crate::time::to_db);
        let mut tried = false;
        self.retrying(|client| {
            let again = std::mem::replace(&mut tried, true);
            let (instance, until, seen_instance, seen_lease) =
                (instance.clone(), until.clone(), seen_instance.clone(), seen_lease.clone());
            async move {
                let taken = client
                    .execute(
                        "UPDATE sends SET pid = $1, instance = $2, lease_until = $3
                         WHERE id = $4 AND status = 'pending' AND pid IS NOT DISTINCT FROM $5
                             AND instance IS NOT DISTINCT FROM $6 AND lease_until IS NOT DISTINCT FROM $7",
                        &[&pid, &instance, &until, &id, &seen_pid, &seen_instance, &seen_lease],
                    )
                    .await?;
                if taken == 1 {
                    return Ok(true);
                }
                if !again {
                    return Ok(false);
                }
                // A repeat after a lost commit finds this very takeover.
                let repeat = client
                    .query_opt(
                        "SELECT 1 FROM sends WHERE id = $1 AND status = 'pending' AND pid = $2
                             AND instance IS NOT DISTINCT FROM $3 AND lease_until = $4",
                        &[&id, &pid, &instance, &until],
                    )
                    .await?;
                Ok(repeat.is_some())
            }
        })
        .await
    }

    /// [`crate::store::Store::pending_rows`].
    pub async fn pending_rows(&self) -> anyhow::Result<Vec<PendingRow>> {
        let rows = self
            .retrying(|client| async move {
                client
                    .query(
                        "SELECT id, schedule, trigger, scheduled_at, created_at, app, agent_id, msgtype, payload, attempts,
                                pid, robot, instance, lease_until
                         FROM sends WHERE status = 'pending' ORDER BY id",
                        &[],
                    )
                    .await
            })
            .await?;
        rows.iter()
            .map(|r| {
                let trigger: String = r.try_get(2)?;
                let attempts: i64 = r.try_get(9)?;
                Ok(PendingRow {
                    id: r.try_get(0)?,
                    schedule: r.try_get(1)?,
                    trigger: Trigger::parse(&trigger).ok_or_else(|| {
                        anyhow::anyhow!("row {}: not a trigger: {trigger:?}", r.get::<_, i64>(0))
                    })?,
                    scheduled_at: timestamp(r, 3)?,
                    created_at: timestamp(r, 4)?,
                    app: r.try_get(5)?,
                    agent_id: r.try_get(6)?,
                    msgtype: r.try_get(7)?,
                    payload: r.try_get(8)?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    pid: r.try_get(10)?,
                    robot: r.try_get(11)?,
                    instance: r.try_get(12)?,
                    lease_until: match r.try_get::<_, Option<String>>(13)? {
                        Some(_) => Some(timestamp(r, 13)?),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// [`crate::store::Store::recorded_slots`].
    pub async fn recorded_slots(
        &self,
        schedule: &str,
        from: DateTime<Utc>,
    ) -> anyhow::Result<HashSet<DateTime<Utc>>> {
        let (schedule, from) = (schedule.to_string(), crate::time::to_db(from));
        let rows = self
            .retrying(|client| {
                let (schedule, from) = (schedule.clone(), from.clone());
                async move {
                    client
                        .query(
                            "SELECT scheduled_at FROM sends WHERE schedule = $1 AND scheduled_at >= $2
                                 AND trigger IN ('cron', 'catch_up') AND status <> 'dry_run'",
                            &[&schedule, &from],
                        )
                        .await
                }
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| crate::time::from_db(&r.get::<_, String>(0)))
            .collect())
    }

    /// [`crate::store::Store::record_unrecorded`]: the rules of [`crate::store::replay`].
    pub async fn write_unrecorded(
        &self,
        send: &Unrecorded,
        instance: Option<String>,
    ) -> anyhow::Result<Recorded> {
        let key = insert_key();
        let mut tried = false;
        self.retrying(|mut client| {
            let (send, instance, key) = (send.clone(), instance.clone(), key.clone());
            let again = std::mem::replace(&mut tried, true);
            async move {
                let tx = client.transaction().await?;
                let recorded = write_unrecorded(&tx, &send, instance, (key, again)).await?;
                tx.commit().await?;
                Ok(recorded)
            }
        })
        .await
    }
}

/// [`crate::store::replay`]'s `write_unrecorded`, on PostgreSQL. A repeat after a lost commit
/// finds its own row written and keeps it.
async fn write_unrecorded(
    tx: &deadpool_postgres::Transaction<'_>,
    send: &Unrecorded,
    instance: Option<String>,
    (key, again): (String, bool),
) -> Result<Recorded, tokio_postgres::Error> {
    let slot = crate::time::to_db(send.row.scheduled_at);
    let outcome = send
        .outcome
        .as_ref()
        .map(|o| (o.finish.clone(), o.finished_at));
    if let Some(id) = send.id {
        let own = tx
            .query_opt(
                "SELECT status FROM sends WHERE id = $1 AND schedule = $2 AND scheduled_at = $3 FOR UPDATE",
                &[&id, &send.row.schedule, &slot],
            )
            .await?;
        if let Some(own) = own {
            let status = Status::parse(&own.get::<_, String>(0));
            return Ok(match &outcome {
                Some((finish, at))
                    if matches!(status, Some(Status::Pending | Status::Interrupted)) =>
                {
                    update_finish(tx, id, finish, *at, None).await?;
                    Recorded::Written(id)
                }
                _ => Recorded::Kept(id),
            });
        }
    }
    let pid = send.pid.filter(|_| outcome.is_some());
    let mut row = Insert {
        id: send.id,
        new: send.row.clone(),
        created_at: send.created_at,
        finish: outcome.clone(),
        pid,
        instance,
        // A bare claim's row is resolved by the next look at crash rows.
        lease_until: None,
        attempts: 0,
        key,
    };
    if let Some(id) = send.id {
        let used = tx
            .query_opt("SELECT 1 FROM sends WHERE id = $1", &[&id])
            .await?;
        if used.is_some() {
            // Its old id went to another row meanwhile.
            row.id = None;
        }
    }
    if let Some(id) = insert(tx, &row, again).await? {
        return Ok(if outcome.is_none() {
            Recorded::Claimed(id)
        } else {
            Recorded::Written(id)
        });
    }
    let held = tx
        .query_one(
            "SELECT id, status FROM sends WHERE schedule = $1 AND scheduled_at = $2
                 AND trigger IN ('cron', 'catch_up') AND status <> 'dry_run' FOR UPDATE",
            &[&send.row.schedule, &slot],
        )
        .await?;
    let (id, status): (i64, String) = (held.get(0), held.get(1));
    let existing = Status::parse(&status);
    let bare_claim = Finish {
        errmsg: Some("its sender died with the send in flight: it may have been delivered".into()),
        ..Finish::new(Status::Interrupted, 0)
    };
    let correction = match (&outcome, existing) {
        (Some((finish, at)), Some(Status::Pending | Status::Interrupted))
            if delivered(finish.status) =>
        {
            Some((finish.clone(), *at))
        }
        (Some((finish, at)), Some(Status::Missed)) => Some((finish.clone(), *at)),
        (None, Some(Status::Missed)) => Some((bare_claim, send.created_at)),
        _ => None,
    };
    Ok(match correction {
        Some((finish, at)) => {
            update_finish(tx, id, &finish, at, None).await?;
            tracing::warn!(id, schedule = %send.row.schedule, %slot,
                "the slot's row said {status}; it now says {} (a send the database had refused)", finish.status.as_str());
            Recorded::Written(id)
        }
        None => Recorded::Kept(id),
    })
}
