//! Starting a deploy: the bundle picker marks every bundle that has failed somewhere
//! (and on how many devices, from what the console knows: the deployments it holds and
//! each device's last result), and starts on the newest one that has not.

use std::collections::{HashMap, HashSet};

use kernex_common::api::{ResultStatus, TargetStatus};

use super::dialog::{self, BundleChoice, Dialog, PickBundle, TargetChoices};
use super::{App, Mode, View};

impl App {
    /// Devices each bundle version failed on, as far as the console knows. Targets of
    /// deployments not read in full count by their deployment's tally (they cannot be
    /// told apart from devices counted otherwise, so the larger figure wins).
    pub fn failed_by_version(&self) -> HashMap<String, usize> {
        let mut ids: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut tallied: HashMap<&str, (usize, u64)> = HashMap::new();
        for d in &self.deployments.items {
            let v = d.bundle_version.as_str();
            if d.devices.is_empty() {
                tallied.entry(v).or_default().1 += d.counts.failed;
                continue;
            }
            for t in d
                .devices
                .iter()
                .filter(|t| t.status == TargetStatus::Failed)
            {
                ids.entry(v).or_default().insert(&t.device_id);
                tallied.entry(v).or_default().0 += 1;
            }
        }
        for dev in self.fleet.all() {
            if let Some(l) = dev
                .last_deployment
                .as_ref()
                .filter(|l| l.status == ResultStatus::Failed)
            {
                ids.entry(&l.bundle_version)
                    .or_default()
                    .insert(&dev.device_id);
            }
        }
        let mut out: HashMap<String, usize> = HashMap::new();
        for (v, set) in &ids {
            out.insert((*v).to_owned(), set.len());
        }
        for (v, (targets, tally)) in tallied {
            let n = targets + tally as usize;
            let e = out.entry(v.to_owned()).or_default();
            *e = (*e).max(n);
        }
        out.retain(|_, n| *n > 0);
        out
    }

    pub(super) fn start_deploy(&mut self) {
        if self.bundles.items.is_empty() {
            return self.warn("no bundles on the server yet: push one first");
        }
        let selected = match self.view {
            View::Bundles => None,
            _ => self.target_device().map(|d| d.device_id),
        };
        let targets = TargetChoices {
            marked: self.fleet.marked.iter().cloned().collect(),
            selected,
            tag_counts: self.fleet.tag_counts(50),
        };
        let failed = self.failed_by_version();
        if self.view == View::Bundles {
            let Some(b) = self.bundles.selected().map(|b| b.version.clone()) else {
                return self.warn("no bundle selected");
            };
            let n = failed.get(&b).copied().unwrap_or(0);
            let pick = dialog::PickTargets::new(b, n, targets);
            self.mode = Mode::Dialog(Dialog::PickTargets(pick));
            return;
        }
        let bundles: Vec<BundleChoice> = self
            .bundles
            .items
            .iter()
            .map(|b| BundleChoice {
                version: b.version.clone(),
                name: b.name.clone(),
                size_bytes: b.size_bytes,
                failed: failed.get(&b.version).copied().unwrap_or(0),
            })
            .collect();
        // Enter, Enter, y must not roll out a known-bad bundle: start on the newest one
        // that has not failed anywhere.
        let start = bundles.iter().position(|b| b.failed == 0).unwrap_or(0);
        self.mode = Mode::Dialog(Dialog::PickBundle(PickBundle {
            bundles,
            selected: start,
            targets,
        }));
    }
}
