//! Replicas on one database (SPEC §8): what one server process tells the others, and
//! which of them runs the timers.
//!
//! Each replica keeps two things in memory that other replicas' writes change: the
//! heartbeat work index ([`crate::service::heartbeat`]) and the `/events` subscribers.
//! So every change a replica makes to its index, and every event it emits, also goes
//! out as a [`Note`] through the [`Outbox`]; a feed carries the notes to every other
//! replica, which applies them as if it had made the change itself. The feed is a small
//! interface ([`Feed`]): PostgreSQL's `LISTEN/NOTIFY` today ([`pg`]); a distributed
//! engine's changefeed is another implementation, not a port.
//!
//! The index is a hint that errs towards "look" (see `heartbeat.rs`), and a feed may
//! drop notes (a reconnect, a full outbox), so each replica also rebuilds its index from
//! the store every [`RESYNC`] and after every reconnect: a lost note delays a command
//! by at most that long, and never loses one.
//!
//! Timers (the rollout driver's tick) run on one replica at a time: the holder of a
//! lease ([`Leadership`]). Everything a timer does is a short transaction that checks
//! the stored state first, so the moment two replicas both believe they hold it (a lease
//! lost and taken over within a second) costs nothing but a repeated read.

pub mod pg; // the feed and the lease on PostgreSQL

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kernex_common::api::events::ServerEvent;
use kernex_common::api::{Admission, DeviceConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::state::AppState;

/// How often a replica rebuilds its work index from the store.
pub const RESYNC: Duration = Duration::from_secs(15);
/// How long a replica's "I have `/events` subscribers" lasts (it repeats it every third
/// of this while it has some): heartbeat events cross replicas only while someone
/// listens somewhere.
pub const LISTENING_FOR: Duration = Duration::from_secs(15);
/// A touch of more devices than this is sent as [`Note::Resync`] instead.
const TOUCH_MAX: usize = 100;
/// Notes waiting for the feed before new ones are dropped (the resync covers them).
const OUTBOX: usize = 16 * 1024;

/// One change another replica must know about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// A live event for `/events` subscribers.
    Event { event: ServerEvent },
    /// These devices' targets changed.
    Touch { devices: Vec<String> },
    /// A device's admission changed.
    Admission {
        device_id: String,
        admission: Admission,
    },
    /// A device's config was set.
    Config { config: DeviceConfig },
    /// A device was deleted.
    Forget { device_id: String },
    /// Many devices changed at once: rebuild the work index from the store.
    Resync,
    /// The sender has `/events` subscribers: send heartbeat events too.
    Listening,
}

/// What travels through the feed: a batch of notes from one replica.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending replica (it skips its own envelopes).
    pub from: String,
    pub notes: Vec<Note>,
}

/// Carries envelopes between replicas.
#[async_trait]
pub trait Feed: Send + Sync + std::fmt::Debug {
    /// The largest serialised envelope [`Feed::publish`] takes.
    fn max_payload(&self) -> usize;
    /// Deliver one serialised envelope to every replica (the sender's own included).
    async fn publish(&self, payload: &str) -> crate::store::Result<()>;
}

/// Where the heartbeat service and the event bus post their notes. Empty (every send a
/// no-op) on a store of one's own; a replica's feed opens it at start.
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<OnceLock<mpsc::Sender<Note>>>);

impl Outbox {
    /// Does a feed read from this outbox?
    pub fn is_open(&self) -> bool {
        self.0.get().is_some()
    }

    /// Post a note (never waits; a full outbox drops it, the resync covers it).
    pub fn send(&self, note: Note) {
        if let Some(tx) = self.0.get()
            && tx.try_send(note).is_err()
        {
            tracing::debug!("cluster outbox full: a note was dropped (the next resync covers it)");
        }
    }

    /// Post a touch (a big one as a resync).
    pub fn send_touch(&self, devices: Vec<String>) {
        if devices.len() > TOUCH_MAX {
            self.send(Note::Resync);
        } else if !devices.is_empty() {
            self.send(Note::Touch { devices });
        }
    }

    /// Open the outbox: the feed reads what it returns.
    fn open(&self) -> Option<mpsc::Receiver<Note>> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        self.0.set(tx).ok().map(|()| rx)
    }
}

/// This replica's place among the others.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub outbox: Outbox,
    /// A random name for this process, to skip its own envelopes.
    pub replica: String,
    /// This replica holds the timer lease (always, on a store of one's own).
    leader: Arc<AtomicBool>,
    /// Until when (ms since the epoch) some other replica has `/events` subscribers.
    remote_listeners_until: Arc<AtomicI64>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new(true)
    }
}

impl Cluster {
    /// `leader`: whether timers run here from the start (a single server), or only once
    /// a lease is won (replicas).
    pub fn new(leader: bool) -> Self {
        Cluster {
            outbox: Outbox::default(),
            replica: crate::store::new_id(),
            leader: Arc::new(AtomicBool::new(leader)),
            remote_listeners_until: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Do the timers run on this replica now?
    pub fn leads(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    fn set_leader(&self, leads: bool) {
        if self.leader.swap(leads, Ordering::AcqRel) != leads {
            tracing::info!(replica = %self.replica, leads, "timer lease changed hands");
        }
    }

    /// Does some other replica want heartbeat events now?
    pub fn remote_listeners(&self) -> bool {
        // Alone (sled), there is no other replica: no clock read on every heartbeat.
        let until = self.remote_listeners_until.load(Ordering::Relaxed);
        until > 0 && until > chrono::Utc::now().timestamp_millis()
    }

    fn heard_listening(&self) {
        let until = chrono::Utc::now().timestamp_millis()
            + i64::try_from(LISTENING_FOR.as_millis()).unwrap_or(i64::MAX);
        self.remote_listeners_until.store(until, Ordering::Relaxed);
    }
}

/// Apply what another replica said.
pub async fn apply(state: &AppState, note: Note) {
    match note {
        Note::Event { event } => state.events.emit_here(event),
        Note::Touch { devices } => state
            .heartbeats
            .touch_here(devices.iter().map(String::as_str)),
        Note::Admission {
            device_id,
            admission,
        } => state
            .heartbeats
            .admission_changed_here(&device_id, admission),
        Note::Config { config } => state.heartbeats.config_changed_here(&config),
        Note::Forget { device_id } => state.heartbeats.forget_here(&device_id),
        Note::Resync => resync(state).await,
        Note::Listening => state.cluster.heard_listening(),
    }
}

/// Rebuild the work index from the store.
pub async fn resync(state: &AppState) {
    match state.store.work_snapshot().await {
        Ok(snapshot) => state.heartbeats.resync(snapshot),
        Err(e) => tracing::warn!(error = %e, "rebuilding the work index failed"),
    }
}

/// Split notes into envelopes no bigger than `max` bytes serialised (a note too big on
/// its own is dropped with a warning: the resync covers index notes, and an event that
/// big is not one this server emits).
pub fn pack(from: &str, notes: Vec<Note>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut batch: Vec<Note> = Vec::new();
    let mut size = from.len() + 32;
    for note in notes {
        let len = serde_json::to_string(&note).map_or(usize::MAX, |s| s.len() + 1);
        if size + len > max && !batch.is_empty() {
            out.extend(envelope(from, std::mem::take(&mut batch)));
            size = from.len() + 32;
        }
        if size + len > max {
            tracing::warn!(len, "a cluster note too big for the feed was dropped");
            continue;
        }
        size += len;
        batch.push(note);
    }
    if !batch.is_empty() {
        out.extend(envelope(from, batch));
    }
    out
}

fn envelope(from: &str, notes: Vec<Note>) -> Option<String> {
    serde_json::to_string(&Envelope {
        from: from.to_owned(),
        notes,
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_every_note_in_order_under_the_limit() {
        let notes: Vec<Note> = (0..500)
            .map(|i| Note::Forget {
                device_id: format!("device-{i:04}"),
            })
            .collect();
        let envelopes = pack("r1", notes.clone(), 1000);
        assert!(envelopes.len() > 10);
        let mut back = Vec::new();
        for e in &envelopes {
            assert!(e.len() <= 1000, "envelope of {} bytes", e.len());
            let env: Envelope = serde_json::from_str(e).unwrap();
            assert_eq!(env.from, "r1");
            back.extend(env.notes);
        }
        assert_eq!(back, notes);
    }

    #[test]
    fn a_note_bigger_than_the_limit_is_dropped_alone() {
        let big = Note::Touch {
            devices: vec!["x".repeat(2000)],
        };
        let envelopes = pack("r1", vec![Note::Resync, big, Note::Listening], 500);
        let notes: Vec<Note> = envelopes
            .iter()
            .flat_map(|e| serde_json::from_str::<Envelope>(e).unwrap().notes)
            .collect();
        assert_eq!(notes, vec![Note::Resync, Note::Listening]);
    }

    #[test]
    fn a_big_touch_becomes_a_resync() {
        let outbox = Outbox::default();
        let mut rx = outbox.open().unwrap();
        outbox.send_touch((0..=TOUCH_MAX).map(|i| i.to_string()).collect());
        outbox.send_touch(vec!["a".into()]);
        assert_eq!(rx.try_recv().unwrap(), Note::Resync);
        assert_eq!(
            rx.try_recv().unwrap(),
            Note::Touch {
                devices: vec!["a".into()]
            }
        );
    }
}
