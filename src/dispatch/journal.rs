//! Sends the database refused to record (locked, read-only, disk full, faulty), kept until it
//! takes them: in memory, and synced to this process's unrecorded-sends file beside the
//! database, which the next start replays if this process dies first. A send is never reported
//! as recorded while it is only here.

use std::sync::atomic::Ordering;

use super::Dispatcher;
use crate::store::replay::Recorded;
use crate::store::unrecorded::Unrecorded;

/// A send waiting for the database.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub send: Unrecorded,
    /// Also in the unrecorded-sends file (else in memory only: the file was refused too).
    pub durable: bool,
}

impl Dispatcher {
    /// Keeps `send` until the database takes it; `error` is why it refused.
    pub(super) async fn keep_unwritten(&self, send: Unrecorded, error: &anyhow::Error) {
        let what = describe(&send);
        // Counted from before the file is written until the send is in memory: the file is
        // not deleted meanwhile (see flush_unwritten).
        self.keeping.fetch_add(1, Ordering::SeqCst);
        let spilled = self.store.spill(send.clone()).await;
        match &spilled {
            Ok(file) => tracing::error!(
                "NOT RECORDED YET: {what}: the database refused the write ({error:#}); it is kept in {} and written to the database once it takes writes again",
                file.display()
            ),
            Err(e) => tracing::error!(
                "NOT RECORDED YET: {what}: the database refused the write ({error:#}) and the unrecorded-sends file too ({e}); it is kept in memory and written once the database takes writes again"
            ),
        }
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        unwritten.push(Waiting {
            send,
            durable: spilled.is_ok(),
        });
        self.metrics.set_unrecorded(unwritten.len());
        drop(unwritten);
        self.keeping.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many sends are waiting for the database.
    pub fn unwritten_count(&self) -> usize {
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether every send this process made or refused is in the database (none waits in
    /// memory, none is on its way there).
    pub fn all_written(&self) -> bool {
        self.keeping.load(Ordering::SeqCst) == 0 && self.unwritten_count() == 0
    }

    /// Tries the waiting sends again; returns how many are still waiting. Once none is left
    /// and no send claimed in the unrecorded-sends file is in flight, the file goes.
    pub async fn flush_unwritten(&self) -> usize {
        let waiting: Vec<Waiting> =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        let total = waiting.len();
        let mut still = Vec::new();
        for write in waiting {
            match self.store.record_unrecorded(write.send.clone()).await {
                Ok(Recorded::Written(_) | Recorded::Claimed(_)) => {}
                Ok(Recorded::Kept(id)) => {
                    tracing::warn!(
                        id,
                        "{}: another process recorded this slot meanwhile; keeping its row",
                        describe(&write.send)
                    );
                }
                Err(_) => still.push(write),
            }
        }
        let left = still.len();
        if left < total {
            tracing::info!(
                written = total - left,
                waiting = left,
                "recorded sends the database had refused earlier"
            );
        }
        let left = {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
            unwritten.extend(still);
            unwritten.len()
        };
        self.metrics.set_unrecorded(left);
        self.store.clear_spill_if(|| {
            self.keeping.load(Ordering::SeqCst) == 0
                && self
                    .unwritten
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
        });
        left
    }

    /// Logs every send still waiting, at stop: those in the unrecorded-sends file are recorded
    /// by the next start; the others are logged in full, so the journal keeps what the
    /// database could not.
    pub fn log_unwritten(&self) {
        let file = self.store.spill_path();
        for write in self
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            match (&file, write.durable) {
                (Some(file), true) => tracing::warn!(
                    "{}: not in the database yet; kept in {}, which the next start records",
                    describe(&write.send),
                    file.display()
                ),
                _ => {
                    tracing::error!(record = ?write.send, "UNRECORDED SEND: the database never accepted this row")
                }
            }
        }
    }
}

/// "send of schedule "standup" for slot 2026-11-30T01:30:00Z (sent)".
fn describe(send: &Unrecorded) -> String {
    let status = send
        .outcome
        .as_ref()
        .map_or("in flight", |o| o.finish.status.as_str());
    let id = send.id.map(|id| format!(" (#{id})")).unwrap_or_default();
    format!(
        "send{id} of schedule \"{}\" for slot {} ({status})",
        send.row.schedule,
        crate::time::to_db(send.row.scheduled_at)
    )
}
