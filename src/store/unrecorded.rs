//! Sends the database refused to record, kept in a file beside it until it takes them.
//!
//! Each process that needs one writes its own `<database>.unrecorded-<pid>-<tag>`, JSON Lines,
//! mode 0600, and holds an flock on it for as long as it lives. A line is either the claim of a
//! send (written and synced *before* the send, when the database would not take the `pending`
//! row) or a send with its outcome. Every daemon start replays the files whose lock is free
//! (their process died) into the database before it reads anything else there, so that a slot
//! that was delivered is recorded `sent`, not taken for missed and sent again.
//!
//! These are separate files, never the database's own: opening and closing them cannot touch
//! SQLite's locks (see [`super::files`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::history::{Finish, NewSend, Recorded};
use super::reserve::Reserve;

/// A send the database has not recorded yet: in memory, and as one line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrecorded {
    /// Pairs the claim and the outcome of one send in the file.
    pub key: String,
    /// The row's id, when its claim is in the database and only the outcome is missing.
    pub id: Option<i64>,
    pub row: NewSend,
    pub created_at: DateTime<Utc>,
    /// The process that made the send.
    pub pid: i64,
    /// How the send ended; `None` for a claim (the send is, or was, in flight).
    pub outcome: Option<Outcome>,
}

/// How a send ended, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub finish: Finish,
    pub finished_at: DateTime<Utc>,
}

impl Unrecorded {
    /// The claim of a send about to be made without a row in the database.
    pub fn claim(row: NewSend, created_at: DateTime<Utc>) -> Unrecorded {
        let key: u64 = rand::rng().random();
        Unrecorded {
            key: format!("{key:016x}"),
            id: None,
            row,
            created_at,
            pid: i64::from(std::process::id()),
            outcome: None,
        }
    }

    /// The outcome of a row already in the database (id) that could not be written.
    pub fn outcome_of(
        id: i64,
        row: NewSend,
        created_at: DateTime<Utc>,
        pid: i64,
        finish: Finish,
    ) -> Unrecorded {
        Unrecorded {
            id: Some(id),
            pid,
            ..Unrecorded::claim(row, created_at).finished(finish)
        }
    }

    /// The slot this send claims, for a cron or catch-up send (manual sends claim none).
    pub fn slot_key(&self) -> Option<(String, DateTime<Utc>)> {
        (self.row.trigger != super::history::Trigger::Manual)
            .then(|| (self.row.schedule.clone(), self.row.scheduled_at))
    }

    /// This send, ended with `finish` now.
    pub fn finished(mut self, finish: Finish) -> Unrecorded {
        self.outcome = Some(Outcome {
            finish,
            finished_at: Utc::now(),
        });
        self
    }
}

/// This process's file (created when first needed), and the way to the files of others.
#[derive(Debug)]
pub struct UnrecordedFiles {
    database: PathBuf,
    own: Mutex<Option<Own>>,
    /// Files of others that could not be read, already reported (once is enough).
    unreadable: Mutex<HashSet<PathBuf>>,
}

#[derive(Debug)]
struct Own {
    path: PathBuf,
    file: File,
}

impl UnrecordedFiles {
    pub fn beside(database: &Path) -> UnrecordedFiles {
        UnrecordedFiles {
            database: database.to_path_buf(),
            own: Mutex::new(None),
            unreadable: Mutex::new(HashSet::new()),
        }
    }

    /// `wecom-notify.db.unrecorded-`: how every such file's name begins.
    fn prefix(&self) -> String {
        let name = self
            .database
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{name}.unrecorded-")
    }

    fn dir(&self) -> PathBuf {
        match self.database.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Appends `entry` and syncs it to disk; returns the file's path. A full disk releases the
    /// reserve and tries once more.
    pub fn append(&self, entry: &Unrecorded, reserve: &Reserve) -> io::Result<PathBuf> {
        // Each line starts on a line of its own, even after a write that a full disk tore.
        let line = format!("\n{}\n", serde_json::to_string(entry)?);
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = |own: &mut Option<Own>| -> io::Result<PathBuf> {
            if own.is_none() {
                *own = Some(self.create()?);
            }
            let Some(own) = own.as_mut() else {
                return Err(io::Error::other("no file"));
            };
            own.file.write_all(line.as_bytes())?;
            own.file.sync_data()?;
            Ok(own.path.clone())
        };
        match attempt(&mut own) {
            // Once more after the reserve is gone, whoever released it (the database thread
            // may have, a moment ago).
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                reserve.release();
                attempt(&mut own)
            }
            result => result,
        }
    }

    fn create(&self) -> io::Result<Own> {
        let tag: u32 = rand::rng().random();
        let name = format!("{}-{tag:08x}", std::process::id());
        // Made and locked under a name no replayer looks at, then renamed: a file under the
        // real name is always locked by its live owner, or free because its owner died.
        let making = self.dir().join(format!(".{}{name}", self.prefix()));
        let path = self.dir().join(format!("{}{name}", self.prefix()));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&making)?;
        let ready = (|| {
            // Held for the life of the process: a free lock tells the next start its owner died.
            file.try_lock()
                .map_err(|e| io::Error::other(e.to_string()))?;
            std::fs::rename(&making, &path)?;
            // The name must survive a crash as well as the lines written under it.
            File::open(self.dir())?.sync_all()
        })();
        if let Err(e) = ready {
            let _ = std::fs::remove_file(&making);
            return Err(e);
        }
        Ok(Own { path, file })
    }

    /// This process's file, if it has one.
    pub fn own_path(&self) -> Option<PathBuf> {
        let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        own.as_ref().map(|own| own.path.clone())
    }

    /// Deletes this process's file if `done` says everything in it is in the database now.
    /// `done` is asked while no line can be appended, so none is deleted unrecorded; while a
    /// line is being written (and synced), this waits for nothing and deletes nothing.
    pub fn clear_if(&self, done: impl FnOnce() -> bool) {
        let mut own = match self.own.try_lock() {
            Ok(own) => own,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if own.is_none() || !done() {
            return;
        }
        if let Some(own) = own.take()
            && let Err(e) = std::fs::remove_file(&own.path)
        {
            tracing::warn!(file = %own.path.display(), "cannot delete the emptied unrecorded-sends file: {e}");
        }
    }

    /// True the first time `path` is found unreadable.
    fn first_complaint(&self, path: &Path) -> bool {
        self.unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf())
    }

    /// Every such file of this database except this process's own.
    pub fn others(&self) -> io::Result<Vec<PathBuf>> {
        let prefix = self.prefix();
        let own = self.own_path();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.dir())? {
            let path = entry?.path();
            let ours = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
            if ours && Some(&path) != own.as_ref() {
                found.push(path);
            }
        }
        found.sort();
        Ok(found)
    }
}

/// A file whose process is gone, locked by this one until it is replayed and deleted.
pub struct Leftover {
    pub path: PathBuf,
    _lock: File,
    /// One entry per send, the last line written for it.
    pub sends: Vec<Unrecorded>,
    /// Lines that did not parse (the last one, torn by a crash or a full disk).
    pub torn_lines: usize,
}

impl Leftover {
    /// Takes `path` over if its process is gone; `None` while its owner still runs.
    pub fn take(path: &Path) -> io::Result<Option<Leftover>> {
        let file = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(file) => file,
            // Its owner deleted it meanwhile: everything in it is recorded.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut sends: Vec<Unrecorded> = Vec::new();
        let mut torn_lines = 0;
        for line in BufReader::new(&file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Unrecorded>(&line) {
                Ok(entry) => match sends.iter_mut().find(|s| s.key == entry.key) {
                    // The outcome supersedes the claim.
                    Some(known) => *known = entry,
                    None => sends.push(entry),
                },
                Err(_) => torn_lines += 1,
            }
        }
        Ok(Some(Leftover {
            path: path.to_path_buf(),
            _lock: file,
            sends,
            torn_lines,
        }))
    }

    /// Deletes the file (every send in it is recorded now).
    pub fn remove(self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl super::Store {
    /// Appends `send` to this process's unrecorded-sends file and syncs it; returns the path.
    pub async fn spill(&self, send: Unrecorded) -> io::Result<PathBuf> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.unrecorded.append(&send, &store.shared.reserve))
            .await
            .map_err(io::Error::other)?
    }

    /// This process's unrecorded-sends file, if it has one.
    pub fn spill_path(&self) -> Option<PathBuf> {
        self.unrecorded.own_path()
    }

    /// Deletes this process's unrecorded-sends file if `done` says everything in it is in
    /// the database (asked while no line can be appended).
    pub fn clear_spill_if(&self, done: impl FnOnce() -> bool) {
        self.unrecorded.clear_if(done);
    }

    /// Unrecorded-sends files of other processes (for `history` to mention them).
    pub fn unrecorded_files(&self) -> Vec<PathBuf> {
        self.unrecorded.others().unwrap_or_default()
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
                replayed.sends += 1;
                if let Recorded::Claimed(id) = recorded {
                    replayed.in_flight.push(id);
                }
            }
            tokio::task::spawn_blocking(move || leftover.remove()).await??;
        }
        Ok(replayed)
    }
}

/// What [`super::Store::replay_unrecorded`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub sends: usize,
    /// Rows written `pending` from bare claims: their senders died with the send in flight,
    /// and crash recovery must resend or close them.
    pub in_flight: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::history::{Recorded, Status, Trigger};

    fn row(slot: &str, status: Status) -> NewSend {
        NewSend {
            schedule: "standup".into(),
            trigger: Trigger::Cron,
            scheduled_at: crate::time::from_db(slot).unwrap(),
            app: "ops".into(),
            agent_id: 1,
            msgtype: "text".into(),
            payload: format!("{{\"slot\":\"{slot}\"}}"),
            status,
        }
    }

    fn sent() -> Finish {
        Finish {
            msgid: Some("msg1".into()),
            errcode: Some(0),
            errmsg: Some("ok".into()),
            ..Finish::new(Status::Sent, 1)
        }
    }

    #[test]
    fn a_live_owners_file_is_left_alone_and_a_dead_ones_read_last_line_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let reserve = Reserve::beside(&db);
        let files = UnrecordedFiles::beside(&db);
        let claim = Unrecorded::claim(row("2026-11-30T01:30:00Z", Status::Pending), Utc::now());
        let path = files.append(&claim, &reserve).unwrap();
        files
            .append(&claim.clone().finished(sent()), &reserve)
            .unwrap();
        assert!(
            Leftover::take(&path).unwrap().is_none(),
            "its owner holds it"
        );
        // A torn line, as a crash mid-write leaves it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\":\"12")
            .unwrap();
        drop(files);
        let leftover = Leftover::take(&path).unwrap().expect("its owner is gone");
        assert_eq!(leftover.torn_lines, 1);
        assert_eq!(leftover.sends.len(), 1, "the outcome supersedes the claim");
        assert_eq!(leftover.sends[0].outcome.as_ref().unwrap().finish, sent());
        leftover.remove().unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn replayed_sends_fill_their_row_correct_a_missed_one_and_keep_a_final_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db")).unwrap();
        let now = Utc::now();
        // Claimed in the database, outcome lost: the row gets it.
        let claimed = row("2026-11-30T01:30:00Z", Status::Pending);
        let Ok(crate::store::history::Claim::Claimed(id)) = store.claim(claimed.clone()).await
        else {
            panic!("claim");
        };
        let outcome = Unrecorded::outcome_of(id, claimed, now, 1, sent());
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
        let unseen =
            Unrecorded::claim(row("2026-11-30T01:31:00Z", Status::Pending), now).finished(sent());
        let Recorded::Written(unseen_id) = store.record_unrecorded(unseen).await.unwrap() else {
            panic!("written");
        };
        // A slot a scan took for missed, though it was sent: corrected.
        let missed = row("2026-11-30T01:32:00Z", Status::Missed);
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
        let failed = Unrecorded::claim(row("2026-11-30T01:30:00Z", Status::Pending), now)
            .finished(Finish::new(Status::Failed, 6));
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
    use crate::store::Store;
    use crate::store::history::{Claim, Recorded, Status, Trigger};

    fn row(minute: u32, trigger: Trigger) -> NewSend {
        let slot = format!("2026-11-30T01:{minute:02}:00Z");
        NewSend {
            schedule: "standup".into(),
            trigger,
            scheduled_at: crate::time::from_db(&slot).unwrap(),
            app: "ops".into(),
            agent_id: 1,
            msgtype: "text".into(),
            payload: format!("{{\"slot\":\"{slot}\"}}"),
            status: Status::Pending,
        }
    }

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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db")).unwrap();
        let new = row(30, Trigger::Cron);
        let id = claimed(&store, new.clone()).await;
        assert!(store.interrupt(id).await.unwrap());
        let outcome = Unrecorded::outcome_of(id, new, Utc::now(), 1, Finish::new(Status::Sent, 1));
        assert_eq!(
            store.record_unrecorded(outcome).await.unwrap(),
            Recorded::Written(id)
        );
        assert_eq!(statuses(&store).await, ["sent"]);
    }

    #[tokio::test]
    async fn a_vanished_manual_row_replayed_twice_is_written_once_under_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.db")).unwrap();
        let new = row(30, Trigger::Manual);
        let id = claimed(&store, new.clone()).await;
        claimed(&store, row(40, Trigger::Manual)).await;
        store
            .call(move |c| c.execute("DELETE FROM sends WHERE id = ?1", [id]))
            .await
            .unwrap();
        let outcome = Unrecorded::outcome_of(id, new, Utc::now(), 1, Finish::new(Status::Sent, 1));
        for _ in 0..2 {
            let recorded = store.record_unrecorded(outcome.clone()).await.unwrap();
            assert!(matches!(recorded, Recorded::Written(i) | Recorded::Kept(i) if i == id));
        }
        assert_eq!(statuses(&store).await, ["sent", "pending"]);
    }
}
