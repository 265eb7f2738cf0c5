//! Reading `sends` back for `history` and `recall`: filtered listings, per-schedule activity,
//! single rows, and the one write `recall` makes (`recalled_at`).
//!
//! Every query is shaped to an index (see `migrations/sqlite/02-recall`), so that a history of years
//! answers as fast as a new one: listings end in `ORDER BY id DESC LIMIT ?`, and the summary reads
//! one row per schedule instead of grouping the whole table.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde::Serialize;

use super::Store;
use super::history::Status;

/// Every column `history --json` prints, in the table's order (`pid` and `lease_until` are
/// internal bookkeeping).
const COLUMNS: &str = "id, schedule, trigger, scheduled_at, created_at, finished_at, status, attempts, app, \
     agent_id, msgtype, payload, errcode, errmsg, msgid, invaliduser, invalidparty, invalidtag, \
     unlicenseduser, recalled_at, robot, instance";

/// One row of `sends`, with the columns' names and the timestamps exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendRow {
    pub id: i64,
    pub schedule: String,
    pub trigger: String,
    pub scheduled_at: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub app: String,
    pub agent_id: i64,
    pub msgtype: String,
    pub payload: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub msgid: Option<String>,
    pub invaliduser: Option<String>,
    pub invalidparty: Option<String>,
    pub invalidtag: Option<String>,
    pub unlicenseduser: Option<String>,
    pub recalled_at: Option<String>,
    /// The group robot it went through, by name; `None` for an application's row.
    pub robot: Option<String>,
    /// The daemon (`instance:`) that claimed it last: the one that sent it, or that resolved
    /// it after its sender died. `None` for rows written before claims named one.
    pub instance: Option<String>,
    /// Where it went, in words: `app ops` or `robot oncall-group` (never a key). Not a column,
    /// so not in `history --json`, whose keys are the table's columns.
    #[serde(skip)]
    pub destination: String,
}

impl SendRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<SendRow> {
        Ok(SendRow {
            id: row.get(0)?,
            schedule: row.get(1)?,
            trigger: row.get(2)?,
            scheduled_at: row.get(3)?,
            created_at: row.get(4)?,
            finished_at: row.get(5)?,
            status: row.get(6)?,
            attempts: row.get(7)?,
            app: row.get(8)?,
            agent_id: row.get(9)?,
            msgtype: row.get(10)?,
            payload: row.get(11)?,
            errcode: row.get(12)?,
            errmsg: row.get(13)?,
            msgid: row.get(14)?,
            invaliduser: row.get(15)?,
            invalidparty: row.get(16)?,
            invalidtag: row.get(17)?,
            unlicenseduser: row.get(18)?,
            recalled_at: row.get(19)?,
            destination: String::new(),
            robot: row.get(20)?,
            instance: row.get(21)?,
        })
        .map(|mut send: SendRow| {
            send.destination = match &send.robot {
                Some(robot) => format!("robot {robot}"),
                None => format!("app {}", send.app),
            };
            send
        })
    }
}

/// Which rows `history` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFilter {
    pub schedule: Option<String>,
    pub status: Option<Status>,
    /// Rows whose slot (`scheduled_at`) is at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows, newest first.
    pub limit: u32,
}

impl HistoryFilter {
    /// The listing's SQL and its parameters.
    fn to_sql(&self) -> (String, Vec<Value>) {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(schedule) = &self.schedule {
            conditions.push("schedule = ?");
            values.push(Value::Text(schedule.clone()));
        }
        if let Some(status) = self.status {
            conditions.push("status = ?");
            values.push(Value::Text(status.as_str().to_string()));
        }
        if let Some(since) = self.since {
            // The second condition changes no result (every row in the range has an id at least
            // the range's smallest): it lets SQLite walk ids backwards from the newest row and
            // stop at the range's start, instead of either reading the whole table or sorting
            // the whole range. `+id` makes the smallest id come from the slot index alone.
            conditions.push(
                "scheduled_at >= ? AND id >= (SELECT min(+id) FROM sends WHERE scheduled_at >= ?)",
            );
            let since = crate::time::to_db(since);
            values.push(Value::Text(since.clone()));
            values.push(Value::Text(since));
        }
        let mut sql = format!("SELECT {COLUMNS} FROM sends");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        values.push(Value::Integer(i64::from(self.limit)));
        (sql, values)
    }
}

/// What the history says about one schedule, for `history --summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleActivity {
    pub schedule: String,
    /// Its latest `cron` or `catch_up` row: (id, scheduled_at, status).
    pub last_slot: Option<(i64, String, String)>,
    /// `failed` rows whose slot is at or after the summary's `since`.
    pub failed: i64,
}

/// [`COLUMNS`], for the PostgreSQL queries.
pub(super) fn columns() -> &'static str {
    COLUMNS
}

impl Store {
    /// The latest `sent`/`partial` row of `schedule` with exactly `payload`, written at or
    /// after `since`: WeCom's duplicate check would silently drop the same body again.
    pub async fn identical_send_since(
        &self,
        schedule: &str,
        payload: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Option<(i64, String)>> {
        if let Some(pg) = self.pg() {
            return pg.identical_send_since(schedule, payload, since).await;
        }
        let (schedule, payload, since) = (
            schedule.to_string(),
            payload.to_string(),
            crate::time::to_db(since),
        );
        self.call(move |conn| {
            conn.query_row(
                "SELECT id, created_at FROM sends WHERE schedule = ?1 AND payload = ?2 AND created_at >= ?3
                     AND status IN ('sent', 'partial') ORDER BY id DESC LIMIT 1",
                params![schedule, payload, since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .await
    }

    /// The rows `filter` selects, newest (highest id) first.
    pub async fn history(&self, filter: HistoryFilter) -> anyhow::Result<Vec<SendRow>> {
        if let Some(pg) = self.pg() {
            return pg.history(&filter).await;
        }
        self.call(move |conn| {
            let (sql, values) = filter.to_sql();
            let mut statement = conn.prepare(&sql)?;
            statement
                .query_map(params_from_iter(values), SendRow::from_row)?
                .collect()
        })
        .await
    }

    /// One row by its history id.
    pub async fn send_row(&self, id: i64) -> anyhow::Result<Option<SendRow>> {
        if let Some(pg) = self.pg() {
            return pg.send_row(id).await;
        }
        self.call(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM sends WHERE id = ?1"),
                [id],
                SendRow::from_row,
            )
            .optional()
        })
        .await
    }

    /// Per schedule, in the order given and then every other schedule of the history by name:
    /// its last slot and its failures with a slot at or after `since`.
    pub async fn activity(
        &self,
        schedules: Vec<String>,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ScheduleActivity>> {
        if let Some(pg) = self.pg() {
            return pg.activity(schedules, since).await;
        }
        self.call(move |conn| {
            let mut names = schedules.clone();
            for name in schedule_names(conn)? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let failures = failures_since(conn, since)?;
            let mut last = conn.prepare(
                "SELECT id, scheduled_at, status FROM sends
                 WHERE schedule = ?1 AND trigger IN ('cron', 'catch_up')
                 ORDER BY id DESC LIMIT 1",
            )?;
            names
                .into_iter()
                .map(|schedule| {
                    let last_slot = last
                        .query_row([&schedule], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    let failed = failures
                        .iter()
                        .find(|(name, _)| *name == schedule)
                        .map_or(0, |(_, n)| *n);
                    Ok(ScheduleActivity {
                        schedule,
                        last_slot,
                        failed,
                    })
                })
                .collect()
        })
        .await
    }

    /// Records that row `id` was recalled at `at`; false if it already was.
    pub async fn mark_recalled(&self, id: i64, at: DateTime<Utc>) -> anyhow::Result<bool> {
        if let Some(pg) = self.pg() {
            return pg.mark_recalled(id, at).await;
        }
        self.call(move |conn| {
            conn.execute(
                "UPDATE sends SET recalled_at = ?2, recall_started_at = NULL
                 WHERE id = ?1 AND recalled_at IS NULL",
                params![id, crate::time::to_db(at)],
            )
            .map(|n| n > 0)
        })
        .await
    }
}

fn schedule_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(SCHEDULE_NAMES)?;
    statement.query_map([], |r| r.get(0))?.collect()
}

/// `failed` rows per schedule with a slot at or after ?1. Left to itself SQLite prefers the
/// status index (every failure ever) or the schedule index (every row, in GROUP BY order); the
/// slot index reads only the rows of the window.
const FAILURES_SINCE: &str = "SELECT schedule, count(*) FROM sends INDEXED BY sends_by_slot
     WHERE scheduled_at >= ?1 AND status = 'failed' GROUP BY schedule";

/// Every schedule name in the history, by name. A "loose index scan" over `(schedule, id)`: one
/// index seek per name, not a pass over every row.
const SCHEDULE_NAMES: &str = "WITH RECURSIVE names(name) AS (
         SELECT min(schedule) FROM sends
         UNION ALL
         SELECT (SELECT min(schedule) FROM sends WHERE schedule > names.name)
         FROM names WHERE names.name IS NOT NULL
     )
     SELECT name FROM names WHERE name IS NOT NULL";

fn failures_since(conn: &Connection, since: DateTime<Utc>) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut statement = conn.prepare(FAILURES_SINCE)?;
    statement
        .query_map([crate::time::to_db(since)], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str, values: Vec<Value>) -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let details: Vec<String> = statement
            .query_map(params_from_iter(values), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        details.join("; ")
    }

    /// Each filter is answered through an index, never by reading the whole table.
    #[test]
    fn every_filter_is_served_by_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let _store = Store::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let since = Utc::now();
        let cases = [
            (
                HistoryFilter {
                    schedule: Some("standup".into()),
                    status: None,
                    since: None,
                    limit: 50,
                },
                "sends_by_schedule",
            ),
            (
                HistoryFilter {
                    schedule: None,
                    status: Some(Status::Failed),
                    since: None,
                    limit: 50,
                },
                "sends_by_status",
            ),
            (
                HistoryFilter {
                    schedule: None,
                    status: None,
                    since: Some(since),
                    limit: 50,
                },
                "sends_by_slot",
            ),
        ];
        for (filter, index) in cases {
            let (sql, values) = filter.to_sql();
            let plan = plan(&conn, &sql, values);
            assert!(plan.contains(index), "{filter:?}: {plan}");
            assert!(
                !plan.contains("SCAN sends") && !plan.contains("TEMP B-TREE"),
                "{filter:?}: neither a full scan nor a sort: {plan}"
            );
        }
        let since = vec![Value::Text(crate::time::to_db(since))];
        let failures = plan(&conn, FAILURES_SINCE, since);
        assert!(failures.contains("sends_by_slot"), "{failures}");
        let names = plan(&conn, SCHEDULE_NAMES, Vec::new());
        // Shown as a SCAN, but min() stops at the first index entry: one seek per name.
        assert!(names.contains("sends_by_schedule"), "{names}");
    }
}
