//! Live events for `/events`: a bounded broadcast channel. Publishing never waits; a
//! subscriber that falls behind loses the oldest events and is told so (`lagged`).
//! Events are derived from store changes as they happen; a replica that restarts simply
//! starts a fresh stream (clients re-read state on reconnect).

use kernex_common::api::events::ServerEvent;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 1024;

#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<ServerEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    /// Publish to whoever listens (nobody listening is fine). Each subscriber's stream
    /// serialises it (`ServerEvent::data_json`) as it writes the frame.
    pub fn emit(&self, event: ServerEvent) {
        let _ = self.tx.send(event);
    }

    /// Is anyone listening? Lets hot paths skip building an event nobody reads.
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.tx.subscribe()
    }
}
