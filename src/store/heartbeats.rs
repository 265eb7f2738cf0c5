//! The `heartbeats` table: how far each daemon has fired, so that the start after a crash
//! knows from which slot on a slot without a row was never claimed.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::Store;

/// A daemon's row, as the next start reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub pid: i64,
    /// When it last wrote its row.
    pub alive_at: DateTime<Utc>,
    /// Every slot before this instant had a durable claim (whole seconds, rounded down).
    pub fired_through: DateTime<Utc>,
    /// When it stopped cleanly; `None` while it runs, or when it crashed.
    pub stopped_at: Option<DateTime<Utc>>,
    /// The daemon's `instance:` (`None` for rows written before heartbeats named one).
    pub instance: Option<String>,
}

/// A daemon process as heartbeat rows name it: its instance and its pid (pids repeat across
/// hosts).
pub type ProcessKey = (Option<String>, i64);

fn read_heartbeats(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<Heartbeat>> {
    let mut statement =
        conn.prepare("SELECT pid, alive_at, fired_through, stopped_at, instance FROM heartbeats")?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(pid, alive, through, stopped, instance)| {
            Some(Heartbeat {
                pid,
                alive_at: crate::time::from_db(&alive)?,
                fired_through: crate::time::from_db(&through)?,
                stopped_at: stopped.as_deref().and_then(crate::time::from_db),
                instance,
            })
        })
        .collect())
}

impl Store {
    /// Every daemon's row.
    #[cfg(test)]
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<Heartbeat>> {
        self.call(|conn| read_heartbeats(conn)).await
    }

    /// What the previous runs left, read at one instant: every daemon's row and, for a
    /// database written before heartbeats, the last moment a daemon was known to run there
    /// (its latest event or scheduled send). One read transaction, so that a daemon starting beside
    /// this one is seen whole (its row and its `started` event) or not at all: its start
    /// must not pass for the last sign of life of a previous run.
    pub async fn previous_runs(&self) -> anyhow::Result<(Vec<Heartbeat>, Option<DateTime<Utc>>)> {
        if let Some(pg) = self.pg() {
            return pg.previous_runs().await;
        }
        self.call(|conn| {
            let tx = conn.transaction()?;
            let beats = read_heartbeats(&tx)?;
            let alive = super::history::last_alive(&tx)?;
            tx.commit()?;
            Ok((beats, alive))
        })
        .await
    }

    /// Writes this process's row: alive now, every slot before `fired_through` claimed (or,
    /// with `None`, as far as it last said), and whether it has stopped. With `forget`, the
    /// rows of those processes go in the same transaction (a start that has taken over what
    /// they left).
    pub async fn beat(
        &self,
        started_at: DateTime<Utc>,
        fired_through: Option<DateTime<Utc>>,
        stopped: bool,
        forget: Vec<ProcessKey>,
    ) -> anyhow::Result<()> {
        let pid = i64::from(std::process::id());
        let instance = self.owner().instance;
        if let Some(pg) = self.pg() {
            let instance = instance.as_deref().map(str::to_string);
            return pg
                .beat(instance, started_at, fired_through, stopped, forget)
                .await;
        }
        self.call(move |conn| {
            let tx = conn.transaction()?;
            for (gone_instance, gone) in &forget {
                tx.execute(
                    "DELETE FROM heartbeats WHERE pid = ?1 AND instance IS ?2",
                    params![gone, gone_instance],
                )?;
            }
            let now = crate::time::now_db();
            let Some(fired_through) = fired_through else {
                tx.execute(
                    "UPDATE heartbeats SET alive_at = ?2 WHERE pid = ?1",
                    params![pid, now],
                )?;
                return tx.commit();
            };
            tx.execute(
                "INSERT INTO heartbeats (pid, started_at, alive_at, fired_through, stopped_at, instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pid) DO UPDATE SET started_at = excluded.started_at,
                     alive_at = excluded.alive_at, fired_through = excluded.fired_through,
                     stopped_at = excluded.stopped_at, instance = excluded.instance",
                params![
                    pid,
                    crate::time::to_db(started_at),
                    now,
                    crate::time::to_db(fired_through),
                    stopped.then_some(now.clone()),
                    instance.as_deref(),
                ],
            )?;
            tx.commit()
        })
        .await
    }

    /// This process's `fired_through`, as written.
    #[cfg(test)]
    pub async fn own_heartbeat(&self) -> anyhow::Result<Option<DateTime<Utc>>> {
        use rusqlite::OptionalExtension;
        let pid = i64::from(std::process::id());
        self.call(move |conn| {
            conn.query_row(
                "SELECT fired_through FROM heartbeats WHERE pid = ?1",
                [pid],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .await
        .map(|at| at.as_deref().and_then(crate::time::from_db))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::history::fixtures::fresh_store;

    /// A daemon starting beside another writes its heartbeat row, then its `started` event.
    /// A start reading the previous runs at that moment must see both or neither: an event
    /// without its row would pass for a previous run's last sign of life, and the slots since
    /// it would be recorded missed while the other daemon fires them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_previous_runs_are_read_at_one_instant() {
        let (dir, store) = fresh_store();
        let path = dir.path().join("w.db");
        let starts = 300;
        let writer = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(30))
                .unwrap();
            for i in 1..=starts {
                let at = format!("2026-12-01T10:{:02}:{:02}Z", i / 60, i % 60);
                conn.execute(
                    "INSERT INTO heartbeats (pid, started_at, alive_at, fired_through, stopped_at) VALUES (?1, ?2, ?2, ?2, NULL)",
                    rusqlite::params![i, at],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO events (at, kind, pid) VALUES (?1, 'started', ?2)",
                    rusqlite::params![at, i],
                )
                .unwrap();
            }
        });
        let mut reads = 0;
        let mut in_between = 0;
        loop {
            let done = writer.is_finished();
            let (beats, alive) = store.previous_runs().await.unwrap();
            reads += 1;
            if let Some(alive) = alive {
                // The event of start i has the instant of its row.
                assert!(
                    beats.iter().any(|b| b.alive_at == alive),
                    "read {reads}: the event of {alive} without its heartbeat row: {} rows",
                    beats.len()
                );
                if beats.len() < starts as usize {
                    in_between += 1;
                }
            }
            if done {
                break;
            }
        }
        writer.join().unwrap();
        assert!(
            in_between > 0,
            "no read fell between two starts ({reads} reads)"
        );
    }

    #[tokio::test]
    async fn a_beat_replaces_the_processes_own_row_and_forgets_the_dead() {
        let (_dir, store) = fresh_store();
        let at = |s: &str| crate::time::from_db(s).unwrap();
        store
            .call(|conn| {
                conn.execute(
                    "INSERT INTO heartbeats (pid, started_at, alive_at, fired_through, stopped_at) VALUES (1, '2026-12-01T00:00:00Z', '2026-12-01T00:00:05Z', '2026-12-01T00:00:04Z', NULL)",
                    [],
                )
            })
            .await
            .unwrap();
        let started = at("2026-12-01T10:00:00Z");
        store
            .beat(started, Some(at("2026-12-01T10:00:07.900Z")), false, vec![])
            .await
            .unwrap();
        assert_eq!(store.heartbeats().await.unwrap().len(), 2);
        store
            .beat(
                started,
                Some(at("2026-12-01T10:00:12Z")),
                true,
                vec![(None, 1)],
            )
            .await
            .unwrap();
        let rows = store.heartbeats().await.unwrap();
        assert_eq!(rows.len(), 1, "the dead process's row is gone: {rows:?}");
        assert_eq!(rows[0].pid, i64::from(std::process::id()));
        assert_eq!(rows[0].fired_through, at("2026-12-01T10:00:12Z"));
        assert!(rows[0].stopped_at.is_some());
        store
            .beat(started, Some(at("2026-12-01T10:00:13.999Z")), false, vec![])
            .await
            .unwrap();
        assert_eq!(
            store.own_heartbeat().await.unwrap(),
            Some(at("2026-12-01T10:00:13Z")),
            "rounded down, never up"
        );
        store.beat(started, None, false, vec![]).await.unwrap();
        assert_eq!(
            store.own_heartbeat().await.unwrap(),
            Some(at("2026-12-01T10:00:13Z")),
            "only alive_at is refreshed"
        );
    }
}
