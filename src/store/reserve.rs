//! Disk kept in reserve beside the database: a preallocated file that is deleted the moment a
//! write finds the disk full, so that the claims and outcomes of sends can still be recorded.
//!
//! Why: a send is made only once its claim is durable (see `dispatch`), so a full disk would
//! otherwise stop every schedule; and an outcome that cannot be written leaves a delivered slot
//! looking unsent to the next start. The reserve buys room for a few hundred sends while the
//! operator frees space. It is put back once the disk has room for it twice over.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// How much disk the reserve holds: the WAL frames of a few hundred sends.
pub const RESERVE_BYTES: u64 = 8 * 1024 * 1024;

/// The reserve of one database: `<database>.reserve`.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    pub fn beside(database: &Path) -> Reserve {
        Reserve {
            path: super::beside(database, ".reserve"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the reserve holds its room.
    pub fn is_held(&self) -> bool {
        self.path.metadata().is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }

    /// Deletes the reserve; true if there was one to free.
    pub fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::error!(
                    reserve = %self.path.display(),
                    "the disk holding the database is full: released the {} MiB kept in reserve so that sends can still be recorded; free space on it now",
                    RESERVE_BYTES / (1024 * 1024)
                );
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(reserve = %self.path.display(), "cannot release the disk reserve: {e}");
                false
            }
        }
    }

    /// Creates the reserve if it is missing and the disk has room for it twice over (taking
    /// the last free bytes back would only make the next write fail). True if it was created.
    pub fn replenish(&self) -> io::Result<bool> {
        if self.is_held() {
            return Ok(false);
        }
        if free_bytes(super::folder_of(&self.path))? < 2 * RESERVE_BYTES {
            return Ok(false);
        }
        // Built under another name and renamed, so a reserve is never half there.
        let partial = super::beside(&self.path, ".partial");
        let built = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            let len = libc::off_t::try_from(RESERVE_BYTES).map_err(io::Error::other)?;
            // SAFETY: a valid open descriptor, offset 0 and a positive length.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            file.sync_all()?;
            std::fs::rename(&partial, &self.path)
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        Ok(true)
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
// fsblkcnt_t and c_ulong are 32 bits wide on some targets.
#[allow(clippy::useless_conversion)]
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.push(0);
    // SAFETY: statvfs only writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr().cast(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_built_whole_released_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::beside(&dir.path().join("w.db"));
        assert!(!reserve.is_held());
        assert!(reserve.replenish().unwrap(), "the temp dir has room");
        assert!(reserve.is_held());
        let meta = reserve.path().metadata().unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!reserve.replenish().unwrap(), "already held");
        assert!(reserve.release());
        assert!(!reserve.release(), "nothing left to release");
        assert!(!reserve.is_held());
    }
}
