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

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::history::{Finish, NewSend};
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
    /// The process that made the send (unknown for a row that had none).
    pub pid: Option<i64>,
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
            pid: Some(i64::from(std::process::id())),
            outcome: None,
        }
    }

    /// The outcome of a row already in the database (id) that could not be written.
    pub fn outcome_of(
        id: i64,
        row: NewSend,
        created_at: DateTime<Utc>,
        pid: Option<i64>,
        finish: Finish,
    ) -> Unrecorded {
        Unrecorded {
            id: Some(id),
            pid,
            ..Unrecorded::claim(row, created_at).finished(finish)
        }
    }

    /// The slot this send claims, for a cron or catch-up send (manual sends claim none).
    fn slot_key(&self) -> Option<SlotKey> {
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

/// A schedule and one of its slots.
type SlotKey = (String, DateTime<Utc>);

/// This process's file (created when first needed), and the way to the files of others.
#[derive(Debug)]
pub struct UnrecordedFiles {
    database: PathBuf,
    own: Mutex<Option<Own>>,
    /// Claims in this process's file whose send has no row in the database yet, by key, with
    /// the slot each holds: the file's part of the database's unique slot index (a doubled
    /// tick, a re-armed timer), and what keeps the file while a send it claims is in flight.
    claims: Mutex<HashMap<String, Option<SlotKey>>>,
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
            claims: Mutex::new(HashMap::new()),
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

    fn dir(&self) -> &Path {
        super::folder_of(&self.database)
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

    /// Appends the claim of a send like [`UnrecordedFiles::append`]; `None` when this process
    /// claimed the same slot in the file already.
    pub fn append_claim(
        &self,
        claim: &Unrecorded,
        reserve: &Reserve,
    ) -> io::Result<Option<PathBuf>> {
        let slot = claim.slot_key();
        {
            let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() && claims.values().any(|held| *held == slot) {
                return Ok(None);
            }
            claims.insert(claim.key.clone(), slot);
        }
        let appended = self.append(claim, reserve);
        if appended.is_err() {
            self.recorded(&claim.key);
        }
        appended.map(Some)
    }

    /// The send `key` is in the database now (or its claim never made it to the file).
    pub fn recorded(&self, key: &str) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
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

    /// Deletes this process's file once no claim in it lacks its row and `done` says the rest
    /// is in the database. Both are asked while no line can be appended, so none is deleted
    /// unrecorded; while a line is being written (and synced), this waits for nothing and
    /// deletes nothing.
    pub fn clear_if(&self, done: impl FnOnce() -> bool) {
        let mut own = match self.own.try_lock() {
            Ok(own) => own,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let claims_open = !self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if own.is_none() || claims_open || !done() {
            return;
        }
        if let Some(own) = own.take()
            && let Err(e) = std::fs::remove_file(&own.path)
        {
            tracing::warn!(file = %own.path.display(), "cannot delete the emptied unrecorded-sends file: {e}");
        }
    }

    /// True the first time `path` is found unreadable.
    pub(super) fn first_complaint(&self, path: &Path) -> bool {
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

    /// Appends the claim of a send about to be made without a row; `None` when this process
    /// claimed that slot in the file already (it must not be sent twice).
    pub async fn spill_claim(&self, claim: Unrecorded) -> io::Result<Option<PathBuf>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.unrecorded.append_claim(&claim, &store.shared.reserve)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// This process's unrecorded-sends file, if it has one.
    pub fn spill_path(&self) -> Option<PathBuf> {
        self.unrecorded.own_path()
    }

    /// Deletes this process's unrecorded-sends file once every claim in it has its row and
    /// `done` says the rest is in the database (asked while no line can be appended).
    pub fn clear_spill_if(&self, done: impl FnOnce() -> bool) {
        self.unrecorded.clear_if(done);
    }

    /// Unrecorded-sends files of other processes (for `history` to mention them).
    pub fn unrecorded_files(&self) -> Vec<PathBuf> {
        self.unrecorded.others().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::Trigger;
    use crate::store::history::fixtures::{row, sent};

    #[test]
    fn a_live_owners_file_is_left_alone_and_a_dead_ones_read_last_line_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let reserve = Reserve::beside(&db);
        let files = UnrecordedFiles::beside(&db);
        let claim = Unrecorded::claim(row(30, Trigger::Cron), Utc::now());
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
}
