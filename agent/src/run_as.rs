//! `--run-as USER`: bundle scripts run as an unprivileged user while the agent keeps
//! its own (often root) identity for its state dir, key and token.
//!
//! The user is looked up in `/etc/passwd` (name or numeric uid). Before a script runs,
//! its bundle folder is handed to that user (owner changed recursively), and the state
//! dir and `bundles/` become traversable (0711, no listing) so the user can reach the
//! folder; the device key, `device.json` and the queue stay 0600 and unreadable to it.
//! The process gets the user's uid and primary gid; when the agent is root, the standard
//! library drops its supplementary groups (`setgroups(0)`) before the exec.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};

/// The user scripts run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl RunAs {
    /// Look `user` (a name or a numeric uid) up in `/etc/passwd`.
    pub fn lookup(user: &str) -> anyhow::Result<Self> {
        let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
        Self::from_passwd(&passwd, user)
    }

    fn from_passwd(passwd: &str, user: &str) -> anyhow::Result<Self> {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                continue;
            }
            if f[0] == user || f[2] == user {
                return Ok(RunAs {
                    name: f[0].to_owned(),
                    uid: f[2].parse().context("bad uid in /etc/passwd")?,
                    gid: f[3].parse().context("bad gid in /etc/passwd")?,
                    home: f[5].to_owned(),
                });
            }
        }
        bail!("--run-as {user}: no such user in /etc/passwd")
    }

    /// Checked at start: switching users needs root (or being that user already).
    pub fn check_can_switch(&self) -> anyhow::Result<()> {
        let me = rustix::process::geteuid().as_raw();
        if me != 0 && me != self.uid {
            bail!(
                "--run-as {} needs the agent to run as root (it runs as uid {me})",
                self.name
            );
        }
        Ok(())
    }

    /// Let the user reach `bundles/<version>/` (traverse, not list) below `root`.
    pub fn open_path(&self, root: &Path, bundles: &Path) -> std::io::Result<()> {
        for dir in [root, bundles] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
        }
        Ok(())
    }

    /// Hand the bundle folder to the user (recursively), links left as they are.
    pub fn hand_over(&self, dir: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(dir, Some(self.uid), Some(self.gid))?;
        if fs::symlink_metadata(dir)?.is_dir() {
            for entry in fs::read_dir(dir)? {
                self.hand_over(&entry?.path())?;
            }
        }
        Ok(())
    }

    /// `HOME`, `USER` and `LOGNAME` of the user, over the agent's own.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), self.home.clone()),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        app:x:1001:1002::/home/app:/bin/sh\n";

    #[test]
    fn users_are_found_by_name_or_uid() {
        let app = RunAs::from_passwd(PASSWD, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1001, 1002, "/home/app")
        );
        assert_eq!(RunAs::from_passwd(PASSWD, "65534").unwrap().name, "nobody");
        let e = RunAs::from_passwd(PASSWD, "ghost").unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
    }
}
