//! Live events for `/events`: a bounded broadcast channel. Publishing never waits; a
//! subscriber that falls behind loses the oldest events and is told so (`lagged`).
//! Events are derived from store changes as they happen; a replica that restarts simply
//! starts a fresh stream (clients re-read state on reconnect).

use kernex_common::api::events::ServerEvent;
use tokio::sync::broadcast;

use crate::cluster::{Cluster, Note};

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 1024;

#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<ServerEvent>,
    /// Replicas (SPEC §8): events go to the other replicas' subscribers too.
    cluster: Cluster,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(Cluster::default())
    }
}

impl Events {
    pub fn new(cluster: Cluster) -> Self {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
            cluster,
        }
    }

    /// Publish to whoever listens, on this replica and the others (nobody listening is
    /// fine). Each subscriber's stream serialises it (`ServerEvent::data_json`) as it
    /// writes the frame. Heartbeat events cross replicas only while another replica has
    /// subscribers.
    pub fn emit(&self, event: ServerEvent) {
        if self.cluster.outbox.is_open()
            && (!matches!(event, ServerEvent::Heartbeat(_)) || self.cluster.remote_listeners())
        {
            self.cluster.outbox.send(Note::Event {
                event: event.clone(),
            });
        }
        self.emit_here(event);
    }

    /// Publish to this replica's subscribers only (an event another replica sent).
    pub fn emit_here(&self, event: ServerEvent) {
        let _ = self.tx.send(event);
    }

    /// Is anyone listening, here or on another replica? Lets hot paths skip building an
    /// event nobody reads.
    pub fn has_subscribers(&self) -> bool {
        self.local_subscribers() > 0 || self.cluster.remote_listeners()
    }

    /// Subscribers on this replica.
    pub fn local_subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        let rx = self.tx.subscribe();
        if self.cluster.outbox.is_open() && self.tx.receiver_count() == 1 {
            // The first subscriber here: other replicas start sending heartbeat events
            // now rather than at the next periodic "listening".
            self.cluster.outbox.send(Note::Listening);
        }
        rx
    }
}
