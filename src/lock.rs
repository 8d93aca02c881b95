//! One daemon per state dir: `berth serve` holds an exclusive `flock` on
//! `<data_dir>/berth.lock` for its whole life, so a second `serve` (or an offline
//! `berth admin gc`) on the same dir is refused with the holder's pid instead of
//! two processes writing one registry and one set of containers.
//!
//! The lock is a kernel `flock`, not the file's existence: it goes away with the
//! process however it ends (`kill -9`, a crash, a reboot), so a stale file never
//! blocks a start. The descriptor is close-on-exec, so the shims and runc that the
//! daemon spawns do not inherit it and cannot keep it past the daemon.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::PathError;

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = "berth.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state dir {dir} is in use by another berth process{}: stop it first (one daemon per state dir)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Path(#[from] PathError),
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the state dir's lock without waiting, and records our pid in it.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| PathError::new("open", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held { dir: data_dir.to_path_buf(), pid: text.trim().parse().ok() });
        }
        Err(e) => return Err(PathError::new("lock", &path, e.into()).into()),
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
        .map_err(|e| PathError::new("write", &path, e))?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("locktest"));
        std::fs::create_dir_all(&dir).unwrap();
        let first = acquire(&dir).unwrap();
        // flock locks belong to the open file description: a second open in the same
        // process conflicts just as another process would.
        match acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        let msg = acquire(&dir).unwrap_err().to_string();
        assert!(msg.contains("in use by another berth process") && msg.contains("pid"), "{msg}");
        drop(first);
        let again = acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
