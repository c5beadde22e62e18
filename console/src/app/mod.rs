//! The console's state and its one update function. Keys become actions through the
//! keymap; actions and server messages change state and queue requests; views draw the
//! state. `run` wires that to a real terminal, the event stream and the API.

pub mod details; // the failure drill-down and the pager it shares with help
pub mod dialog; // modal steps of deploy / rollback / config / confirm
pub mod fleet; // the device table's data, for big fleets
pub mod lists; // deployments and bundles
mod messages; // server replies and live events
mod picker; // the deploy flow's start: bundles marked with where they failed
pub mod request; // requests to the server and their replies
mod run; // the event loop over a real terminal

pub use run::{run_tui, run_tui_with};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use kernex_common::api::{Admission, Deployment, DeviceSummary, ResultStatus};

use crate::action::{Action, View};
use crate::keymap::Keymap;
use crate::live::LiveEvent;
use details::{Details, Pager};
use dialog::{ConfigForm, Dialog, Outcome, PickRollback};
use fleet::Fleet;
pub use lists::{Bundles, Deployments};
use request::{DeviceData, Msg, Request};

/// Lines kept in the events pane.
const EVENT_LOG: usize = 200;
/// Shortest gap between two re-reads of the deployment on screen.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long a flash message stays in the status line.
const FLASH_FOR: Duration = Duration::from_secs(8);
/// The server sends a keep-alive every 15 s: longer without a word and what the console
/// shows is stale, though the stream has not failed (yet).
const SILENCE: chrono::TimeDelta = chrono::TimeDelta::seconds(20);

impl From<LiveEvent> for Msg {
    fn from(e: LiveEvent) -> Msg {
        Msg::Live(e)
    }
}

/// The live connection, as the header shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    Connecting,
    Live,
    Reconnecting {
        error: String,
        attempt: u32,
    },
    /// The server refuses our token: fix it and restart (retried slowly meanwhile).
    Refused {
        error: String,
    },
}

/// What the keyboard is typing into, if anything.
#[derive(Debug, Clone)]
pub enum Mode {
    Normal,
    /// Typing a filter. `fresh`: the old filter is shown selected, and the first key
    /// typed replaces it (Enter keeps it).
    Filter {
        fresh: bool,
    },
    Command(String),
    Help(Pager),
    /// The full error and log of a target or history row.
    Details(Details),
    Dialog(Dialog),
}

#[derive(Debug, Clone)]
pub struct Flash {
    pub text: String,
    pub error: bool,
    pub at: Instant,
}

/// The Device view: one device, live.
#[derive(Debug, Clone)]
pub struct DevicePane {
    pub id: String,
    pub data: Option<DeviceData>,
    /// Newest last, for the sparklines.
    pub cpu: VecDeque<f64>,
    pub mem: VecDeque<f64>,
    /// The selected bundle-history row.
    pub history: fleet::Scroll,
}

pub struct App {
    pub server: String,
    pub keymap: Keymap,
    pub view: View,
    /// Where Esc goes back to from the Device view.
    pub previous: View,
    pub mode: Mode,
    pub link: Link,
    /// When the server last said anything on the live stream (keep-alives included).
    pub heard_at: Option<DateTime<Utc>>,
    /// The fleet went stale because the stream fell silent (not because it failed).
    silent_stale: bool,
    pub fleet: Fleet,
    pub loading_devices: bool,
    resync_again: bool,
    /// Deployments being re-read.
    refreshing: std::collections::HashSet<String>,
    /// Deployments being read for the first time that events arrived for meanwhile.
    read_again: std::collections::HashSet<String>,
    /// The last per-device re-read of a shown deployment, for the rate limit.
    refreshed_at: Option<(String, Instant)>,
    /// Devices heard from but not yet known, being read one by one.
    fetching: std::collections::HashSet<String>,
    pub device: Option<DevicePane>,
    pub deployments: Deployments,
    pub bundles: Bundles,
    pub events: VecDeque<(DateTime<Utc>, String)>,
    pub flash: Option<Flash>,
    pub quit: bool,
    /// Rows the body had at the last draw (page size for PgUp/PgDn).
    pub page: usize,
    /// A fixed clock for screen tests (ages and event times would drift otherwise).
    pub fixed_now: Option<DateTime<Utc>>,
    requests: Vec<Request>,
}

impl App {
    pub fn new(server: impl Into<String>) -> App {
        App {
            server: server.into(),
            keymap: Keymap::default(),
            view: View::Fleet,
            previous: View::Fleet,
            mode: Mode::Normal,
            link: Link::Connecting,
            heard_at: None,
            silent_stale: false,
            fleet: Fleet::default(),
            loading_devices: false,
            resync_again: false,
            refreshing: Default::default(),
            read_again: Default::default(),
            refreshed_at: None,
            fetching: Default::default(),
            device: None,
            deployments: Deployments::default(),
            bundles: Bundles::default(),
            events: VecDeque::new(),
            flash: None,
            quit: false,
            page: 10,
            fixed_now: None,
            requests: Vec::new(),
        }
    }

    /// Requests queued since the last call, for the run loop (or a test) to execute.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    fn ask(&mut self, r: Request) {
        self.requests.push(r);
    }

    fn say(&mut self, text: impl Into<String>) {
        self.flash = Some(Flash {
            text: text.into(),
            error: false,
            at: Instant::now(),
        });
    }

    fn warn(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::warn!("{text}");
        self.flash = Some(Flash {
            text,
            error: true,
            at: Instant::now(),
        });
    }

    /// Now (or the test's fixed clock).
    pub fn now(&self) -> DateTime<Utc> {
        self.fixed_now.unwrap_or_else(Utc::now)
    }

    fn log_event(&mut self, line: String) {
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        let now = self.now();
        self.events.push_back((now, line));
    }

    /// Once a second: expire the flash, age out silent devices.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        if self
            .flash
            .as_ref()
            .is_some_and(|f| f.at.elapsed() > FLASH_FOR)
        {
            self.flash = None;
        }
        // A live stream that says nothing: the rows are stale, not the devices offline.
        if let Some(heard) = self.heard_at
            && self.link == Link::Live
            && now - heard > SILENCE
            && self.fleet.stale_since.is_none()
        {
            self.fleet.stale_since = Some(heard);
            self.silent_stale = true;
        }
        // Devices are aged against the last word from the server, not the wall clock: a
        // device is silent only if the server was heard since its beat was due.
        self.fleet
            .age_out(self.heard_at.map_or(now, |h| h.min(now)));
        // A stale deployment skipped by the rate limit gets its read now.
        self.refresh_shown_deployment();
    }

    /// Bring derived state up to date before drawing.
    pub fn prepare(&mut self) {
        self.fleet.prepare();
        let n = self.deployments.visible().len();
        self.deployments.scroll.clamp(n);
        let n = self.bundles.visible().len();
        self.bundles.scroll.clamp(n);
        if let Some(p) = self.device.as_mut() {
            let n = p.data.as_ref().map_or(0, |d| d.history.len());
            p.history.clamp(n);
        }
    }

    /// Re-read everything (start, reconnect, lagged, `R`). While a re-read of the device
    /// list is still running, another one is queued to start when it ends, rather than
    /// restarting it (a 100-page read would never finish under repeated lags).
    pub fn resync(&mut self) {
        if self.loading_devices {
            self.resync_again = true;
            return;
        }
        self.fleet.generation += 1;
        self.loading_devices = true;
        self.ask(Request::DevicePage {
            generation: self.fleet.generation,
            after: None,
        });
        self.ask(Request::Deployments);
        self.ask(Request::Bundles);
        if let Some(p) = &self.device {
            let id = p.id.clone();
            self.ask(Request::DeviceView(id));
        }
    }

    // ------------------------------------------------------------------------ keys

    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind != KeyEventKind::Press {
            return;
        }
        // Keys act on what the operator sees: bring the order up to date first (events
        // may have arrived since the last frame).
        self.prepare();
        // Ctrl-C quits from anywhere, even mid-dialog.
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return;
        }
        match &mut self.mode {
            Mode::Normal => {
                if let Some(action) = self.keymap.action(self.view, &key) {
                    self.update(action);
                }
            }
            Mode::Help(pager) => {
                if !pager.on_key(&key, self.page, '?') {
                    self.mode = Mode::Normal;
                }
            }
            Mode::Details(d) => {
                if !d.pager.on_key(&key, self.page, 'l') {
                    self.mode = Mode::Normal;
                }
            }
            Mode::Filter { fresh } => {
                let fresh = std::mem::take(fresh);
                self.filter_key(key, fresh);
            }
            Mode::Command(input) => match key.code {
                KeyCode::Esc => self.mode = Mode::Normal,
                KeyCode::Enter => {
                    let line = std::mem::take(input);
                    self.mode = Mode::Normal;
                    self.command(&line);
                }
                KeyCode::Backspace => {
                    // Backspace on an empty line leaves command mode, as in vim.
                    let was_empty = input.pop().is_none();
                    if was_empty {
                        self.mode = Mode::Normal;
                    }
                }
                KeyCode::Char(c) => input.push(c),
                _ => {}
            },
            Mode::Dialog(d) => match d.on_key(&key) {
                Outcome::Stay => {}
                Outcome::Close => self.mode = Mode::Normal,
                Outcome::Open(next) => self.mode = Mode::Dialog(next),
                Outcome::Submit(req) => {
                    self.mode = Mode::Normal;
                    self.say(format!("{}…", submit_text(&req)));
                    self.ask(req);
                }
            },
        }
    }

    fn filter_mut(&mut self) -> Option<&mut String> {
        match self.view {
            View::Fleet => Some(&mut self.fleet.filter),
            View::Deployments => Some(&mut self.deployments.filter),
            View::Bundles => Some(&mut self.bundles.filter),
            View::Device => None,
        }
    }

    /// A key typed into the filter. `fresh`: the first key since `/`, which replaces the
    /// old filter rather than extending it.
    fn filter_key(&mut self, key: KeyEvent, fresh: bool) {
        let Some(filter) = self.filter_mut() else {
            self.mode = Mode::Normal;
            return;
        };
        match key.code {
            KeyCode::Enter => self.mode = Mode::Normal,
            KeyCode::Esc => {
                filter.clear();
                self.mode = Mode::Normal;
            }
            KeyCode::Backspace if fresh => filter.clear(),
            KeyCode::Backspace => {
                filter.pop();
            }
            KeyCode::Char(c) => {
                if fresh {
                    filter.clear();
                }
                filter.push(c);
            }
            KeyCode::Down | KeyCode::Up => {
                self.mode = Mode::Normal;
                let a = if key.code == KeyCode::Up {
                    Action::Up
                } else {
                    Action::Down
                };
                self.update(a);
                return;
            }
            _ => return,
        }
        self.fleet.mark_dirty();
        self.deployments.scroll.selected = 0;
        self.bundles.scroll.selected = 0;
    }

    /// `:` commands.
    pub fn command(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let (cmd, arg) = (words.next().unwrap_or(""), words.next());
        match (cmd, arg) {
            ("", _) => {}
            ("fleet" | "devices" | "f", _) => self.show(View::Fleet),
            ("deployments" | "deps" | "dep", _) => self.show(View::Deployments),
            ("bundles" | "b", _) => self.show(View::Bundles),
            ("device" | "dev", Some(id)) => match self.resolve_device(id) {
                Ok(id) => self.open_device(id),
                Err(why) => self.warn(why),
            },
            ("device" | "dev", None) => self.show(View::Device),
            ("help" | "h", _) => self.mode = Mode::Help(Pager::default()),
            ("refresh", _) => self.update(Action::Refresh),
            ("q" | "quit", _) => self.quit = true,
            _ => self.warn(format!(
                "unknown command {line:?} ({})",
                "fleet, device ID, deployments, bundles, refresh, help, quit"
            )),
        }
    }

    /// The full id or a unique suffix of 6+ characters, by the same rules as the scripted
    /// commands (`ops::ids`), among the known devices (filtered out of the table or not).
    fn resolve_device(&self, s: &str) -> Result<String, String> {
        use crate::ops::ids;
        ids::check_ref("device", s).map_err(|e| e.to_string())?;
        ids::pick("device", s, self.fleet.all().map(|d| d.device_id.as_str()))
            .map_err(|e| e.to_string())
    }

    fn show(&mut self, view: View) {
        if view == View::Device && self.device.is_none() {
            match self.fleet.selected().map(|d| d.device_id.clone()) {
                Some(id) => return self.open_device(id),
                None => return self.warn("no device selected"),
            }
        }
        if self.view != View::Device {
            self.previous = self.view;
        }
        self.view = view;
    }

    fn open_device(&mut self, id: String) {
        if self.device.as_ref().map(|p| &p.id) != Some(&id) {
            self.device = Some(DevicePane {
                id: id.clone(),
                data: None,
                cpu: VecDeque::new(),
                mem: VecDeque::new(),
                history: Default::default(),
            });
            self.ask(Request::DeviceView(id));
        }
        if self.view != View::Device {
            self.previous = self.view;
        }
        self.view = View::Device;
    }

    /// The device an action applies to: the open one in the Device view, else the
    /// selected row.
    fn target_device(&self) -> Option<DeviceSummary> {
        match self.view {
            View::Device => self.device.as_ref().and_then(|p| {
                self.fleet
                    .get(&p.id)
                    .cloned()
                    .or_else(|| p.data.as_ref().map(|d| d.detail.summary.clone()))
            }),
            _ => self.fleet.selected().cloned(),
        }
    }

    /// Does `action` make sense for what is selected? The footer shows only those; the
    /// key still answers (with the reason) when it does not.
    pub fn applies(&self, action: &Action) -> bool {
        let device = || self.target_device();
        match action {
            Action::Accept => device().is_some_and(|d| d.admission != Admission::Accepted),
            Action::Reject => device().is_some_and(|d| d.admission != Admission::Rejected),
            Action::Rollback | Action::EditConfig => {
                device().is_some_and(|d| d.admission == Admission::Accepted)
            }
            Action::Deploy => !self.bundles.items.is_empty(),
            Action::Open | Action::Mark | Action::Sort | Action::SortReverse => match self.view {
                View::Fleet => self.fleet.visible_len() > 0,
                View::Deployments => self.deployments.selected().is_some(),
                View::Device => self.history_subject().is_some(),
                _ => true,
            },
            Action::Details => match self.view {
                View::Fleet => self
                    .fleet
                    .selected()
                    .is_some_and(|d| d.last_deployment.is_some()),
                View::Deployments => self
                    .deployments
                    .selected()
                    .is_some_and(|d| !d.devices.is_empty()),
                View::Device => self.history_subject().is_some(),
                _ => false,
            },
            Action::CancelDeployment => self
                .deployments
                .selected()
                .is_some_and(|d| !d.status.is_final()),
            Action::PauseResume => self
                .deployments
                .selected()
                .is_some_and(|d| d.rollout.is_some() && !d.status.is_final()),
            _ => true,
        }
    }

    // --------------------------------------------------------------------- actions

    pub fn update(&mut self, action: Action) {
        self.act(action);
        // The deployment now on screen may need its per-device rows re-read.
        self.refresh_shown_deployment();
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Quit => self.quit = true,
            Action::Help => self.mode = Mode::Help(Pager::default()),
            Action::Back => match self.view {
                View::Device => self.view = self.previous,
                View::Fleet if !self.fleet.filter.is_empty() => {
                    self.fleet.filter.clear();
                    self.fleet.mark_dirty();
                }
                View::Deployments if self.deployments.expanded => self.deployments.expanded = false,
                _ => {}
            },
            Action::NextView | Action::PrevView => {
                let views: Vec<View> = View::ALL
                    .into_iter()
                    .filter(|v| *v != View::Device || self.device.is_some())
                    .collect();
                let at = views.iter().position(|v| *v == self.view).unwrap_or(0);
                let n = views.len();
                let next = if action == Action::NextView {
                    (at + 1) % n
                } else {
                    (at + n - 1) % n
                };
                self.show(views[next]);
            }
            Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom => self.scroll(action),
            Action::Open => match self.view {
                View::Fleet => {
                    if let Some(id) = self.fleet.selected().map(|d| d.device_id.clone()) {
                        self.open_device(id);
                    }
                }
                // Open, Enter drills into the target under the cursor (it no longer
                // closes the list: Esc does).
                View::Deployments if self.deployments.expanded => self.open_details(),
                View::Deployments => self.expand_deployment(),
                View::Device => self.open_details(),
                View::Bundles => {}
            },
            Action::Details => {
                if self.view == View::Deployments && !self.deployments.expanded {
                    self.expand_deployment();
                }
                self.open_details();
            }
            Action::Filter => {
                if self.view != View::Device {
                    self.mode = Mode::Filter { fresh: true };
                }
            }
            Action::Command => self.mode = Mode::Command(String::new()),
            Action::Mark => {
                if let Some(id) = self.fleet.selected().map(|d| d.device_id.clone()) {
                    if !self.fleet.marked.remove(&id) {
                        self.fleet.marked.insert(id);
                    }
                    let len = self.fleet.visible_len();
                    self.fleet.scroll.down(1, len);
                }
            }
            Action::ClearMarks => self.fleet.marked.clear(),
            Action::Sort => {
                self.fleet.sort = self.fleet.sort.next();
                self.fleet.mark_dirty();
                self.say(format!("sorted by {}", self.fleet.sort.name()));
            }
            Action::SortReverse => {
                self.fleet.reversed = !self.fleet.reversed;
                self.fleet.mark_dirty();
                let way = if self.fleet.reversed {
                    ", reversed"
                } else {
                    ""
                };
                self.say(format!("sorted by {}{way}", self.fleet.sort.name()));
            }
            Action::Refresh => {
                self.resync();
                self.say("re-reading everything from the server");
            }
            Action::Deploy => self.start_deploy(),
            Action::Rollback => self.start_rollback(),
            Action::EditConfig => self.start_config(),
            Action::Accept => match self.target_device() {
                Some(d) if d.admission == Admission::Accepted => {
                    self.warn(format!("{} is already accepted", d.device_id))
                }
                Some(d) => {
                    self.say(format!("accepting {}…", d.device_id));
                    self.ask(Request::Accept(d.device_id));
                }
                None => self.warn("no device selected"),
            },
            Action::Reject => match self.target_device() {
                Some(d) if d.admission == Admission::Rejected => {
                    self.warn(format!("{} is already rejected", d.device_id))
                }
                Some(d) => {
                    self.mode = Mode::Dialog(Dialog::Confirm(dialog::Confirm {
                        title: "Reject".into(),
                        body: vec![
                            format!("Reject device {}?", d.device_id),
                            "  its tokens are revoked and it gets no more commands".into(),
                        ],
                        request: Request::Reject(d.device_id),
                        rollout: None,
                    }))
                }
                None => self.warn("no device selected"),
            },
            Action::CancelDeployment => match self.deployments.selected() {
                Some(d) if d.status.is_final() => {
                    self.warn(format!("deployment {} has already finished", d.id))
                }
                Some(d) => {
                    let pending = d.counts.pending + d.counts.waiting;
                    self.mode = Mode::Dialog(Dialog::Confirm(dialog::Confirm {
                        title: "Cancel deployment".into(),
                        body: vec![
                            format!(
                                "Cancel {} {} ({})?",
                                d.kind.as_str(),
                                d.bundle_version,
                                d.id
                            ),
                            format!(
                                "  {pending} pending or waiting target(s) are cancelled; running ones finish"
                            ),
                        ],
                        request: Request::Cancel(d.id.clone()),
                        rollout: None,
                    }));
                }
                None => self.warn("no deployment selected"),
            },
            Action::PauseResume => match self.deployments.selected() {
                Some(d) if d.status.is_final() => {
                    self.warn(format!("deployment {} has already finished", d.id))
                }
                Some(d) => match &d.rollout {
                    None => self.warn(format!(
                        "deployment {} has no rollout to pause (it went to all its targets at once)",
                        d.id
                    )),
                    Some(r) => {
                        let dialog = pause_resume_dialog(d, r);
                        self.mode = Mode::Dialog(Dialog::Confirm(dialog));
                    }
                },
                None => self.warn("no deployment selected"),
            },
        }
    }

    fn scroll(&mut self, action: Action) {
        let page = self.page.max(1);
        let (scroll, len) = match self.view {
            View::Fleet => {
                let n = self.fleet.visible_len();
                (&mut self.fleet.scroll, n)
            }
            // Open, the arrows move through its targets instead.
            View::Deployments if self.deployments.expanded => {
                let n = self.deployments.selected().map_or(0, |d| d.devices.len());
                (&mut self.deployments.target_scroll, n)
            }
            View::Deployments => {
                let n = self.deployments.visible().len();
                (&mut self.deployments.scroll, n)
            }
            View::Bundles => {
                let n = self.bundles.visible().len();
                (&mut self.bundles.scroll, n)
            }
            View::Device => match self.device.as_mut() {
                Some(p) => {
                    let n = p.data.as_ref().map_or(0, |d| d.history.len());
                    (&mut p.history, n)
                }
                None => return,
            },
        };
        match action {
            Action::Up => scroll.up(1),
            Action::Down => scroll.down(1, len),
            Action::PageUp => scroll.up(page),
            Action::PageDown => scroll.down(page, len),
            Action::Top => scroll.selected = 0,
            _ => scroll.selected = len.saturating_sub(1),
        }
    }

    fn start_rollback(&mut self) {
        let Some(d) = self.target_device() else {
            return self.warn("no device selected");
        };
        let mut pick = PickRollback {
            device_id: d.device_id.clone(),
            versions: None,
            current: d.current_bundle_version.clone(),
            selected: 0,
        };
        match self
            .device
            .as_ref()
            .and_then(|p| p.data.as_ref())
            .filter(|data| data.detail.summary.device_id == d.device_id)
        {
            Some(data) => {
                let versions =
                    rollback_versions(&data.history, d.current_bundle_version.as_deref());
                if versions.is_empty() {
                    return self.warn(format!(
                        "{} has no earlier successful version to roll back to",
                        d.device_id
                    ));
                }
                pick.versions = Some(versions);
            }
            None => self.ask(Request::History(d.device_id.clone())),
        }
        self.mode = Mode::Dialog(Dialog::PickRollback(pick));
    }

    fn start_config(&mut self) {
        let Some(d) = self.target_device() else {
            return self.warn("no device selected");
        };
        let current = self
            .device
            .as_ref()
            .and_then(|p| p.data.as_ref())
            .filter(|data| data.config.device_id == d.device_id)
            .map(|data| data.config.clone());
        if current.is_none() {
            self.ask(Request::Config(d.device_id.clone()));
        }
        self.mode = Mode::Dialog(Dialog::Config(Box::new(ConfigForm::new(
            d.device_id,
            current,
        ))));
    }

    // -------------------------------------------------------------------- messages
}

/// Versions the device ran successfully, newest first, without the one it runs now.
pub fn rollback_versions(
    history: &[kernex_common::api::HistoryRecord],
    current: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in history {
        if h.status == ResultStatus::Success
            && Some(h.bundle_version.as_str()) != current
            && !out.contains(&h.bundle_version)
        {
            out.push(h.bundle_version.clone());
        }
    }
    out
}

fn submit_text(r: &Request) -> String {
    match r {
        Request::Deploy(d) => format!(
            "creating deployment of {}",
            d.bundle_version.as_deref().unwrap_or("?")
        ),
        Request::Rollback(r) => format!("creating rollback to {}", r.bundle_version),
        Request::PutConfig(id, _) => format!("saving config of {id}"),
        Request::Reject(id) => format!("rejecting {id}"),
        Request::Cancel(id) => format!("cancelling {id}"),
        other => format!("{other:?}"),
    }
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Finished targets and all targets, for gauges.
pub fn progress(d: &Deployment) -> (u64, u64) {
    (d.counts.finished(), d.counts.total())
}

/// The confirmation of `p`: what pausing or resuming this rollout changes.
fn pause_resume_dialog(
    d: &kernex_common::api::Deployment,
    r: &kernex_common::api::Rollout,
) -> dialog::Confirm {
    let what = format!("{} {} ({})", d.kind.as_str(), d.bundle_version, d.id);
    if let Some(reason) = &r.paused_reason {
        let failures: u64 = r.waves.iter().map(|w| w.failed).sum();
        let next = r.current_wave + 1;
        let good = r
            .waves
            .get(r.current_wave)
            .is_some_and(|w| w.healthy * 100 >= u64::from(r.success_threshold_pct) * w.targets);
        let mut body = vec![
            format!("Resume {what}?"),
            format!("  paused: {reason}"),
            format!("  accepts the {failures} failure(s) so far; deliveries start again"),
        ];
        if good && next < r.waves.len() {
            body.push(format!(
                "  wave {} is good: wave {} of {} opens now",
                r.current_wave + 1,
                next + 1,
                r.waves.len()
            ));
        }
        dialog::Confirm {
            title: "Resume rollout".into(),
            body,
            request: Request::Resume(d.id.clone()),
            rollout: None,
        }
    } else {
        let held = d.counts.pending + d.counts.waiting;
        dialog::Confirm {
            title: "Pause rollout".into(),
            body: vec![
                format!("Pause {what}?"),
                format!("  no new deliveries: {held} pending or waiting target(s) are held"),
                format!(
                    "  {} in progress finish and report; resume with p",
                    d.counts.in_progress
                ),
            ],
            request: Request::Pause(d.id.clone()),
            rollout: None,
        }
    }
}
