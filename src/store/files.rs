//! The database's own files (the database, its -wal and its -shm): private to their owner, and
//! never opened by anything but SQLite.
//!
//! POSIX advisory locks belong to the process, and closing *any* descriptor of a file drops all
//! of the process's locks on it (SQLite's "How To Corrupt An SQLite Database File", section
//! 2.2). A `std::fs::File` of the database, dropped while a connection was open, once let every
//! reader that closed its own connection take itself for the last one, checkpoint, and delete
//! the WAL the daemon was still writing into. So these files are only ever inspected and
//! tightened by path (stat, chmod); creating and opening them is SQLite's business.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::bail;

/// The mode every file of the database gets: it holds live access tokens.
pub const PRIVATE_MODE: u32 = 0o600;

/// The database file and the two SQLite keeps beside it in WAL mode.
pub fn database_files(database: &Path) -> [PathBuf; 3] {
    [
        database.to_path_buf(),
        super::beside(database, "-wal"),
        super::beside(database, "-shm"),
    ]
}

/// Makes each existing file of the database readable and writable by its owner only; returns
/// whether the database file itself exists.
///
/// A file that others may read (an old 0644 database, or one an operator created by hand) is
/// tightened, with a warning, rather than refused: the owner asked for a database here, and
/// refusing would stop the schedules over something this process can repair itself. A file it
/// cannot repair (owned by someone else) is refused, because its tokens would stay exposed.
pub fn make_private(database: &Path) -> anyhow::Result<bool> {
    let mut existed = false;
    for (i, path) in database_files(database).iter().enumerate() {
        let Some(mode) = tighten(path)? else {
            continue;
        };
        existed |= i == 0;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the file had mode {mode:04o}, which let other users read the access tokens (or write rows); changed it to {PRIVATE_MODE:04o}"
            );
        }
    }
    Ok(existed)
}

/// [`make_private`] for a database file SQLite has just created with its default mode: that
/// is repaired without a warning.
pub fn make_new_private(database: &Path) -> anyhow::Result<()> {
    tighten(database).map(|_| ())
}

/// Sets `path` to [`PRIVATE_MODE`] if others may read or write it; returns its mode before,
/// `None` when there is no such file.
fn tighten(path: &Path) -> anyhow::Result<Option<u32>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot inspect {}: {e}", path.display()),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0
        && let Err(e) =
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_MODE))
    {
        bail!(
            "{} has mode {mode:04o}: other users can read the access tokens in it, and this process (uid {}) cannot change that (the file belongs to uid {}: {e}); run `chmod 600 {}` as its owner",
            path.display(),
            // SAFETY: getuid has no preconditions and cannot fail.
            unsafe { libc::getuid() },
            meta.uid(),
            path.display()
        );
    }
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_files_of_the_database_are_tightened_and_private_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let [main, wal, shm] = database_files(&db);
        assert_eq!(wal, dir.path().join("w.db-wal"));
        for (path, mode) in [(&main, 0o644), (&wal, 0o666), (&shm, 0o600)] {
            std::fs::write(path, b"").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        assert!(make_private(&db).unwrap(), "the database exists");
        for path in [&main, &wal, &shm] {
            let mode = path.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        // Missing files are SQLite's to create.
        assert!(!make_private(&dir.path().join("absent.db")).unwrap());
        assert!(!dir.path().join("absent.db").exists());
    }
}
