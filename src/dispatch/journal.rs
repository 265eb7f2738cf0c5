//! Rows the database refused (locked, read-only, disk full), kept in memory and written as soon
//! as it takes them again. A send is never reported as recorded while its row is only here.

use super::Dispatcher;
use crate::store::history::{Claim, Finish, NewSend};

/// A write the database refused.
#[derive(Debug, Clone)]
pub(super) enum Unwritten {
    /// The outcome of a row that was claimed.
    Finish(i64, Finish),
    /// A whole row: the send went ahead without one.
    Row(NewSend, Finish),
}

impl Dispatcher {
    pub(super) fn keep_unwritten(&self, write: Unwritten, error: &anyhow::Error) {
        let what = match &write {
            Unwritten::Finish(id, finish) => {
                format!("the outcome of send #{id} ({})", finish.status.as_str())
            }
            Unwritten::Row(new, finish) => format!(
                "send of schedule \"{}\" for slot {} ({})",
                new.schedule,
                crate::time::to_db(new.scheduled_at),
                finish.status.as_str()
            ),
        };
        tracing::error!(
            "NOT RECORDED YET: {what}: the database refused the write ({error:#}); it is kept in memory and written when the database accepts writes again"
        );
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(write);
    }

    /// How many writes are waiting for the database.
    pub fn unwritten_count(&self) -> usize {
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Tries the waiting writes again; returns how many are still waiting.
    pub async fn flush_unwritten(&self) -> usize {
        let waiting: Vec<Unwritten> =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        if waiting.is_empty() {
            return 0;
        }
        let total = waiting.len();
        let mut still = Vec::new();
        for write in waiting {
            let result = match &write {
                Unwritten::Finish(id, finish) => self.store.finish(*id, finish.clone()).await,
                Unwritten::Row(new, finish) => match self
                    .store
                    .insert_finished(new.clone(), finish.clone())
                    .await
                {
                    Ok(Claim::Taken) => {
                        tracing::warn!(schedule = %new.schedule, slot = %crate::time::to_db(new.scheduled_at),
                            "another process recorded this slot meanwhile; keeping its row");
                        Ok(())
                    }
                    other => other.map(|_| ()),
                },
            };
            if result.is_err() {
                still.push(write);
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
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(still);
        left
    }

    /// Logs every write still waiting, in full, so that the journal keeps what the database
    /// could not (called when the daemon stops).
    pub fn log_unwritten(&self) {
        for write in self
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            tracing::error!(record = ?write, "UNRECORDED SEND: the database never accepted this row");
        }
    }
}
