//! The modal steps of the keyboard flows: pick a bundle, pick targets, pick a rollback
//! version, edit config, confirm. Each handles its own keys and says what happens next;
//! nothing reaches the server until a `Confirm` (or the config form) is submitted.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kernex_common::api::{
    ConfigUpdate, CreateDeployment, DeviceConfig, RollbackRequest, RolloutPolicy,
};
use kernex_common::validate::is_valid_tag;
use serde_json::Value;

use super::request::Request;

#[derive(Debug, Clone)]
pub enum Dialog {
    PickBundle(PickBundle),
    PickTargets(PickTargets),
    PickRollback(PickRollback),
    Config(Box<ConfigForm>),
    Confirm(Confirm),
}

/// What a key did to the open dialog.
#[derive(Debug)]
pub enum Outcome {
    Stay,
    Close,
    Open(Dialog),
    /// Send this to the server and close.
    Submit(Request),
}

impl Dialog {
    pub fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        if key.code == KeyCode::Esc {
            return Outcome::Close;
        }
        match self {
            Dialog::PickBundle(d) => d.on_key(key),
            Dialog::PickTargets(d) => d.on_key(key),
            Dialog::PickRollback(d) => d.on_key(key),
            Dialog::Config(d) => d.on_key(key),
            Dialog::Confirm(d) => d.on_key(key),
        }
    }
}

fn step(sel: &mut usize, len: usize, key: &KeyEvent) -> bool {
    match key.code {
        KeyCode::Up | KeyCode::Char('k') => *sel = sel.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => *sel = (*sel + 1).min(len.saturating_sub(1)),
        _ => return false,
    }
    true
}

// ------------------------------------------------------------------------ deploy: bundle

/// A bundle as the pick list shows it.
#[derive(Debug, Clone)]
pub struct BundleChoice {
    pub version: String,
    pub name: String,
    pub size_bytes: u64,
    /// Devices it is known to have failed on.
    pub failed: usize,
}

#[derive(Debug, Clone)]
pub struct PickBundle {
    pub bundles: Vec<BundleChoice>,
    pub selected: usize,
    /// Targets already known (the flow was started with marked devices etc.).
    pub targets: TargetChoices,
}

impl PickBundle {
    fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        if step(&mut self.selected, self.bundles.len(), key) {
            return Outcome::Stay;
        }
        match (key.code, self.bundles.get(self.selected)) {
            (KeyCode::Enter, Some(b)) => Outcome::Open(Dialog::PickTargets(PickTargets::new(
                b.version.clone(),
                b.failed,
                self.targets.clone(),
            ))),
            _ => Outcome::Stay,
        }
    }
}

// ----------------------------------------------------------------------- deploy: targets

/// Who a deploy could go to, as the flow was opened.
#[derive(Debug, Clone, Default)]
pub struct TargetChoices {
    pub marked: Vec<String>,
    pub selected: Option<String>,
    /// Accepted devices per tag, for the preview line (filled as the operator types).
    pub tag_counts: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOption {
    Marked(Vec<String>),
    Device(String),
    Tag,
}

#[derive(Debug, Clone)]
pub struct PickTargets {
    pub version: String,
    /// Devices the bundle is known to have failed on (the confirmation repeats it).
    pub failed: usize,
    pub options: Vec<TargetOption>,
    pub selected: usize,
    pub tag: String,
    pub error: Option<String>,
    pub choices: TargetChoices,
}

impl PickTargets {
    pub fn new(version: String, failed: usize, choices: TargetChoices) -> PickTargets {
        let mut options = Vec::new();
        if !choices.marked.is_empty() {
            options.push(TargetOption::Marked(choices.marked.clone()));
        }
        if let Some(id) = &choices.selected
            && !choices.marked.contains(id)
        {
            options.push(TargetOption::Device(id.clone()));
        }
        options.push(TargetOption::Tag);
        PickTargets {
            version,
            failed,
            options,
            selected: 0,
            tag: String::new(),
            error: None,
            choices,
        }
    }

    pub fn on_tag(&self) -> bool {
        self.options.get(self.selected) == Some(&TargetOption::Tag)
    }

    fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        // Typing goes to the tag field while it is selected; arrows still move.
        if self.on_tag() {
            match key.code {
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.tag.push(c);
                    self.error = None;
                    return Outcome::Stay;
                }
                KeyCode::Backspace => {
                    self.tag.pop();
                    return Outcome::Stay;
                }
                _ => {}
            }
        }
        match key.code {
            KeyCode::Up | KeyCode::Down | KeyCode::Char('j') | KeyCode::Char('k') => {
                step(&mut self.selected, self.options.len(), key);
                Outcome::Stay
            }
            KeyCode::Enter => self.confirm(),
            _ => Outcome::Stay,
        }
    }

    fn confirm(&mut self) -> Outcome {
        let (req, what, ids) = match self.options.get(self.selected) {
            Some(TargetOption::Marked(ids)) => (
                CreateDeployment {
                    bundle_version: Some(self.version.clone()),
                    target_device_ids: ids.clone(),
                    ..Default::default()
                },
                format!("the {}", marked(ids.len())),
                ids.clone(),
            ),
            Some(TargetOption::Device(id)) => (
                CreateDeployment {
                    bundle_version: Some(self.version.clone()),
                    target_device_ids: vec![id.clone()],
                    ..Default::default()
                },
                format!("1 device, {id}"),
                vec![id.clone()],
            ),
            Some(TargetOption::Tag) => {
                let tag = self.tag.trim().to_owned();
                if !is_valid_tag(&tag) {
                    self.error = Some("a tag is 1-64 chars of A-Z a-z 0-9 . _ : -".into());
                    return Outcome::Stay;
                }
                // The count is the console's view of the fleet; the server decides.
                let known = self
                    .choices
                    .tag_counts
                    .iter()
                    .find(|(t, _)| *t == tag)
                    .map_or(0, |(_, n)| *n);
                let what = match known {
                    0 => format!("every accepted device tagged {tag:?} (none known here)"),
                    n => format!("the {} tagged {tag:?}", accepted(n)),
                };
                (
                    CreateDeployment {
                        bundle_version: Some(self.version.clone()),
                        target_tags: vec![tag.clone()],
                        ..Default::default()
                    },
                    what,
                    Vec::new(),
                )
            }
            None => return Outcome::Stay,
        };
        let mut body = vec![format!("Deploy {} to {what}?", self.version)];
        if self.failed > 0 {
            body.push(format!(
                "  ✗ {} failed on {} already",
                self.version,
                devices(self.failed)
            ));
        }
        if ids.len() > 1 {
            body.extend(ids.iter().take(6).map(|id| format!("  {id}")));
        }
        if ids.len() > 6 {
            body.push(format!("  … and {} more", ids.len() - 6));
        }
        Outcome::Open(Dialog::Confirm(Confirm {
            title: "Deploy".into(),
            body,
            request: Request::Deploy(req),
            rollout: Some(Box::default()),
        }))
    }
}

/// "1 device", "3 devices".
pub fn devices(n: usize) -> String {
    if n == 1 {
        "1 device".into()
    } else {
        format!("{n} devices")
    }
}

/// "1 accepted device", "3 accepted devices".
fn accepted(n: usize) -> String {
    format!("{n} accepted {}", if n == 1 { "device" } else { "devices" })
}

/// "1 marked device", "3 marked devices".
pub fn marked(n: usize) -> String {
    format!("{n} marked {}", if n == 1 { "device" } else { "devices" })
}

// ---------------------------------------------------------------------------- rollback

#[derive(Debug, Clone)]
pub struct PickRollback {
    pub device_id: String,
    /// `None` while the device's history loads.
    pub versions: Option<Vec<String>>,
    pub current: Option<String>,
    pub selected: usize,
}

impl PickRollback {
    fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        let Some(versions) = &self.versions else {
            return Outcome::Stay;
        };
        if step(&mut self.selected, versions.len(), key) {
            return Outcome::Stay;
        }
        match (key.code, versions.get(self.selected)) {
            (KeyCode::Enter, Some(v)) => Outcome::Open(Dialog::Confirm(Confirm {
                title: "Rollback".into(),
                body: vec![
                    format!("Roll device {} back to {v}?", self.device_id),
                    format!(
                        "  it runs {} now",
                        self.current.as_deref().unwrap_or("nothing known")
                    ),
                ],
                request: Request::Rollback(RollbackRequest {
                    bundle_version: v.clone(),
                    target_device_ids: vec![self.device_id.clone()],
                    rollout: None,
                }),
                rollout: None,
            })),
            _ => Outcome::Stay,
        }
    }
}

// ------------------------------------------------------------------------------ config

/// The form's fields, in order.
pub const CONFIG_FIELDS: [&str; 5] = DeviceConfig::FIELDS;

#[derive(Debug, Clone)]
pub struct ConfigForm {
    pub device_id: String,
    /// `None` while the current config loads.
    pub current: Option<DeviceConfig>,
    pub values: [String; 5],
    pub field: usize,
    pub errors: [Option<String>; 5],
    pub message: Option<String>,
}

impl ConfigForm {
    pub fn new(device_id: String, current: Option<DeviceConfig>) -> ConfigForm {
        let mut form = ConfigForm {
            device_id,
            current: None,
            values: Default::default(),
            field: 0,
            errors: Default::default(),
            message: None,
        };
        if let Some(c) = current {
            form.load(c);
        }
        form
    }

    pub fn load(&mut self, c: DeviceConfig) {
        self.values = [
            c.polling_interval.to_string(),
            c.heartbeat_timeout.to_string(),
            c.deploy_timeout.to_string(),
            c.log_level.clone(),
            serde_json::to_string(&c.metadata).unwrap_or_else(|_| "{}".into()),
        ];
        self.current = Some(c);
    }

    fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        if self.current.is_none() {
            return Outcome::Stay;
        }
        let level_field = self.field == 3;
        // Any edit makes the last verdict ("fix the marked field", "nothing changed")
        // out of date: the next Enter gives a new one.
        if !matches!(
            key.code,
            KeyCode::Up | KeyCode::Down | KeyCode::Tab | KeyCode::BackTab | KeyCode::Enter
        ) {
            self.message = None;
        }
        match key.code {
            KeyCode::Up | KeyCode::BackTab => self.field = self.field.saturating_sub(1),
            KeyCode::Down | KeyCode::Tab => self.field = (self.field + 1).min(4),
            KeyCode::Left | KeyCode::Right if level_field => {
                let levels = DeviceConfig::LOG_LEVELS;
                let at = levels
                    .iter()
                    .position(|l| *l == self.values[3])
                    .unwrap_or(2);
                let next = if key.code == KeyCode::Right {
                    (at + 1) % levels.len()
                } else {
                    (at + levels.len() - 1) % levels.len()
                };
                self.values[3] = levels[next].to_owned();
                self.errors[3] = None;
            }
            KeyCode::Backspace => {
                self.values[self.field].pop();
                self.errors[self.field] = None;
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.values[self.field].push(c);
                self.errors[self.field] = None;
            }
            KeyCode::Enter => return self.submit(),
            _ => {}
        }
        Outcome::Stay
    }

    /// Validate every field as the server would; send only what changed.
    fn submit(&mut self) -> Outcome {
        let Some(cur) = &self.current else {
            return Outcome::Stay;
        };
        let num = |s: &str, lo: u64, hi: u64| -> Result<u64, String> {
            match s.trim().parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(format!("a whole number of seconds, {lo}-{hi}")),
            }
        };
        let results = [
            num(&self.values[0], 5, 86_400),
            num(&self.values[1], 1, 300),
            num(&self.values[2], 1, 86_400),
        ];
        let mut update = ConfigUpdate::default();
        self.errors = Default::default();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(n) => {
                    let (slot, old) = match i {
                        0 => (&mut update.polling_interval, cur.polling_interval),
                        1 => (&mut update.heartbeat_timeout, cur.heartbeat_timeout),
                        _ => (&mut update.deploy_timeout, cur.deploy_timeout),
                    };
                    if n != old {
                        *slot = Some(n);
                    }
                }
                Err(e) => self.errors[i] = Some(e),
            }
        }
        let level = self.values[3].trim();
        if !DeviceConfig::LOG_LEVELS.contains(&level) {
            self.errors[3] = Some(format!("one of {}", DeviceConfig::LOG_LEVELS.join(" ")));
        } else if level != cur.log_level {
            update.log_level = Some(level.to_owned());
        }
        match serde_json::from_str::<Value>(&self.values[4]) {
            Ok(v @ Value::Object(_)) if self.values[4].len() <= 16 * 1024 => {
                if v != cur.metadata {
                    update.metadata = Some(v);
                }
            }
            Ok(Value::Object(_)) => self.errors[4] = Some("at most 16 KiB".into()),
            Ok(_) => self.errors[4] = Some("a JSON object, e.g. {\"site\":\"berlin\"}".into()),
            Err(e) => self.errors[4] = Some(format!("not JSON: {e}")),
        }
        if let Some(first) = self.errors.iter().position(Option::is_some) {
            self.field = first;
            self.message = Some("fix the marked field".into());
            return Outcome::Stay;
        }
        let unchanged = update.polling_interval.is_none()
            && update.heartbeat_timeout.is_none()
            && update.deploy_timeout.is_none()
            && update.log_level.is_none()
            && update.metadata.is_none();
        if unchanged {
            self.message = Some("nothing changed".into());
            return Outcome::Stay;
        }
        Outcome::Submit(Request::PutConfig(self.device_id.clone(), update))
    }
}

// ----------------------------------------------------------------------------- confirm

#[derive(Debug, Clone)]
pub struct Confirm {
    pub title: String,
    pub body: Vec<String>,
    pub request: Request,
    /// A deploy's rollout preset (`w` cycles it); `None` for other confirmations.
    pub rollout: Option<Box<RolloutChoice>>,
}

/// The rollout presets of the deploy confirmation (SPEC §6).
#[derive(Debug, Clone, Default)]
pub struct RolloutChoice {
    /// 0 all at once, 1 canary → 10 % → 100 %, 2 custom waves.
    pub preset: usize,
    /// The custom waves as typed (`5,25,100`).
    pub custom: String,
    pub error: Option<String>,
}

impl RolloutChoice {
    pub const PRESETS: [&'static str; 3] = ["all at once", "canary → 10 % → 100 %", "custom"];

    /// What the preset sends: `None` for all at once.
    pub fn policy(&self) -> Result<Option<RolloutPolicy>, String> {
        match self.preset {
            1 => Ok(Some(RolloutPolicy {
                waves: vec![1, 10, 100],
                first_tag: Some("canary".into()),
                max_failures: Some(0),
                ..Default::default()
            })),
            2 => {
                let waves: Result<Vec<u8>, _> = self
                    .custom
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| p.trim().parse::<u8>())
                    .collect();
                let p = RolloutPolicy {
                    waves: waves.map_err(|_| "waves are whole % like 5,25,100".to_owned())?,
                    max_failures: Some(0),
                    ..Default::default()
                };
                match p.problem() {
                    Some(e) => Err(e.replace("rollout.", "")),
                    None => Ok(Some(p)),
                }
            }
            _ => Ok(None),
        }
    }

    /// The dialog's rollout line (none for the default, all at once).
    pub fn line(&self) -> Option<String> {
        match self.preset {
            1 => Some("  rollout: canary → 10 % → 100 %, pause on the first failure".into()),
            2 => Some(format!(
                "  rollout: custom waves {}▏ (type % like 5,25,100)",
                self.custom
            )),
            _ => None,
        }
    }
}

impl Confirm {
    fn on_key(&mut self, key: &KeyEvent) -> Outcome {
        if let Some(r) = self.rollout.as_mut() {
            match key.code {
                KeyCode::Char('w') => {
                    r.preset = (r.preset + 1) % RolloutChoice::PRESETS.len();
                    r.error = None;
                    return Outcome::Stay;
                }
                KeyCode::Char(c) if r.preset == 2 && (c.is_ascii_digit() || c == ',') => {
                    r.custom.push(c);
                    r.error = None;
                    return Outcome::Stay;
                }
                KeyCode::Backspace if r.preset == 2 => {
                    r.custom.pop();
                    return Outcome::Stay;
                }
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    let policy = match r.policy() {
                        Ok(p) => p,
                        Err(e) => {
                            r.error = Some(e);
                            return Outcome::Stay;
                        }
                    };
                    let mut request = self.request.clone();
                    if let Request::Deploy(req) = &mut request {
                        req.rollout = policy;
                    }
                    return Outcome::Submit(request);
                }
                _ => {}
            }
        }
        match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => Outcome::Submit(self.request.clone()),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Char('q') => Outcome::Close,
            _ => Outcome::Stay,
        }
    }
}
