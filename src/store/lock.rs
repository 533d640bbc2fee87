//! One writer per collection: an advisory lock on a file beside the collection.
//!
//! The lock is the operating system's (`flock`), so a process that dies, even by
//! SIGKILL, releases it: a lock left by a dead process is simply taken over. The
//! file says who holds the lock (pid, host, start time, run), so that a second
//! writer can name the holder. Readers never take it. It works on local
//! folders; on network file systems `flock` may not be shared between machines.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who holds a collection's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub since: String,
    pub run_id: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} on {} since {} (run {})",
            self.pid, self.host, self.since, self.run_id
        )
    }
}

/// The lock, held until dropped.
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
    /// Who held it before, when a dead process left it behind.
    pub took_over: Option<Holder>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

impl WriterLock {
    /// Take the lock of `collection` at `path`; with `wait`, wait for its holder
    /// to finish (checking every second), else fail naming the holder.
    pub fn acquire(
        path: &Path,
        collection: &str,
        run_id: &str,
        wait: Option<Duration>,
    ) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    match wait {
                        Some(limit) if started.elapsed() < limit => {
                            std::thread::sleep(Duration::from_millis(1000))
                        }
                        _ => {
                            let who = holder
                                .map_or_else(|| "another process".to_string(), |h| h.to_string());
                            let hint = if wait.is_some() {
                                "it is still running after the wait"
                            } else {
                                "wait for it (--wait), or stop it"
                            };
                            return Err(Error::Busy {
                                collection: collection.to_string(),
                                reason: format!("{who} is writing it; {hint}"),
                            });
                        }
                    }
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
            }
        }
        // The lock is ours. What the file says is who had it last: if they had not
        // removed their name, they died holding it.
        let took_over = read_holder(&mut file);
        let me = Holder {
            pid: std::process::id(),
            host: host(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            run_id: run_id.to_string(),
        };
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(serde_json::to_string(&me).expect("serializable").as_bytes())?;
            file.sync_data()
        };
        write(&mut file).map_err(|e| Error::io(path, e))?;
        Ok(WriterLock {
            file,
            path: path.to_path_buf(),
            took_over,
        })
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // A clean exit says so by emptying the file; the lock itself goes with the file handle.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
        let _ = &self.path;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_told_who_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.lock");
        let first = WriterLock::acquire(&path, "c", "run-1", None).unwrap();
        assert_eq!(first.took_over, None);
        let err = WriterLock::acquire(&path, "c", "run-2", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("run run-1") && err.contains("--wait"), "{err}");
        drop(first);
        let second = WriterLock::acquire(&path, "c", "run-2", None).unwrap();
        assert_eq!(second.took_over, None, "a clean exit leaves no name behind");
    }
}
