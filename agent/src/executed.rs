//! `executed.log`: every deployment id this device ever executed, one per line,
//! appended and fsynced before the result is recorded in `state.json`, read whole at
//! start. `state.json` remembers only the newest 256; this file makes "a deployment id
//! already executed is never executed twice" (SPEC §3 step 9) hold for any age. At ~33
//! bytes a deployment, a device that runs one deployment an hour for ten years keeps
//! under 3 MB.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The durable set of executed deployment ids.
#[derive(Debug)]
pub struct ExecutedLog {
    path: PathBuf,
    ids: Mutex<HashSet<String>>,
}

impl ExecutedLog {
    /// An empty log at `path`, not read (for contexts that never execute anything).
    pub fn empty(path: PathBuf) -> Self {
        ExecutedLog {
            path,
            ids: Mutex::new(HashSet::new()),
        }
    }

    /// Read the log. A last line cut short by a crash (no newline: its append was never
    /// acknowledged) is dropped from the file, so the next append starts a clean line.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            bytes.truncate(complete);
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(complete as u64)?;
            f.sync_all()?;
        }
        let ids = String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(ExecutedLog {
            path: path.to_path_buf(),
            ids: Mutex::new(ids),
        })
    }

    pub fn contains(&self, deployment_id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(deployment_id)
    }

    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append `deployment_id` durably (once; a repeat is a no-op).
    pub fn record(&self, deployment_id: &str) -> io::Result<()> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.contains(deployment_id) {
            return Ok(());
        }
        let new_file = !self.path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(format!("{deployment_id}\n").as_bytes())?;
        f.sync_data()?;
        if new_file && let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        ids.insert(deployment_id.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_a_reopen_beyond_any_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executed.log");
        let log = ExecutedLog::open(&path).unwrap();
        for i in 0..1000 {
            log.record(&format!("dep-{i}")).unwrap();
        }
        log.record("dep-0").unwrap();
        let again = ExecutedLog::open(&path).unwrap();
        assert_eq!(again.len(), 1000);
        assert!(again.contains("dep-0") && again.contains("dep-999"));
        assert!(!again.contains("dep-1000"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            1000
        );
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_next_append_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executed.log");
        std::fs::write(&path, "a1\nb2\nc3-torn").unwrap();
        let log = ExecutedLog::open(&path).unwrap();
        assert!(log.contains("a1") && log.contains("b2") && !log.contains("c3-torn"));
        log.record("d4").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a1\nb2\nd4\n");
    }
}
