//! The keymap: one table of key → action, with the views each binding applies to. The
//! footer and the help screen are generated from it, so they can't drift from what the
//! keys actually do.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::action::{Action, View};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everywhere,
    Only(&'static [View]),
}

impl Scope {
    fn contains(self, view: View) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Only(views) => views.contains(&view),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub key: KeyCode,
    pub modifiers: KeyModifiers,
    pub action: Action,
    /// Shown in the footer and help.
    pub label: &'static str,
    /// Longer text for the help screen.
    pub help: &'static str,
    pub scope: Scope,
    /// Shown in the footer (movement keys stay in help only, to keep the footer short).
    pub footer: bool,
}

const FLEET: &[View] = &[View::Fleet];
const DEVICES: &[View] = &[View::Fleet, View::Device];
const LISTS: &[View] = &[View::Fleet, View::Deployments, View::Bundles];
const DEPLOY_FROM: &[View] = &[View::Fleet, View::Device, View::Bundles];
const DEPLOYMENTS: &[View] = &[View::Deployments];

#[derive(Debug, Clone)]
pub struct Keymap {
    bindings: Vec<Binding>,
}

impl Default for Keymap {
    fn default() -> Self {
        use Action as A;
        use KeyCode as K;
        let none = KeyModifiers::NONE;
        let b = |key, action, label, help, scope, footer| Binding {
            key,
            modifiers: none,
            action,
            label,
            help,
            scope,
            footer,
        };
        let every = Scope::Everywhere;
        let bindings = vec![
            b(
                K::Enter,
                A::Open,
                "open",
                "open the selected device, deployment, target or history row",
                Scope::Only(&[View::Fleet, View::Device, View::Deployments]),
                true,
            ),
            b(
                K::Char('l'),
                A::Details,
                "logs",
                "why it failed: the full error and log of a target, a history row or a device's last deploy",
                Scope::Only(&[View::Fleet, View::Device, View::Deployments]),
                true,
            ),
            b(
                K::Char(' '),
                A::Mark,
                "mark",
                "mark or unmark the device as a deploy target",
                Scope::Only(FLEET),
                true,
            ),
            b(
                K::Char('d'),
                A::Deploy,
                "deploy",
                "deploy a bundle to the marked devices, the selected one or a tag",
                Scope::Only(DEPLOY_FROM),
                true,
            ),
            b(
                K::Char('r'),
                A::Rollback,
                "rollback",
                "roll the device back to a version from its successful history",
                Scope::Only(DEVICES),
                true,
            ),
            b(
                K::Char('c'),
                A::EditConfig,
                "config",
                "edit the device's configuration",
                Scope::Only(DEVICES),
                true,
            ),
            b(
                K::Char('a'),
                A::Accept,
                "accept",
                "accept a pending device",
                Scope::Only(DEVICES),
                true,
            ),
            b(
                K::Char('x'),
                A::Reject,
                "reject",
                "reject the device (revokes its tokens)",
                Scope::Only(DEVICES),
                true,
            ),
            b(
                K::Char('p'),
                A::PauseResume,
                "pause/resume",
                "pause the selected rollout (no new deliveries), or resume it",
                Scope::Only(DEPLOYMENTS),
                true,
            ),
            b(
                K::Char('C'),
                A::CancelDeployment,
                "cancel",
                "cancel the selected deployment's pending targets",
                Scope::Only(DEPLOYMENTS),
                true,
            ),
            b(
                K::Char('/'),
                A::Filter,
                "filter",
                "filter the list (id, type, version, tag, status, failed/success)",
                Scope::Only(LISTS),
                true,
            ),
            b(
                K::Char('s'),
                A::Sort,
                "sort",
                "cycle the sort column",
                Scope::Only(FLEET),
                true,
            ),
            b(
                K::Char('S'),
                A::SortReverse,
                "reverse",
                "reverse the sort order (▾ marks the sort column, ▴ when reversed)",
                Scope::Only(FLEET),
                false,
            ),
            b(
                K::Char('u'),
                A::ClearMarks,
                "unmark",
                "clear all marks",
                Scope::Only(FLEET),
                false,
            ),
            b(
                K::Char(':'),
                A::Command,
                "cmd",
                "command: fleet, device ID, deployments, bundles, quit",
                every,
                true,
            ),
            b(K::Tab, A::NextView, "view", "next view", every, true),
            b(
                K::BackTab,
                A::PrevView,
                "prev view",
                "previous view",
                every,
                false,
            ),
            b(
                K::Char('R'),
                A::Refresh,
                "refresh",
                "re-read everything from the server",
                every,
                false,
            ),
            b(K::Char('?'), A::Help, "help", "this help", every, true),
            b(K::Esc, A::Back, "back", "close / go back", every, false),
            b(K::Char('q'), A::Quit, "quit", "quit", every, true),
            b(K::Up, A::Up, "↑", "up", every, false),
            b(K::Char('k'), A::Up, "k", "up", every, false),
            b(K::Down, A::Down, "↓", "down", every, false),
            b(K::Char('j'), A::Down, "j", "down", every, false),
            b(K::PageUp, A::PageUp, "PgUp", "page up", every, false),
            b(K::PageDown, A::PageDown, "PgDn", "page down", every, false),
            b(K::Home, A::Top, "Home", "first row", every, false),
            b(K::Char('g'), A::Top, "g", "first row", every, false),
            b(K::End, A::Bottom, "End", "last row", every, false),
            b(K::Char('G'), A::Bottom, "G", "last row", every, false),
        ];
        let mut map = Keymap { bindings };
        map.bindings.push(Binding {
            key: K::Char('c'),
            modifiers: KeyModifiers::CONTROL,
            action: A::Quit,
            label: "^C",
            help: "quit",
            scope: every,
            footer: false,
        });
        map
    }
}

impl Keymap {
    /// The action `key` means in `view`, if any.
    pub fn action(&self, view: View, key: &KeyEvent) -> Option<Action> {
        // Terminals report shifted letters as the upper-case char, with or without SHIFT.
        let mods = key.modifiers - KeyModifiers::SHIFT;
        self.bindings
            .iter()
            .find(|b| b.key == key.code && b.modifiers == mods && b.scope.contains(view))
            .map(|b| b.action.clone())
    }

    /// The footer's `key label` pairs for `view`, with the action (so the app can leave
    /// out what does not apply to the selection).
    pub fn footer(&self, view: View) -> Vec<(String, &'static str, Action)> {
        self.bindings
            .iter()
            .filter(|b| b.footer && b.scope.contains(view))
            .map(|b| (key_name(b), b.label, b.action.clone()))
            .collect()
    }

    /// Every binding, for the help screen: (keys, help text, views).
    pub fn help(&self) -> Vec<(String, &'static str, String)> {
        let mut out: Vec<(String, &'static str, String)> = Vec::new();
        for b in &self.bindings {
            let views = match b.scope {
                Scope::Everywhere => "all".to_owned(),
                Scope::Only(v) => v.iter().map(|v| v.title()).collect::<Vec<_>>().join(", "),
            };
            // Bindings for the same action and help text share one line: "↑ k  up".
            if let Some(last) = out.iter_mut().find(|(_, h, v)| *h == b.help && *v == views) {
                last.0.push(' ');
                last.0.push_str(&key_name(b));
                continue;
            }
            out.push((key_name(b), b.help, views));
        }
        out
    }
}

/// How a key is written in the footer and help.
fn key_name(b: &Binding) -> String {
    let base = match b.key {
        KeyCode::Char(' ') => "Space".to_owned(),
        KeyCode::Char(c) => c.to_string(),
        KeyCode::Enter => "Enter".to_owned(),
        KeyCode::Esc => "Esc".to_owned(),
        KeyCode::Tab => "Tab".to_owned(),
        KeyCode::BackTab => "S-Tab".to_owned(),
        KeyCode::Up => "↑".to_owned(),
        KeyCode::Down => "↓".to_owned(),
        KeyCode::PageUp => "PgUp".to_owned(),
        KeyCode::PageDown => "PgDn".to_owned(),
        KeyCode::Home => "Home".to_owned(),
        KeyCode::End => "End".to_owned(),
        other => format!("{other}"),
    };
    if b.modifiers.contains(KeyModifiers::CONTROL) {
        format!("^{}", base.to_uppercase())
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn keys_mean_what_the_spec_says() {
        let map = Keymap::default();
        assert_eq!(map.action(View::Fleet, &key('d')), Some(Action::Deploy));
        assert_eq!(map.action(View::Device, &key('r')), Some(Action::Rollback));
        assert_eq!(map.action(View::Fleet, &key(' ')), Some(Action::Mark));
        assert_eq!(
            map.action(
                View::Deployments,
                &KeyEvent::new(KeyCode::Char('C'), KeyModifiers::SHIFT)
            ),
            Some(Action::CancelDeployment)
        );
        assert_eq!(
            map.action(
                View::Fleet,
                &KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Some(Action::Quit)
        );
        // Out of scope: no rollback from the bundle list, no cancel in the fleet.
        assert_eq!(map.action(View::Bundles, &key('r')), None);
        assert_eq!(map.action(View::Fleet, &key('C')), None);
    }

    #[test]
    fn the_footer_lists_only_keys_that_apply() {
        let map = Keymap::default();
        let fleet: Vec<_> = map
            .footer(View::Fleet)
            .into_iter()
            .map(|(_, l, _)| l)
            .collect();
        assert!(
            fleet.contains(&"deploy") && fleet.contains(&"mark"),
            "{fleet:?}"
        );
        assert!(!fleet.contains(&"cancel"), "{fleet:?}");
        let deps: Vec<_> = map
            .footer(View::Deployments)
            .into_iter()
            .map(|(_, l, _)| l)
            .collect();
        assert!(
            deps.contains(&"cancel") && !deps.contains(&"mark"),
            "{deps:?}"
        );
    }

    #[test]
    fn every_dangerous_action_has_a_key() {
        let map = Keymap::default();
        for a in [
            Action::Deploy,
            Action::Rollback,
            Action::Reject,
            Action::CancelDeployment,
        ] {
            assert!(a.dangerous());
            assert!(map.bindings.iter().any(|b| b.action == a), "{a:?}");
        }
    }
}
