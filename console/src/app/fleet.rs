//! The fleet as the console knows it: every device summary, indexed by id, plus the
//! filtered and sorted order the table shows. Built for 100,000 devices: an update is a
//! hash lookup, re-sorting happens at most once per frame, and only the visible rows are
//! ever turned into widgets.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use kernex_common::api::events::HeartbeatEvent;
use kernex_common::api::{Admission, DeviceSummary, OnlineStatus};

/// The Fleet table's sort column (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Id,
    Status,
    /// Failed last deployments first.
    LastDeploy,
    Version,
    Cpu,
    LastSeen,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Id => SortKey::Status,
            SortKey::Status => SortKey::LastDeploy,
            SortKey::LastDeploy => SortKey::Version,
            SortKey::Version => SortKey::Cpu,
            SortKey::Cpu => SortKey::LastSeen,
            SortKey::LastSeen => SortKey::Id,
        }
    }

    /// The Fleet column this key sorts by.
    pub fn column(self) -> &'static str {
        match self {
            SortKey::Id => "ID",
            SortKey::Status => "STATUS",
            SortKey::LastDeploy => "LAST DEPLOY",
            SortKey::Version => "VERSION",
            SortKey::Cpu => "CPU",
            SortKey::LastSeen => "SEEN",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::Status => "status",
            SortKey::LastDeploy => "last deploy",
            SortKey::Version => "version",
            SortKey::Cpu => "cpu",
            SortKey::LastSeen => "last seen",
        }
    }
}

/// A selection and scroll offset over a list of `len` rows. The offset is adjusted while
/// rendering (when the height is known), hence the `Cell`.
#[derive(Debug, Default, Clone)]
pub struct Scroll {
    pub selected: usize,
    offset: Cell<usize>,
}

impl Scroll {
    pub fn up(&mut self, n: usize) {
        self.selected = self.selected.saturating_sub(n);
    }

    pub fn down(&mut self, n: usize, len: usize) {
        self.selected = (self.selected + n).min(len.saturating_sub(1));
    }

    pub fn clamp(&mut self, len: usize) {
        self.selected = self.selected.min(len.saturating_sub(1));
    }

    /// The first row to draw so that the selection is visible in `height` rows.
    pub fn window(&self, height: usize, len: usize) -> usize {
        let mut off = self.offset.get().min(len.saturating_sub(height));
        if self.selected < off {
            off = self.selected;
        } else if height > 0 && self.selected >= off + height {
            off = self.selected + 1 - height;
        }
        self.offset.set(off);
        off
    }
}

/// One device with what the console derives from the live stream.
#[derive(Debug, Clone)]
pub struct Row {
    pub summary: DeviceSummary,
    /// The gap between its last two heartbeats: the cadence we expect.
    pub interval_s: Option<f64>,
    /// Resync generation that last saw it (rows missing from a full re-read are gone).
    generation: u64,
    /// Resync generation during which an event last replaced it: a page of that re-read
    /// may be older than the event and must not undo it (an accept, new tags).
    event_generation: u64,
}

#[derive(Debug, Default)]
pub struct Fleet {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    /// Indices into `rows`, filtered and sorted: what the table shows.
    visible: Vec<usize>,
    /// The order must be rebuilt before the next frame (rows added or removed, filter or
    /// sort changed).
    dirty: bool,
    /// Live figures changed that the order depends on: rebuild, but at most once a
    /// second (re-sorting 100,000 rows on every frame of a heartbeat storm is waste).
    stale: bool,
    rebuilt_at: Option<std::time::Instant>,
    pub sort: SortKey,
    /// `S`: the sort order upside down.
    pub reversed: bool,
    pub filter: String,
    pub scroll: Scroll,
    pub marked: BTreeSet<String>,
    /// Devices online now, kept exact as rows change.
    online: usize,
    /// The current full re-read: rows it (or any event since) saw carry it.
    pub generation: u64,
    /// The device to keep selected across a rebuild after rows were removed.
    keep: Option<String>,
    /// Since when the rows are only the last known state: the console lost the server
    /// then (it hears no heartbeats, so silence says nothing about the devices). Cleared
    /// when a full re-read after reconnecting has finished.
    pub stale_since: Option<DateTime<Utc>>,
}

impl Fleet {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn online(&self) -> usize {
        self.online
    }

    pub fn visible_len(&self) -> usize {
        self.visible.len()
    }

    pub fn get(&self, id: &str) -> Option<&DeviceSummary> {
        self.index.get(id).map(|&i| &self.rows[i].summary)
    }

    /// The visible rows `start..start+n`, in display order.
    pub fn window(&self, start: usize, n: usize) -> impl Iterator<Item = &DeviceSummary> {
        self.visible
            .iter()
            .skip(start)
            .take(n)
            .filter_map(|&i| self.rows.get(i))
            .map(|r| &r.summary)
    }

    /// Every device, filtered or not, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &DeviceSummary> {
        self.rows.iter().map(|r| &r.summary)
    }

    pub fn selected(&self) -> Option<&DeviceSummary> {
        self.visible
            .get(self.scroll.selected)
            .and_then(|&i| self.rows.get(i))
            .map(|r| &r.summary)
    }

    /// Accepted devices per tag, most common first, at most `n` tags (one pass).
    pub fn tag_counts(&self, n: usize) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for r in &self.rows {
            if r.summary.admission == Admission::Accepted {
                for t in &r.summary.tags {
                    *counts.entry(t.as_str()).or_default() += 1;
                }
            }
        }
        let mut out: Vec<(String, usize)> =
            counts.into_iter().map(|(t, c)| (t.to_owned(), c)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }

    /// Insert or replace a device from an event or a reply about that one device.
    pub fn upsert(&mut self, summary: DeviceSummary) {
        self.put(summary, true);
    }

    /// Insert or replace a device from a page of a full re-read.
    pub fn upsert_page(&mut self, summary: DeviceSummary) {
        self.put(summary, false);
    }

    /// A page read before a newer heartbeat arrived must not roll the live figures back,
    /// nor undo an event seen since the re-read began.
    fn put(&mut self, summary: DeviceSummary, from_event: bool) {
        let generation = self.generation;
        match self.index.get(&summary.device_id) {
            Some(&i) => {
                let reorder = self.order_may_change();
                let row = &mut self.rows[i];
                let was_online = row.summary.status == OnlineStatus::Online;
                row.generation = generation;
                if from_event {
                    row.event_generation = generation;
                } else if row.event_generation == generation {
                    return;
                }
                let newer = summary.last_heartbeat >= row.summary.last_heartbeat;
                if newer {
                    row.summary = summary;
                } else {
                    // Keep the live figures; take the rest (tags, admission).
                    let live = row.summary.clone();
                    row.summary = DeviceSummary {
                        status: live.status,
                        agent_status: live.agent_status,
                        current_bundle_version: live.current_bundle_version,
                        agent_version: live.agent_version,
                        last_heartbeat: live.last_heartbeat,
                        cpu_pct: live.cpu_pct,
                        memory_mb: live.memory_mb,
                        config_version: live.config_version,
                        ..summary
                    };
                }
                let online = row.summary.status == OnlineStatus::Online;
                self.tally(was_online, online);
                // A changed row moves only in an order that depends on its fields.
                self.stale |= reorder;
            }
            None => {
                self.tally(false, summary.status == OnlineStatus::Online);
                self.index
                    .insert(summary.device_id.clone(), self.rows.len());
                self.rows.push(Row {
                    summary,
                    interval_s: None,
                    generation,
                    event_generation: if from_event { generation } else { 0 },
                });
                self.dirty = true;
            }
        }
    }

    /// Does the visible order depend on live fields (anything but the id)?
    fn order_may_change(&self) -> bool {
        self.sort != SortKey::Id || !self.filter.is_empty()
    }

    /// Keep the online count exact as rows change (no per-frame count of the fleet).
    fn tally(&mut self, was_online: bool, online: bool) {
        match (was_online, online) {
            (false, true) => self.online += 1,
            (true, false) => self.online = self.online.saturating_sub(1),
            _ => {}
        }
    }

    pub fn remove(&mut self, id: &str) {
        if !self.index.contains_key(id) {
            return;
        }
        // `visible` holds row indices that swap_remove invalidates: remember the
        // selection by id and drop the order until the next rebuild.
        if self.keep.is_none() {
            self.keep = self.selected().map(|d| d.device_id.clone());
        }
        self.visible.clear();
        let Some(i) = self.index.remove(id) else {
            return;
        };
        let gone = self.rows.swap_remove(i);
        self.tally(gone.summary.status == OnlineStatus::Online, false);
        if let Some(moved) = self.rows.get(i) {
            self.index.insert(moved.summary.device_id.clone(), i);
        }
        self.marked.remove(id);
        self.dirty = true;
    }

    /// After the last page of a full re-read: drop devices the server no longer has
    /// (neither the re-read nor any event since it began saw them).
    pub fn retain_current(&mut self) {
        let generation = self.generation;
        let gone: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.generation != generation)
            .map(|r| r.summary.device_id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Apply a `heartbeat` event. Returns false for a device we don't know yet.
    pub fn heartbeat(&mut self, beat: &HeartbeatEvent) -> bool {
        let Some(&i) = self.index.get(&beat.device_id) else {
            return false;
        };
        let row = &mut self.rows[i];
        let s = &mut row.summary;
        if let Some(ts) = beat.timestamp {
            if let Some(prev) = s.last_heartbeat {
                let gap = (ts - prev).num_milliseconds() as f64 / 1000.0;
                if gap > 0.5 {
                    row.interval_s = Some(gap);
                }
            }
            s.last_heartbeat = Some(ts);
        }
        if let Some(v) = beat.cpu_pct {
            s.cpu_pct = Some(v);
        }
        if let Some(v) = beat.memory_mb {
            s.memory_mb = Some(v);
        }
        if let Some(v) = &beat.status {
            s.agent_status = Some(v.clone());
        }
        if let Some(v) = &beat.agent_version {
            s.agent_version = Some(v.clone());
        }
        if let Some(v) = &beat.current_bundle_version {
            s.current_bundle_version = Some(v.clone());
        }
        if let Some(v) = beat.config_version {
            s.config_version = Some(v);
        }
        let was_online = s.status == OnlineStatus::Online;
        s.status = OnlineStatus::Online;
        self.tally(was_online, true);
        // Only orders that depend on live figures need a re-sort.
        self.stale |= self.order_may_change();
        true
    }

    /// A device that missed three of its beats is offline (the server's rule, with the
    /// cadence we observe; the server's own word arrives with the next full read). Not
    /// while the rows are stale: the beats stopped reaching us, not the server.
    pub fn age_out(&mut self, now: DateTime<Utc>) {
        if self.stale_since.is_some() {
            return;
        }
        let mut went = 0;
        for row in &mut self.rows {
            if row.summary.status != OnlineStatus::Online {
                continue;
            }
            let Some(last) = row.summary.last_heartbeat else {
                continue;
            };
            let interval = row.interval_s.unwrap_or(60.0).max(5.0);
            if (now - last).num_milliseconds() as f64 / 1000.0 > 3.0 * interval {
                row.summary.status = OnlineStatus::Offline;
                went += 1;
            }
        }
        if went > 0 {
            self.online = self.online.saturating_sub(went);
            self.stale |= self.order_may_change();
        }
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Rebuild the visible order if anything changed. Keeps the selected device selected.
    pub fn prepare(&mut self) {
        let due = self.stale
            && self
                .rebuilt_at
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if !self.dirty && !due {
            return;
        }
        self.dirty = false;
        self.stale = false;
        self.rebuilt_at = Some(std::time::Instant::now());
        let keep = self
            .keep
            .take()
            .or_else(|| self.selected().map(|d| d.device_id.clone()));
        let terms: Vec<String> = self
            .filter
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        self.visible = (0..self.rows.len())
            .filter(|&i| terms.is_empty() || matches_terms(&self.rows[i].summary, &terms))
            .collect();
        let rows = &self.rows;
        let by_id =
            |a: &usize, b: &usize| rows[*a].summary.device_id.cmp(&rows[*b].summary.device_id);
        match self.sort {
            SortKey::Id => self.visible.sort_unstable_by(by_id),
            SortKey::Status => self.visible.sort_unstable_by(|a, b| {
                status_rank(&rows[*a].summary)
                    .cmp(&status_rank(&rows[*b].summary))
                    .then_with(|| by_id(a, b))
            }),
            SortKey::LastDeploy => self.visible.sort_unstable_by(|a, b| {
                result_rank(&rows[*a].summary)
                    .cmp(&result_rank(&rows[*b].summary))
                    .then_with(|| by_id(a, b))
            }),
            SortKey::Version => self.visible.sort_unstable_by(|a, b| {
                rows[*a]
                    .summary
                    .current_bundle_version
                    .cmp(&rows[*b].summary.current_bundle_version)
                    .then_with(|| by_id(a, b))
            }),
            SortKey::Cpu => self.visible.sort_unstable_by(|a, b| {
                let (x, y) = (rows[*a].summary.cpu_pct, rows[*b].summary.cpu_pct);
                y.unwrap_or(-1.0)
                    .total_cmp(&x.unwrap_or(-1.0))
                    .then_with(|| by_id(a, b))
            }),
            SortKey::LastSeen => self.visible.sort_unstable_by(|a, b| {
                rows[*b]
                    .summary
                    .last_heartbeat
                    .cmp(&rows[*a].summary.last_heartbeat)
                    .then_with(|| by_id(a, b))
            }),
        }
        if self.reversed {
            self.visible.reverse();
        }
        if let Some(id) = keep
            && let Some(pos) = self
                .visible
                .iter()
                .position(|&i| self.rows[i].summary.device_id == id)
        {
            self.scroll.selected = pos;
        }
        self.scroll.clamp(self.visible.len());
    }
}

/// Pending first (they need the operator), then offline, never, online.
fn status_rank(d: &DeviceSummary) -> u8 {
    match (d.admission, d.status) {
        (Admission::Pending, _) => 0,
        (_, OnlineStatus::Offline) => 1,
        (_, OnlineStatus::Never) => 2,
        _ => 3,
    }
}

/// Failed last deployments first, then devices never deployed to, then successes.
fn result_rank(d: &DeviceSummary) -> u8 {
    match d.last_deployment.as_ref().map(|l| l.status) {
        Some(kernex_common::api::ResultStatus::Failed) => 0,
        None => 1,
        Some(_) => 2,
    }
}

/// Every term must appear in one of the device's text fields.
fn matches_terms(d: &DeviceSummary, terms: &[String]) -> bool {
    let fields = [
        d.device_id.to_lowercase(),
        d.device_type.to_lowercase(),
        d.admission.as_str().to_owned(),
        d.status.as_str().to_owned(),
        d.current_bundle_version
            .clone()
            .unwrap_or_default()
            .to_lowercase(),
        d.agent_status.clone().unwrap_or_default().to_lowercase(),
        d.tags.join(" ").to_lowercase(),
        // "failed", "success" and the version of the newest deployment.
        d.last_deployment
            .as_ref()
            .map(|l| format!("{} {}", l.status.as_str(), l.bundle_version.to_lowercase()))
            .unwrap_or_default(),
    ];
    terms
        .iter()
        .all(|t| fields.iter().any(|f| f.contains(t.as_str())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// A beat that says only who and when, read as the live feed reads it.
    fn beat(id: &str, at: &str) -> HeartbeatEvent {
        serde_json::from_value(json!({"device_id": id, "timestamp": at})).unwrap()
    }

    fn dev(id: &str, status: &str) -> DeviceSummary {
        serde_json::from_value(json!({
            "device_id": id, "device_type": "t", "admission": "accepted", "status": status,
            "tags": [], "last_heartbeat": "2026-11-25T12:00:00Z",
        }))
        .unwrap()
    }

    fn counted(f: &Fleet) -> usize {
        f.rows
            .iter()
            .filter(|r| r.summary.status == OnlineStatus::Online)
            .count()
    }

    #[test]
    fn silence_while_the_server_is_lost_ages_nobody_out() {
        let mut f = Fleet::default();
        f.upsert_page(dev("a", "online"));
        let later = DateTime::parse_from_rfc3339("2026-11-25T13:00:00Z").unwrap();
        f.stale_since = Some(later.with_timezone(&Utc));
        f.age_out(later.with_timezone(&Utc));
        assert_eq!(f.online(), 1);
        assert_eq!(f.get("a").unwrap().status, OnlineStatus::Online);
    }

    /// `S` turns the current order upside down, whatever the sort key; again restores it.
    #[test]
    fn reversing_turns_the_order_upside_down() {
        let mut f = Fleet::default();
        for id in ["b", "a", "c"] {
            f.upsert(dev(id, "online"));
        }
        let order =
            |f: &Fleet| -> Vec<String> { f.window(0, 10).map(|d| d.device_id.clone()).collect() };
        f.prepare();
        assert_eq!(order(&f), ["a", "b", "c"]);
        f.reversed = true;
        f.mark_dirty();
        f.prepare();
        assert_eq!(order(&f), ["c", "b", "a"]);
        f.reversed = false;
        f.mark_dirty();
        f.prepare();
        assert_eq!(order(&f), ["a", "b", "c"]);
    }

    #[test]
    fn the_online_count_stays_exact_through_every_change() {
        let mut f = Fleet::default();
        f.upsert_page(dev("a", "online"));
        f.upsert_page(dev("b", "offline"));
        f.upsert(dev("c", "never"));
        assert_eq!((f.online(), counted(&f)), (1, 1));
        f.heartbeat(&beat("b", "2026-11-25T12:00:10Z"));
        f.heartbeat(&beat("b", "2026-11-25T12:00:20Z"));
        assert_eq!((f.online(), counted(&f)), (2, 2));
        f.upsert(dev("a", "offline"));
        assert_eq!((f.online(), counted(&f)), (1, 1));
        let later = DateTime::parse_from_rfc3339("2026-11-25T13:00:00Z").unwrap();
        f.age_out(later.with_timezone(&Utc));
        assert_eq!((f.online(), counted(&f)), (0, 0));
        f.heartbeat(&beat("c", "2026-11-25T13:00:00Z"));
        f.remove("c");
        assert_eq!((f.online(), counted(&f)), (0, 0));
        assert_eq!(f.len(), 2);
    }
}
