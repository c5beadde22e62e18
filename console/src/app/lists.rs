//! The Deployments and Bundles lists: newest first, filtered, selection kept by id when
//! rows arrive above it. A deployment's targets are indexed by device so a live update
//! of one target costs O(1) even for a deployment to the whole fleet.

use std::collections::{HashMap, HashSet};

use kernex_common::api::{BundleInfo, Deployment, DeploymentDevice};

use super::fleet::Scroll;
use super::request::DEPLOYMENTS_LIMIT;

#[derive(Debug, Default)]
pub struct Deployments {
    /// Newest first.
    pub items: Vec<Deployment>,
    pub scroll: Scroll,
    pub filter: String,
    /// Enter toggles the larger per-device table of the selected deployment; while it is
    /// open the arrows scroll that table.
    pub expanded: bool,
    pub target_scroll: Scroll,
    /// Per deployment: device id → index in its `devices`.
    index: HashMap<String, HashMap<String, usize>>,
    /// Deployments whose per-device rows changed without saying which (cancel, delivery,
    /// admission changes): re-read when shown.
    pub stale: HashSet<String>,
}

impl Deployments {
    pub fn visible(&self) -> Vec<&Deployment> {
        let f = self.filter.to_lowercase();
        self.items
            .iter()
            .filter(|d| {
                f.is_empty()
                    || d.id.contains(&f)
                    || d.bundle_version.to_lowercase().contains(&f)
                    || d.status.as_str().contains(&f)
                    || d.kind.as_str().contains(&f)
            })
            .collect()
    }

    pub fn selected(&self) -> Option<&Deployment> {
        self.visible().get(self.scroll.selected).copied()
    }

    fn select_id(&mut self, id: Option<String>) {
        if let Some(id) = id
            && let Some(pos) = self.visible().iter().position(|d| d.id == id)
        {
            self.scroll.selected = pos;
        }
    }

    /// Replace the whole list (a full re-read). A list read leaves targets out
    /// (`devices=false`): a deployment that comes without them keeps the targets already
    /// known and is marked stale, so it is re-read in pages when shown.
    pub fn replace(&mut self, mut items: Vec<Deployment>) {
        let keep = self.selected().map(|d| d.id.clone());
        let mut known: HashMap<String, Deployment> =
            self.items.drain(..).map(|d| (d.id.clone(), d)).collect();
        self.stale.clear();
        for d in &mut items {
            if d.devices.is_empty() {
                if let Some(old) = known.remove(&d.id) {
                    d.devices = old.devices;
                    d.target_device_ids = old.target_device_ids;
                }
                self.stale.insert(d.id.clone());
            }
        }
        self.index = items
            .iter()
            .map(|d| (d.id.clone(), target_index(d)))
            .collect();
        self.items = items;
        self.select_id(keep);
    }

    /// Insert or replace one deployment; the selection stays on the same deployment. A
    /// read that left the server before live events we already applied must not undo
    /// them (a failed target back to "installing 0%"): what we know is kept where it is
    /// newer.
    pub fn upsert(&mut self, mut d: Deployment) {
        let keep = self.selected().map(|d| d.id.clone());
        self.stale.remove(&d.id);
        match self.items.iter_mut().find(|x| x.id == d.id) {
            Some(x) => {
                keep_newer(x, &mut d);
                self.index.insert(d.id.clone(), target_index(&d));
                *x = d;
            }
            None => {
                self.index.insert(d.id.clone(), target_index(&d));
                self.items.insert(0, d);
                self.items.sort_by_key(|d| std::cmp::Reverse(d.created_at));
                for gone in self
                    .items
                    .drain((DEPLOYMENTS_LIMIT as usize).min(self.items.len())..)
                {
                    self.index.remove(&gone.id);
                }
            }
        }
        self.select_id(keep);
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Deployment> {
        self.items.iter_mut().find(|d| d.id == id)
    }

    /// Apply one target's new state.
    pub fn set_target(&mut self, id: &str, dev: DeploymentDevice) {
        let Some(d) = self.items.iter_mut().find(|d| d.id == id) else {
            return;
        };
        let index = self.index.entry(id.to_owned()).or_default();
        match index.get(&dev.device_id) {
            Some(&i) if i < d.devices.len() => d.devices[i] = dev,
            _ => {
                index.insert(dev.device_id.clone(), d.devices.len());
                d.devices.push(dev);
            }
        }
    }
}

/// Keep in `new` (a read) whatever `known` has that is newer: the deployment's state
/// when it was updated later, and each target updated later or already final.
fn keep_newer(known: &Deployment, new: &mut Deployment) {
    if known.updated_at > new.updated_at {
        new.status = known.status;
        new.counts = known.counts;
        new.updated_at = known.updated_at;
        new.completed_at = known.completed_at;
    }
    if known.devices.is_empty() {
        return;
    }
    let by_id: HashMap<&str, &DeploymentDevice> = known
        .devices
        .iter()
        .map(|t| (t.device_id.as_str(), t))
        .collect();
    for t in &mut new.devices {
        if let Some(k) = by_id.get(t.device_id.as_str())
            && (k.updated_at > t.updated_at || (k.status.is_final() && !t.status.is_final()))
        {
            *t = (*k).clone();
        }
    }
}

fn target_index(d: &Deployment) -> HashMap<String, usize> {
    d.devices
        .iter()
        .enumerate()
        .map(|(i, t)| (t.device_id.clone(), i))
        .collect()
}

#[derive(Debug, Default)]
pub struct Bundles {
    /// Newest first.
    pub items: Vec<BundleInfo>,
    pub scroll: Scroll,
    pub filter: String,
}

impl Bundles {
    pub fn visible(&self) -> Vec<&BundleInfo> {
        let f = self.filter.to_lowercase();
        self.items
            .iter()
            .filter(|b| {
                f.is_empty()
                    || b.version.to_lowercase().contains(&f)
                    || b.name.to_lowercase().contains(&f)
            })
            .collect()
    }

    pub fn selected(&self) -> Option<&BundleInfo> {
        self.visible().get(self.scroll.selected).copied()
    }

    /// Keep the selection on the same bundle while rows change.
    pub fn edit(&mut self, f: impl FnOnce(&mut Vec<BundleInfo>)) {
        let keep = self.selected().map(|b| b.id.clone());
        f(&mut self.items);
        if let Some(id) = keep
            && let Some(pos) = self.visible().iter().position(|b| b.id == id)
        {
            self.scroll.selected = pos;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use kernex_common::api::{Counts, DeploymentKind, DeploymentStatus, TargetStatus};

    use super::*;

    fn dep(id: &str, targets: &[&str]) -> Deployment {
        let now = Utc::now();
        Deployment {
            id: id.into(),
            kind: DeploymentKind::Deploy,
            bundle_id: "b".into(),
            bundle_version: "1.0.0".into(),
            target_device_ids: targets.iter().map(|t| (*t).to_owned()).collect(),
            status: DeploymentStatus::Pending,
            created_at: now,
            updated_at: now,
            completed_at: None,
            counts: Counts::default(),
            devices: targets
                .iter()
                .map(|t| DeploymentDevice {
                    device_id: (*t).to_owned(),
                    status: TargetStatus::Pending,
                    phase: None,
                    progress_pct: None,
                    error_message: None,
                    log_tail: None,
                    updated_at: now,
                })
                .collect(),
            rollout: None,
        }
    }

    /// A re-read that left the server before a target's failure event arrived must not
    /// put it back to "installing 0%".
    #[test]
    fn a_late_read_does_not_undo_a_failure_seen_live() {
        let mut list = Deployments::default();
        let mut read = dep("a", &["d1"]);
        read.status = DeploymentStatus::InProgress;
        read.devices[0].status = TargetStatus::InProgress;
        read.devices[0].phase = Some(kernex_common::api::Phase::Installing);
        read.devices[0].progress_pct = Some(0);
        let mut live = dep("a", &["d1"]);
        live.status = DeploymentStatus::Failed;
        live.updated_at = read.updated_at + chrono::Duration::seconds(1);
        live.devices[0].status = TargetStatus::Failed;
        live.devices[0].updated_at = live.updated_at;
        list.upsert(live);
        list.upsert(read);
        let a = &list.items[0];
        assert_eq!(a.status, DeploymentStatus::Failed);
        assert_eq!(a.devices[0].status, TargetStatus::Failed);
    }

    /// A list read without targets (`devices=false`) keeps the targets already read and
    /// marks the deployment for a paged re-read; one never read is marked too.
    #[test]
    fn a_list_without_targets_keeps_known_ones_and_marks_them_stale() {
        let mut list = Deployments::default();
        list.upsert(dep("a", &["d1", "d2"]));
        list.replace(vec![dep("b", &[]), dep("a", &[])]);
        let a = list.items.iter().find(|d| d.id == "a").unwrap();
        assert_eq!(a.devices.len(), 2);
        assert_eq!(a.target_device_ids, ["d1", "d2"]);
        assert!(list.stale.contains("a") && list.stale.contains("b"));
        // A live update of a kept target still finds it by index.
        let mut t = a.devices[1].clone();
        t.status = TargetStatus::InProgress;
        list.set_target("a", t);
        let a = list.items.iter().find(|d| d.id == "a").unwrap();
        assert_eq!(a.devices.len(), 2);
        assert_eq!(a.devices[1].status, TargetStatus::InProgress);
        // A full read (with targets) is not stale.
        list.replace(vec![dep("a", &["d1"])]);
        assert!(list.stale.is_empty());
    }
}
