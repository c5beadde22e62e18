//! The failure drill-down (`l` / Enter on a target or a history row): what the device
//! reported, whole — its error and the tail of its script's log — in a scrollable panel.
//! The panel names its subject rather than copying it, so a live update (a late log, a
//! re-read) shows at once.

use std::cell::Cell;

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent};
use kernex_common::api::{DeploymentDevice, HistoryRecord, ResultStatus, TargetStatus};

use super::App;

/// What the panel shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// One device's entry in a deployment.
    Target { deployment: String, device: String },
    /// One record of the open device's bundle history.
    History { device: String, record: String },
}

/// A scroll position over text whose length is known only once drawn (help, details).
#[derive(Debug, Clone, Default)]
pub struct Pager {
    /// First line shown.
    pub scroll: usize,
    /// The largest useful `scroll`, set by the view (it depends on the size).
    max: Cell<Option<usize>>,
}

impl Pager {
    /// Called by the view with the number of lines that can be scrolled away; returns
    /// the first line to draw.
    pub fn fit(&self, max: usize) -> usize {
        self.max.set(Some(max));
        self.scroll.min(max)
    }

    /// Scroll keys; false when the key closes the pager (Esc, `q`, or `close`).
    pub fn on_key(&mut self, key: &KeyEvent, page: usize, close: char) -> bool {
        let max = self.max.get().unwrap_or(usize::MAX);
        // A scroll left past the end by a resize starts from what shows.
        self.scroll = self.scroll.min(max);
        let page = page.max(1);
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') => return false,
            KeyCode::Char(c) if c == close => return false,
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = (self.scroll + 1).min(max),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll = (self.scroll + page).min(max),
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = max,
            _ => {}
        }
        true
    }
}

/// The open drill-down.
#[derive(Debug, Clone)]
pub struct Details {
    pub subject: Subject,
    pub pager: Pager,
}

/// The panel's content, resolved from what the app knows now.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub title: String,
    /// Label and value lines above the error.
    pub facts: Vec<(&'static str, String)>,
    pub failed: bool,
    pub error: Option<String>,
    pub log: Option<String>,
}

impl App {
    /// Open the selected deployment's targets, the cursor on its first failed one (the
    /// one an operator opens it for).
    pub(super) fn expand_deployment(&mut self) {
        let first_failed = self.deployments.selected().and_then(|d| {
            d.devices
                .iter()
                .position(|t| t.status == TargetStatus::Failed)
        });
        self.deployments.expanded = true;
        self.deployments.target_scroll = Default::default();
        self.deployments.target_scroll.selected = first_failed.unwrap_or(0);
    }

    /// The target under the cursor of the open deployment.
    fn target_subject(&self) -> Option<Subject> {
        let d = self.deployments.selected()?;
        let t = d.devices.get(self.deployments.target_scroll.selected)?;
        Some(Subject::Target {
            deployment: d.id.clone(),
            device: t.device_id.clone(),
        })
    }

    /// The selected row of the open device's history.
    pub(super) fn history_subject(&self) -> Option<Subject> {
        let p = self.device.as_ref()?;
        let h = p.data.as_ref()?.history.get(p.history.selected)?;
        Some(Subject::History {
            device: p.id.clone(),
            record: h.id.clone(),
        })
    }

    /// The selected Fleet row's last deployment, read whole if its targets are not
    /// known here yet (the panel fills in when it arrives).
    fn last_deploy_subject(&mut self) -> Option<Subject> {
        let d = self.fleet.selected()?;
        let last = d.last_deployment.as_ref()?;
        let (deployment, device) = (last.deployment_id.clone(), d.device_id.clone());
        let known = self
            .deployments
            .items
            .iter()
            .any(|x| x.id == deployment && !x.devices.is_empty());
        if !known && self.refreshing.insert(deployment.clone()) {
            self.ask(super::Request::Deployment(deployment.clone()));
        }
        Some(Subject::Target { deployment, device })
    }

    /// Is this deployment being read from the server?
    pub fn reading_deployment(&self, id: &str) -> bool {
        self.refreshing.contains(id)
    }

    /// `l` / Enter: the drill-down for what is selected, if anything.
    pub(super) fn open_details(&mut self) {
        let subject = match self.view {
            super::View::Fleet => self.last_deploy_subject(),
            super::View::Deployments => self.target_subject(),
            super::View::Device => self.history_subject(),
            _ => None,
        };
        match subject {
            Some(subject) => {
                self.mode = super::Mode::Details(Details {
                    subject,
                    pager: Pager::default(),
                })
            }
            None => self.warn("nothing selected to show: pick a target or a history row"),
        }
    }

    /// The report `subject` names, if the app still knows it.
    pub fn report(&self, subject: &Subject) -> Option<Report> {
        match subject {
            Subject::Target { deployment, device } => {
                let d = self
                    .deployments
                    .items
                    .iter()
                    .find(|d| d.id == *deployment)?;
                let t = d.devices.iter().find(|t| t.device_id == *device)?;
                // A target does not say where a failed device went back to; its row does.
                let back = self
                    .fleet
                    .get(device)
                    .and_then(|s| s.last_deployment.as_ref())
                    .filter(|l| l.deployment_id == *deployment)
                    .and_then(|l| l.rolled_back_to.clone());
                Some(target_report(
                    &format!("{} {}", d.kind.as_str(), d.bundle_version),
                    deployment,
                    t,
                    back,
                ))
            }
            Subject::History { device, record } => {
                let pane = self.device.as_ref().filter(|p| p.id == *device)?;
                let h = pane
                    .data
                    .as_ref()?
                    .history
                    .iter()
                    .find(|h| h.id == *record)?;
                Some(history_report(h))
            }
        }
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn target_report(
    what: &str,
    deployment: &str,
    t: &DeploymentDevice,
    back: Option<String>,
) -> Report {
    let mut result = t.status.as_str().to_owned();
    match (t.status, t.phase, t.progress_pct) {
        // Where it stopped, not a progress figure that reads as still running.
        (TargetStatus::Failed, Some(p), _) => result.push_str(&format!(" during {}", p.as_str())),
        (s, Some(p), Some(pct)) if !s.is_final() => {
            result.push_str(&format!(" · {} {pct}%", p.as_str()))
        }
        _ => {}
    }
    if let Some(v) = back {
        result.push_str(&format!(" · rolled back to {v}"));
    }
    Report {
        title: format!("{what} on {}", t.device_id),
        facts: vec![
            ("device", t.device_id.clone()),
            ("result", result),
            ("when", when(t.updated_at)),
            ("deployment", deployment.to_owned()),
        ],
        failed: t.status == TargetStatus::Failed,
        error: t.error_message.clone(),
        log: t.log_tail.clone(),
    }
}

fn history_report(h: &HistoryRecord) -> Report {
    let mut result = h.status.as_str().to_owned();
    if let Some(v) = &h.rolled_back_to {
        result.push_str(&format!(" · rolled back to {v}"));
    }
    if let Some(secs) = h.duration_seconds {
        result.push_str(&format!(" · took {secs:.1} s"));
    }
    Report {
        title: format!(
            "{} {} on {}",
            h.kind.as_str(),
            h.bundle_version,
            h.device_id
        ),
        facts: vec![
            ("device", h.device_id.clone()),
            ("result", result),
            ("when", when(h.deployed_at)),
            ("deployment", h.deployment_id.clone()),
        ],
        failed: h.status == ResultStatus::Failed,
        error: h.error_message.clone(),
        log: h.log_tail.clone(),
    }
}
