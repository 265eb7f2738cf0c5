//! Writing sends the database refused back into it: the rules that keep a replayed send from
//! ever hiding a delivery, and the replay of the unrecorded-sends files of processes that died.

use rusqlite::{Connection, OptionalExtension, params};

use super::Store;
use super::history::{Claim, Finish, Status, insert_as, update_finish};
use super::unrecorded::{Leftover, Unrecorded};

/// What writing an [`Unrecorded`] send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Its row now says what happened; the row's id.
    Written(i64),
    /// A bare claim, written as a `pending` row (its sender died with the send in flight).
    Claimed(i64),
    /// A row of that slot already had a final outcome (another process recorded it); kept.
    Kept(i64),
}

/// True for an outcome that says WeCom took the message.
pub(crate) fn delivered(status: Status) -> bool {
    matches!(status, Status::Sent | Status::Partial)
}

/// Writes a send the database had refused, without ever hiding that a slot may have been
/// delivered:
/// - its own row (a claim that made it into the database) gets the outcome while it still says
///   `pending`, or `interrupted` (a stop gave up on it, but it ended after all);
/// - a send with no row (never written, or lost) is written whole, under its old id if it had
///   one, so that replaying it again finds it;
/// - when another row holds its slot: a delivered outcome replaces that row's `pending`,
///   `missed` or `interrupted`; an undelivered one replaces only `missed`; a bare claim (its
///   sender died with the send in flight) turns `missed` into `interrupted`; anything else is kept.
fn write_unrecorded(
    conn: &mut Connection,
    send: &Unrecorded,
    instance: Option<&str>,
) -> rusqlite::Result<Recorded> {
    let tx = conn.transaction()?;
    let slot = crate::time::to_db(send.row.scheduled_at);
    let outcome = send.outcome.as_ref().map(|o| (&o.finish, o.finished_at));
    let own_status = match send.id {
        Some(id) => tx
            .query_row(
                "SELECT status FROM sends WHERE id = ?1 AND schedule = ?2 AND scheduled_at = ?3",
                params![id, send.row.schedule, slot],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|status| (id, Status::parse(&status))),
        None => None,
    };
    if let Some((id, status)) = own_status {
        let written = match outcome {
            Some((finish, at)) if matches!(status, Some(Status::Pending | Status::Interrupted)) => {
                update_finish(&tx, id, finish, at)?;
                Recorded::Written(id)
            }
            _ => Recorded::Kept(id),
        };
        tx.commit()?;
        return Ok(written);
    }
    // A bare claim's process is gone (its file's lock was free): no pid, so that crash
    // recovery resends or closes the row rather than wait for a process that reused the pid.
    let pid = send.pid.filter(|_| outcome.is_some());
    // Written with no lease: a bare claim's row is resolved by the next look at crash rows.
    let claimer = (instance, None);
    let insert = |id| {
        insert_as(
            &tx,
            id,
            &send.row,
            send.created_at,
            outcome,
            0,
            pid,
            claimer,
        )
    };
    let mut claim = insert(send.id)?;
    if claim == Claim::Taken && send.id.is_some() {
        // Its old id went to another row meanwhile.
        claim = insert(None)?;
    }
    let recorded = match claim {
        Claim::Claimed(id) if outcome.is_none() => Recorded::Claimed(id),
        Claim::Claimed(id) => Recorded::Written(id),
        Claim::Taken => {
            let (id, status): (i64, String) = tx.query_row(
                "SELECT id, status FROM sends WHERE schedule = ?1 AND scheduled_at = ?2
                     AND trigger IN ('cron', 'catch_up') AND status <> 'dry_run'",
                params![send.row.schedule, slot],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let existing = Status::parse(&status);
            let bare_claim = Finish {
                errmsg: Some(
                    "its sender died with the send in flight: it may have been delivered".into(),
                ),
                ..Finish::new(Status::Interrupted, 0)
            };
            // What the row holding the slot is to say instead, if anything.
            let correction = match (outcome, existing) {
                (Some((finish, at)), Some(Status::Pending | Status::Interrupted))
                    if delivered(finish.status) =>
                {
                    Some((finish, at))
                }
                (Some((finish, at)), Some(Status::Missed)) => Some((finish, at)),
                (None, Some(Status::Missed)) => Some((&bare_claim, send.created_at)),
                _ => None,
            };
            match correction {
                Some((finish, at)) => {
                    update_finish(&tx, id, finish, at)?;
                    tracing::warn!(id, schedule = %send.row.schedule, %slot,
                        "the slot's row said {status}; it now says {} (a send the database had refused)", finish.status.as_str());
                    Recorded::Written(id)
                }
                None => Recorded::Kept(id),
            }
        }
    };
    tx.commit()?;
    Ok(recorded)
}

impl Store {
    /// Writes a send the database had refused (see [`write_unrecorded`]).
    pub async fn record_unrecorded(&self, send: Unrecorded) -> anyhow::Result<Recorded> {
        let key = send.key.clone();
        // The files are this host's: their sends were claimed by this instance.
        let instance = self.owner().instance;
        let recorded = if let Some(pg) = self.pg() {
            let instance = instance.as_deref().map(str::to_string);
            pg.write_unrecorded(&send, instance).await?
        } else {
            self.call(move |conn| write_unrecorded(conn, &send, instance.as_deref()))
                .await?
        };
        // From here on the database's unique slot index guards its slot.
        self.unrecorded.recorded(&key);
        Ok(recorded)
    }

    /// Writes into the database every send left in the unrecorded-sends files of processes that
    /// died, then deletes those files. Files whose process still runs are left to it. The daemon
    /// runs this before it reads anything else from the history, and then every few seconds.
    ///
    /// `at_start`: a file that cannot be read is an error, because the missed-slot scan that
    /// follows would take the slots it records for missed (and `catch_up` would send them
    /// again); later, it is reported once and tried again.
    pub async fn replay_unrecorded(&self, at_start: bool) -> anyhow::Result<Replayed> {
        let files = self.unrecorded.clone();
        let leftovers = tokio::task::spawn_blocking(move || {
            let mut taken = Vec::new();
            for path in files.others()? {
                match Leftover::take(&path) {
                    Ok(Some(leftover)) => taken.push(leftover),
                    Ok(None) => {
                        tracing::debug!(file = %path.display(), "unrecorded sends of a process that still runs; left to it");
                    }
                    Err(e) if at_start => {
                        anyhow::bail!(
                            "cannot read {}, which holds sends an earlier process made but could not record ({e}). Make it readable and writable by this daemon's user; moving it away instead would let this start take those sends for missed (and send them again with catch_up)",
                            path.display()
                        );
                    }
                    Err(e) => {
                        if files.first_complaint(&path) {
                            tracing::error!(file = %path.display(),
                                "cannot read sends an earlier process left unrecorded ({e}); tried again every few seconds. Make the file readable and writable by this daemon's user");
                        }
                    }
                }
            }
            anyhow::Ok(taken)
        })
        .await??;
        let mut replayed = Replayed::default();
        for leftover in leftovers {
            if leftover.torn_lines > 0 {
                tracing::warn!(file = %leftover.path.display(), lines = leftover.torn_lines,
                    "skipped unreadable lines (a write cut short by a crash or a full disk)");
            }
            for send in &leftover.sends {
                let recorded = self.record_unrecorded(send.clone()).await?;
                tracing::warn!(
                    file = %leftover.path.display(),
                    schedule = %send.row.schedule,
                    slot = %crate::time::to_db(send.row.scheduled_at),
                    status = send.outcome.as_ref().map_or("in flight", |o| o.finish.status.as_str()),
                    row = ?recorded,
                    "recorded a send that the database had refused while an earlier process made it"
                );
                if let Recorded::Claimed(id) = recorded {
                    replayed.in_flight.push(id);
                }
            }
            tokio::task::spawn_blocking(move || leftover.remove()).await??;
        }
        Ok(replayed)
    }
}

/// What [`Store::replay_unrecorded`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Rows written `pending` from bare claims: their senders died with the send in flight,
    /// and crash recovery must resend or close them.
    pub in_flight: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::fixtures::{fresh_store, row, sent};
    use crate::store::history::{NewSend, Trigger};
    use chrono::Utc;

    #[tokio::test]
    async fn replayed_sends_fill_their_row_correct_a_missed_one_and_keep_a_final_one() {
        let (_dir, store) = fresh_store();
        let now = Utc::now();
        // Claimed in the database, outcome lost: the row gets it.
        let claimed = row(30, Trigger::Cron);
        let Ok(crate::store::history::Claim::Claimed(id)) = store.claim(claimed.clone()).await
        else {
            panic!("claim");
        };
        let outcome = Unrecorded::outcome_of(id, claimed, now, Some(1), sent());
        assert_eq!(
            store.record_unrecorded(outcome.clone()).await.unwrap(),
            Recorded::Written(id)
        );
        assert_eq!(
            store.record_unrecorded(outcome).await.unwrap(),
            Recorded::Kept(id),
            "replaying twice changes nothing"
        );
        // Never in the database: written whole, as created then.
        let unseen = Unrecorded::claim(row(31, Trigger::Cron), now).finished(sent());
        let Recorded::Written(unseen_id) = store.record_unrecorded(unseen).await.unwrap() else {
            panic!("written");
        };
        // A slot a scan took for missed, though it was sent: corrected.
        let missed = NewSend {
            status: Status::Missed,
            ..row(32, Trigger::Cron)
        };
        store.record_missed(vec![missed.clone()]).await.unwrap();
        let truth = Unrecorded::claim(
            NewSend {
                status: Status::Pending,
                ..missed
            },
            now,
        )
        .finished(sent());
        assert!(matches!(
            store.record_unrecorded(truth).await.unwrap(),
            Recorded::Written(_)
        ));
        // A slot already recorded with a final outcome by another process: kept.
        let failed =
            Unrecorded::claim(row(30, Trigger::Cron), now).finished(Finish::new(Status::Failed, 6));
        assert_eq!(
            store.record_unrecorded(failed).await.unwrap(),
            Recorded::Kept(id)
        );
        let statuses: Vec<(i64, String)> = store
            .call(|c| {
                let mut s = c.prepare("SELECT id, status FROM sends ORDER BY scheduled_at")?;
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            })
            .await
            .unwrap();
        let statuses: Vec<&str> = statuses.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(statuses, ["sent", "sent", "sent"]);
        assert!(unseen_id > id);
    }
}

#[cfg(test)]
mod rules {
    //! What a replayed send may change in a row that holds its slot.
    use super::*;
    use crate::store::history::fixtures::{fresh_store, row};
    use crate::store::history::{NewSend, Trigger};
    use chrono::Utc;

    async fn statuses(store: &Store) -> Vec<String> {
        store
            .call(|c| {
                let mut s = c.prepare("SELECT status FROM sends ORDER BY scheduled_at, id")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap()
    }

    async fn claimed(store: &Store, new: NewSend) -> i64 {
        match store.claim(new).await.unwrap() {
            Claim::Claimed(id) => id,
            Claim::Taken => panic!("taken"),
        }
    }

    #[tokio::test]
    async fn only_a_delivery_replaces_another_senders_pending_row() {
        let (_dir, store) = fresh_store();
        let id = claimed(&store, row(30, Trigger::Cron)).await;
        for undelivered in [Status::Missed, Status::Failed] {
            let send = Unrecorded::claim(row(30, Trigger::Cron), Utc::now())
                .finished(Finish::new(undelivered, 1));
            assert_eq!(
                store.record_unrecorded(send).await.unwrap(),
                Recorded::Kept(id)
            );
        }
        assert_eq!(
            statuses(&store).await,
            ["pending"],
            "still evidence of a send"
        );
        let sent = Unrecorded::claim(row(30, Trigger::Cron), Utc::now())
            .finished(Finish::new(Status::Sent, 1));
        assert_eq!(
            store.record_unrecorded(sent).await.unwrap(),
            Recorded::Written(id)
        );
        assert_eq!(statuses(&store).await, ["sent"]);
    }

    #[tokio::test]
    async fn a_bare_claim_over_a_missed_row_makes_it_interrupted() {
        let (_dir, store) = fresh_store();
        let missed = NewSend {
            status: Status::Missed,
            ..row(30, Trigger::Cron)
        };
        store.record_missed(vec![missed]).await.unwrap();
        let claim = Unrecorded::claim(row(30, Trigger::Cron), Utc::now());
        assert!(matches!(
            store.record_unrecorded(claim).await.unwrap(),
            Recorded::Written(_)
        ));
        assert_eq!(statuses(&store).await, ["interrupted"]);
        // A bare claim with no row of its slot becomes a pending row, with no pid to wait for.
        let claim = Unrecorded::claim(row(31, Trigger::Cron), Utc::now());
        let Recorded::Claimed(id) = store.record_unrecorded(claim).await.unwrap() else {
            panic!("claimed");
        };
        let pending = store.pending_rows().await.unwrap();
        assert_eq!((pending[0].id, pending[0].pid), (id, None));
    }

    #[tokio::test]
    async fn a_late_outcome_corrects_its_own_interrupted_row() {
        let (_dir, store) = fresh_store();
        let new = row(30, Trigger::Cron);
        let id = claimed(&store, new.clone()).await;
        assert!(store.interrupt(id).await.unwrap());
        let outcome =
            Unrecorded::outcome_of(id, new, Utc::now(), Some(1), Finish::new(Status::Sent, 1));
        assert_eq!(
            store.record_unrecorded(outcome).await.unwrap(),
            Recorded::Written(id)
        );
        assert_eq!(statuses(&store).await, ["sent"]);
    }

    #[tokio::test]
    async fn a_vanished_manual_row_replayed_twice_is_written_once_under_its_id() {
        let (_dir, store) = fresh_store();
        let new = row(30, Trigger::Manual);
        let id = claimed(&store, new.clone()).await;
        claimed(&store, row(40, Trigger::Manual)).await;
        store
            .call(move |c| c.execute("DELETE FROM sends WHERE id = ?1", [id]))
            .await
            .unwrap();
        let outcome =
            Unrecorded::outcome_of(id, new, Utc::now(), Some(1), Finish::new(Status::Sent, 1));
        for _ in 0..2 {
            let recorded = store.record_unrecorded(outcome.clone()).await.unwrap();
            assert!(matches!(recorded, Recorded::Written(i) | Recorded::Kept(i) if i == id));
        }
        assert_eq!(statuses(&store).await, ["sent", "pending"]);
    }
}
