//! Server messages: replies to the app's requests and the live event stream. Events
//! patch what is on screen in place; what an event cannot say (who a count-only
//! deployment update was about, a device we never read) is read from the server, once.

use kernex_common::api::DeploymentKind;
use kernex_common::api::events::{BundleEvent, DeploymentEvent, DeviceEvent, ServerEvent};

use super::dialog::Dialog;
use super::request::{self, Done, Msg, Request};
use super::{App, Link, Mode, REFRESH_EVERY, first_line, progress, rollback_versions};
use crate::action::View;
use crate::live::LiveEvent;
use std::time::Instant;

impl App {
    pub fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Live(ev) => self.on_live(ev),
            Msg::DevicePage {
                generation,
                page,
                last,
            } => {
                // A page of an older re-read is stale.
                if generation != self.fleet.generation {
                    return;
                }
                let after = page.last().map(|d| d.device_id.clone());
                for d in page {
                    self.fleet.upsert_page(d);
                }
                match after {
                    Some(after) if !last => self.ask(Request::DevicePage {
                        generation,
                        after: Some(after),
                    }),
                    _ => {
                        self.fleet.retain_current();
                        // The server's word on every device: nothing is stale any more.
                        if self.link == Link::Live {
                            self.fleet.stale_since = None;
                        }
                        self.loading_devices = false;
                        // Events were lost while this read ran: one more, now.
                        if std::mem::take(&mut self.resync_again) {
                            self.resync();
                        }
                    }
                }
            }
            Msg::Device(id, summary) => {
                self.fetching.remove(&id);
                if let Some(s) = summary {
                    self.fleet.upsert(*s);
                }
            }
            Msg::DeviceView(data) => {
                let Some(p) = self
                    .device
                    .as_mut()
                    .filter(|p| p.id == data.detail.summary.device_id)
                else {
                    return;
                };
                // Heartbeats come newest first.
                p.cpu = data.heartbeats.iter().rev().map(|h| h.cpu_pct).collect();
                p.mem = data.heartbeats.iter().rev().map(|h| h.memory_mb).collect();
                let summary = data.detail.summary.clone();
                p.data = Some(*data);
                self.fleet.upsert(summary);
            }
            Msg::History(id, history) => {
                if let Some(p) = self.device.as_mut().filter(|p| p.id == id)
                    && let Some(data) = p.data.as_mut()
                {
                    data.history = history.clone();
                }
                if let Mode::Dialog(Dialog::PickRollback(pick)) = &mut self.mode
                    && pick.device_id == id
                    && pick.versions.is_none()
                {
                    let versions = rollback_versions(&history, pick.current.as_deref());
                    if versions.is_empty() {
                        self.mode = Mode::Normal;
                        self.warn(format!(
                            "{id} has no earlier successful version to roll back to"
                        ));
                    } else {
                        pick.versions = Some(versions);
                    }
                }
            }
            Msg::Config(config) => {
                if let Mode::Dialog(Dialog::Config(form)) = &mut self.mode
                    && form.device_id == config.device_id
                    && form.current.is_none()
                {
                    form.load(config.clone());
                }
                self.set_config(config);
            }
            Msg::Deployments(items) => self.deployments.replace(items),
            Msg::Deployment(d) => {
                self.refreshing.remove(&d.id);
                let id = d.id.clone();
                self.deployments.upsert(*d);
                // Events came for it while it was read: the read may predate them.
                if self.read_again.remove(&id) {
                    self.deployments.stale.insert(id);
                }
            }
            Msg::Bundles(items) => self.bundles.edit(|b| *b = items),
            Msg::Done(Ok(done)) => match done {
                Done::Created(d) => {
                    let d = *d;
                    // No status here: it would be stale in seconds (the view follows it).
                    self.say(format!(
                        "created {} of {} to {} ({})",
                        d.kind.as_str(),
                        d.bundle_version,
                        super::dialog::devices(d.target_device_ids.len()),
                        d.id
                    ));
                    let id = d.id.clone();
                    self.deployments.upsert(d);
                    self.fleet.marked.clear();
                    // Follow it, unless the operator has started something else.
                    if matches!(self.mode, Mode::Normal) {
                        self.show(View::Deployments);
                        if let Some(pos) =
                            self.deployments.visible().iter().position(|x| x.id == id)
                        {
                            self.deployments.scroll.selected = pos;
                            self.deployments.expanded = true;
                        }
                    }
                }
                Done::PausedOrResumed(d) => {
                    let why = d
                        .rollout
                        .as_ref()
                        .and_then(|r| r.paused_reason.clone())
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    self.say(format!(
                        "{} {} is {}{why}",
                        d.kind.as_str(),
                        d.bundle_version,
                        d.status.as_str()
                    ));
                    self.deployments.upsert(*d);
                }
                Done::Cancelled(d) => {
                    self.say(format!(
                        "{} {} cancelled: {} target(s) cancelled",
                        d.kind.as_str(),
                        d.bundle_version,
                        d.counts.cancelled
                    ));
                    self.deployments.upsert(*d);
                }
                Done::Config(c) => {
                    self.say(format!(
                        "config v{} saved for {}; the device applies it on its next heartbeat",
                        c.version, c.device_id
                    ));
                    self.set_config(c);
                }
                Done::Device(d) => {
                    self.say(format!(
                        "{} is now {}",
                        d.summary.device_id,
                        d.summary.admission.as_str()
                    ));
                    if let Some(p) = self.device.as_mut().filter(|p| p.id == d.summary.device_id)
                        && let Some(data) = p.data.as_mut()
                    {
                        data.detail = (*d).clone();
                    }
                    self.fleet.upsert(d.summary);
                }
            },
            Msg::Done(Err(e)) => self.warn(e),
            Msg::Failed { request, error } => {
                let what = request.describe();
                match &request {
                    Request::DevicePage { .. } => self.loading_devices = false,
                    Request::Deployment(id) => {
                        self.refreshing.remove(id);
                    }
                    // A dialog waiting for this read would wait forever: close it.
                    Request::History(id) | Request::Config(id) => {
                        let waiting = match &self.mode {
                            Mode::Dialog(Dialog::PickRollback(p)) => {
                                p.device_id == *id && p.versions.is_none()
                            }
                            Mode::Dialog(Dialog::Config(f)) => {
                                f.device_id == *id && f.current.is_none()
                            }
                            _ => false,
                        };
                        if waiting {
                            self.mode = Mode::Normal;
                            return self.warn(format!("{what}: {error}"));
                        }
                    }
                    _ => {}
                }
                // While the link is down every read fails; the header already says so.
                if self.link == Link::Live {
                    self.warn(format!("{what}: {error}"));
                }
            }
        }
    }

    pub(super) fn set_config(&mut self, config: kernex_common::api::DeviceConfig) {
        if let Some(p) = self.device.as_mut().filter(|p| p.id == config.device_id)
            && let Some(data) = p.data.as_mut()
            && config.version >= data.config.version
        {
            data.config = config;
        }
    }

    /// Re-read the selected deployment if its per-device rows are stale (events that
    /// changed counts without naming the device). At most one read in flight per
    /// deployment, and only for the one on screen.
    pub(super) fn refresh_shown_deployment(&mut self) {
        // Called after every key and deployment event: the common case costs nothing.
        if self.view != View::Deployments || self.deployments.stale.is_empty() {
            return;
        }
        let Some(id) = self.deployments.selected().map(|d| d.id.clone()) else {
            return;
        };
        // A rollout to thousands of devices sends a count-only event per delivery: read
        // the (large) deployment at most every 2 s, however many arrive.
        let recent = self
            .refreshed_at
            .as_ref()
            .is_some_and(|(last, at)| *last == id && at.elapsed() < REFRESH_EVERY);
        if self.deployments.stale.contains(&id) && !recent && self.refreshing.insert(id.clone()) {
            self.refreshed_at = Some((id.clone(), Instant::now()));
            self.ask(Request::Deployment(id));
        }
    }

    pub(super) fn on_live(&mut self, ev: LiveEvent) {
        match ev {
            LiveEvent::Connected => {
                self.heard();
                let again = self.link != Link::Connecting;
                self.link = Link::Live;
                if again {
                    self.log_event("reconnected: re-reading the fleet".into());
                }
                self.resync();
            }
            LiveEvent::Disconnected { error, attempt, .. } => {
                if self.link == Link::Live {
                    self.log_event(format!("lost the server: {error}"));
                }
                self.went_stale();
                self.link = Link::Reconnecting { error, attempt };
            }
            LiveEvent::Refused { error } => {
                if !matches!(self.link, Link::Refused { .. }) {
                    self.log_event(format!("the server refused the token: {error}"));
                }
                self.went_stale();
                self.link = Link::Refused { error };
            }
            LiveEvent::Alive => self.heard(),
            LiveEvent::Lagged => {
                self.log_event("fell behind the event stream: re-reading".into());
                self.resync();
            }
            LiveEvent::Event(ev) => {
                self.heard();
                self.on_event(*ev);
            }
        }
    }

    /// The stream is down: what the fleet shows is the last known state, as of the last
    /// time the server was heard from.
    fn went_stale(&mut self) {
        if self.link == Link::Live || !self.fleet.is_empty() {
            let since = self.heard_at.unwrap_or_else(|| self.now());
            self.fleet.stale_since.get_or_insert(since);
        }
        // A lost connection now: it takes a re-read to be current again.
        self.silent_stale = false;
    }

    /// The server said something (an event, a keep-alive). A fleet that went stale only
    /// because the stream fell silent is current again (nothing was missed: a gap would
    /// have come as a lag); one stale from a lost connection waits for its re-read.
    fn heard(&mut self) {
        self.heard_at = Some(self.now());
        if self.silent_stale && self.link == Link::Live && !self.loading_devices {
            self.fleet.stale_since = None;
            self.silent_stale = false;
        }
    }

    pub(super) fn on_event(&mut self, ev: ServerEvent) {
        match ev {
            ServerEvent::Heartbeat(beat) => {
                let id = beat.device_id.clone();
                // A device we don't know yet: the running re-read will bring it, else
                // read that one device (once, however many beats arrive meanwhile).
                if !self.fleet.heartbeat(&beat)
                    && !self.loading_devices
                    && !id.is_empty()
                    && self.fetching.insert(id.clone())
                {
                    self.ask(Request::Device(id.clone()));
                }
                if let Some(p) = self.device.as_mut().filter(|p| p.id == id) {
                    if let (Some(c), Some(m)) = (beat.cpu_pct, beat.memory_mb) {
                        for (ring, v) in [(&mut p.cpu, c), (&mut p.mem, m)] {
                            ring.push_back(v);
                            if ring.len() > request::SPARK_POINTS as usize {
                                ring.pop_front();
                            }
                        }
                    }
                    if let (Some(data_), Some(s)) = (p.data.as_mut(), self.fleet.get(&id)) {
                        data_.detail.summary = s.clone();
                    }
                }
            }
            ServerEvent::Device(DeviceEvent::Deleted { device_id: id }) => {
                self.fleet.remove(&id);
                self.log_event(format!("device {id} deleted"));
            }
            ServerEvent::Device(DeviceEvent::Changed(s)) => {
                let id = s.device_id.clone();
                let known = self.fleet.get(&id).map(|d| d.admission);
                match known {
                    None => self.log_event(format!(
                        "device {id} registered ({}, {})",
                        s.device_type,
                        s.admission.as_str()
                    )),
                    Some(a) if a != s.admission => {
                        self.log_event(format!("device {id} {}", s.admission.as_str()))
                    }
                    _ => {}
                }
                if let Some(p) = self.device.as_mut().filter(|p| p.id == id)
                    && let Some(d) = p.data.as_mut()
                {
                    d.detail.summary = (*s).clone();
                }
                self.fleet.upsert(*s);
            }
            ServerEvent::Deployment(d) => self.on_deployment_event(d),
            ServerEvent::Bundle(BundleEvent::Deleted { id, version }) => {
                self.bundles.edit(|b| b.retain(|b| b.id != id));
                self.log_event(format!("bundle {version} deleted"));
            }
            ServerEvent::Bundle(BundleEvent::Uploaded(b)) => {
                self.log_event(format!(
                    "bundle {} {} uploaded ({})",
                    b.name,
                    b.version,
                    crate::fmt::bytes(b.size_bytes)
                ));
                self.bundles.edit(|items| {
                    items.retain(|x| x.id != b.id);
                    items.insert(0, *b);
                });
            }
            ServerEvent::Config(c) => {
                self.log_event(format!("config v{} for {}", c.version, c.device_id));
                self.set_config(c);
            }
            ServerEvent::Lagged(_) => self.on_live(LiveEvent::Lagged),
        }
    }

    pub(super) fn on_deployment_event(&mut self, ev: DeploymentEvent) {
        let DeploymentEvent {
            id,
            kind,
            bundle_version,
            status,
            counts,
            updated_at,
            completed_at,
            device,
            rollout,
            change,
            ..
        } = ev;
        let Some(known) = self.deployments.get_mut(&id) else {
            // New to us: read it whole (targets and per-device rows), once; events that
            // arrive meanwhile ask for one more read when it lands.
            if !self.refreshing.insert(id.clone()) {
                self.read_again.insert(id);
            } else {
                self.ask(Request::Deployment(id.clone()));
                let v = bundle_version.as_deref().unwrap_or("?");
                let k = kind.map_or("deploy", DeploymentKind::as_str);
                self.log_event(format!("{k} {v} created ({id})"));
            }
            return;
        };
        let before = (known.status, known.counts);
        if let Some(s) = status {
            known.status = s;
        }
        if let Some(c) = counts {
            known.counts = c;
        }
        if let Some(t) = updated_at {
            known.updated_at = t;
        }
        if let Some(t) = completed_at {
            known.completed_at = Some(t);
        }
        if let Some(r) = rollout {
            known.rollout = Some(*r);
        }
        let (kind, version, status) = (known.kind, known.bundle_version.clone(), known.status);
        let (done, total) = progress(known);
        let counts_changed = known.counts != before.1;
        if let Some(c) = change {
            self.log_event(format!(
                "{} {version} rollout: {}",
                kind.as_str(),
                rollout_change(&c)
            ));
        }
        match device {
            Some(dev) => {
                if dev.status.is_final() {
                    self.log_event(format!(
                        "{} {version} on {}: {}{}",
                        kind.as_str(),
                        dev.device_id,
                        dev.status.as_str(),
                        dev.error_message
                            .as_deref()
                            .map(|e| format!(" ({})", first_line(e)))
                            .unwrap_or_default()
                    ));
                    // That device's history has a new record.
                    if self.device.as_ref().is_some_and(|p| p.id == dev.device_id) {
                        self.ask(Request::History(dev.device_id.clone()));
                    }
                }
                self.deployments.set_target(&id, dev);
            }
            // Delivery, cancel, admission changes: counts moved but we don't know whose.
            None if counts_changed => {
                self.deployments.stale.insert(id.clone());
            }
            None => {}
        }
        if status != before.0 {
            self.log_event(format!(
                "{} {version} {} ({done}/{total} done)",
                kind.as_str(),
                status.as_str()
            ));
        }
        self.refresh_shown_deployment();
    }
}

/// A rollout's change as the event log says it.
fn rollout_change(c: &kernex_common::api::RolloutChange) -> String {
    use kernex_common::api::RolloutChange as C;
    match c {
        C::WaveOpened { wave } => format!("wave {} opened", wave + 1),
        C::GateTripped { reason } => format!("held: {reason}"),
        C::Aborted { reason } => format!("aborted: {reason}"),
        C::TargetTimedOut { device_id } => format!("{device_id} timed out"),
        C::SoakFailed { device_id } => format!("{device_id} failed its soak"),
        C::Paused { reason } => format!("paused ({reason})"),
        C::Resumed => "resumed".to_owned(),
    }
}
