//! What a key asks the app to do. Keys map to actions through the keymap; the app's
//! `update` is the only place that acts on them.

/// The four main screens, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Fleet,
    Device,
    Deployments,
    Bundles,
}

impl View {
    pub const ALL: [View; 4] = [View::Fleet, View::Device, View::Deployments, View::Bundles];

    pub fn title(self) -> &'static str {
        match self {
            View::Fleet => "Fleet",
            View::Device => "Device",
            View::Deployments => "Deployments",
            View::Bundles => "Bundles",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    /// Esc: close what is open, else go back a screen.
    Back,
    NextView,
    PrevView,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// Enter: open the selected device (Fleet), deployment, target or history row.
    Open,
    /// `l`: the full error and log of the selected target or history row.
    Details,
    Filter,
    Command,
    /// Space: mark or unmark the selected device as a target.
    Mark,
    ClearMarks,
    /// Cycle the Fleet's sort column.
    Sort,
    /// Reverse the Fleet's sort order.
    SortReverse,
    Deploy,
    Rollback,
    EditConfig,
    Accept,
    Reject,
    CancelDeployment,
    /// Pause the selected rollout, or resume it when paused (SPEC §6).
    PauseResume,
    /// Re-read everything from the server.
    Refresh,
}

impl Action {
    /// Actions that change what devices run or may do ask for confirmation first.
    pub fn dangerous(&self) -> bool {
        matches!(
            self,
            Action::Deploy
                | Action::Rollback
                | Action::Reject
                | Action::CancelDeployment
                | Action::PauseResume
        )
    }
}
