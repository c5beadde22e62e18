//! Live events for `/events`: a bounded broadcast channel. Publishing never waits; a
//! subscriber that falls behind loses the oldest events and is told so (`lagged`).
//! Events are derived from store changes as they happen; a replica that restarts simply
//! starts a fresh stream (clients re-read state on reconnect).

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 1024;

/// One live event: an SSE `event:` name and its JSON `data:`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub data: Value,
}

#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    /// Publish to whoever listens (nobody listening is fine).
    pub fn emit(&self, kind: &'static str, data: impl Serialize) {
        let data = serde_json::to_value(data).unwrap_or(Value::Null);
        let _ = self.tx.send(Event { kind, data });
    }

    /// Is anyone listening? Lets hot paths skip building an event nobody reads.
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
