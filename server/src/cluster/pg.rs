//! The feed and the timer lease on PostgreSQL: envelopes go out with `pg_notify` and come
//! in on a `LISTEN` connection; the lease is a session advisory lock, held on a
//! connection of its own (a replica that dies closes it, and the lock with it).

use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::{Cluster, Envelope, Feed, Note, RESYNC, apply, pack, resync};
use crate::state::{AppState, Inner};
use crate::store::Result;

/// The `LISTEN/NOTIFY` channel of notes.
const CHANNEL: &str = "kernex_cluster";
/// Token changes, sent by the store's own transactions (see its token cache).
const TOKEN_CHANNEL: &str = crate::store::TOKEN_CHANNEL;
/// The advisory lock whose holder runs the timers ("kernex" in ASCII).
const LEASE_KEY: i64 = 0x0000_6b65_726e_6578;
/// How often the lease holder checks its connection, and others try to take it.
const LEASE_CHECK: Duration = Duration::from_secs(1);
/// How long a lease query may take before the lease counts as lost.
const LEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// Notes one envelope batch takes from the outbox at most.
const DRAIN: usize = 4096;

/// `pg_notify` as a [`Feed`].
#[derive(Debug, Clone)]
pub struct PgFeed {
    pool: PgPool,
}

#[async_trait]
impl Feed for PgFeed {
    fn max_payload(&self) -> usize {
        // PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
        7900
    }

    async fn publish(&self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Join the replicas on `pool`'s database: open the outbox, and start the publisher, the
/// listener, the lease and the upkeep (presence, resync). Each task ends once the
/// server state is dropped.
pub fn start(state: &AppState, pool: PgPool) {
    let cluster = state.cluster.clone();
    let Some(outbox) = cluster.outbox.open() else {
        return; // already started
    };
    let feed = PgFeed { pool: pool.clone() };
    tokio::spawn(publish(feed, cluster.replica.clone(), outbox));
    tokio::spawn(listen(
        pool.clone(),
        state.downgrade(),
        cluster.replica.clone(),
    ));
    tokio::spawn(lease(pool, state.downgrade(), cluster));
    tokio::spawn(upkeep(state.downgrade()));
}

/// Send what the outbox holds, in envelopes the feed takes. Ends when the outbox's
/// sender (the server state) is gone.
async fn publish(feed: impl Feed, replica: String, mut outbox: mpsc::Receiver<Note>) {
    while let Some(first) = outbox.recv().await {
        let mut notes = vec![first];
        while notes.len() < DRAIN {
            match outbox.try_recv() {
                Ok(note) => notes.push(note),
                Err(_) => break,
            }
        }
        for payload in pack(&replica, notes, feed.max_payload()) {
            if let Err(e) = feed.publish(&payload).await {
                // The other replicas' resync covers what this loses.
                tracing::warn!(error = %e, "publishing to the other replicas failed");
            }
        }
    }
}

/// Apply what the other replicas publish, and hear token changes. The store's token
/// cache serves only while this listener is connected: when the connection is lost it
/// stops at once; once a new connection's `LISTEN` is in place it starts again, empty,
/// and a resync follows (what was sent meanwhile is lost).
async fn listen(pool: PgPool, state: Weak<Inner>, replica: String) {
    let mut reconnected = false;
    loop {
        let Some(listener) = connect_retrying(&pool, &state).await else {
            return;
        };
        let Some(inner) = state.upgrade() else {
            return;
        };
        let live = AppState::from_inner(inner);
        live.store.token_notices(true);
        if reconnected {
            resync(&live).await;
        }
        drop(live);
        receive(listener, &state, &replica).await;
        let Some(inner) = state.upgrade() else {
            return;
        };
        AppState::from_inner(inner).store.token_notices(false);
        reconnected = true;
    }
}

/// Handle notifications until the connection is lost (or the state is gone).
async fn receive(mut listener: PgListener, state: &Weak<Inner>, replica: &str) {
    loop {
        let received = listener.try_recv().await;
        let Some(inner) = state.upgrade() else {
            return;
        };
        let state = AppState::from_inner(inner);
        match received {
            Ok(Some(n)) if n.channel() == TOKEN_CHANNEL => state.store.token_changed(),
            Ok(Some(n)) => match serde_json::from_str::<Envelope>(n.payload()) {
                Ok(env) if env.from != replica => {
                    for note in env.notes {
                        apply(&state, note).await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable note from another replica"),
            },
            Ok(None) => {
                tracing::warn!("lost the connection to the other replicas' notes; reconnecting");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening to the other replicas failed; reconnecting");
                return;
            }
        }
    }
}

/// A listener on both channels, retried every [`LEASE_CHECK`]; `None` once the state is
/// gone.
async fn connect_retrying(pool: &PgPool, state: &Weak<Inner>) -> Option<PgListener> {
    loop {
        match connect_listener(pool).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "listening to the other replicas failed; retrying");
                tokio::time::sleep(LEASE_CHECK).await;
                if state.strong_count() == 0 {
                    return None;
                }
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([CHANNEL, TOKEN_CHANNEL]).await?;
    Ok(listener)
}

/// Hold the timer lease when no other replica does; give it up with the state.
async fn lease(pool: PgPool, state: Weak<Inner>, cluster: Cluster) {
    while state.strong_count() > 0 {
        if let Ok(conn) = pool.acquire().await {
            hold(conn.detach(), &state, &cluster).await;
        }
        cluster.set_leader(false);
        tokio::time::sleep(LEASE_CHECK).await;
    }
}

/// Take the lease on `conn` when free, then keep it while the connection lives.
async fn hold(mut conn: sqlx::PgConnection, state: &Weak<Inner>, cluster: &Cluster) {
    loop {
        if state.strong_count() == 0 {
            return;
        }
        let won = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LEASE_KEY)
            .fetch_one(&mut conn);
        match tokio::time::timeout(LEASE_TIMEOUT, won).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => tokio::time::sleep(LEASE_CHECK).await,
            Ok(Err(_)) | Err(_) => return,
        }
    }
    cluster.set_leader(true);
    loop {
        tokio::time::sleep(LEASE_CHECK).await;
        if state.strong_count() == 0 {
            return; // dropping the connection releases the lock
        }
        // A check that does not answer in time counts as a lost lease: a connection
        // gone silent (a network partition) must not keep this replica leading while
        // the database has already released the lock to another.
        let alive = sqlx::query("SELECT 1").execute(&mut conn);
        if !matches!(tokio::time::timeout(LEASE_TIMEOUT, alive).await, Ok(Ok(_))) {
            return;
        }
    }
}

/// Say "I have `/events` subscribers" while it is true, and rebuild the work index from
/// the store every [`RESYNC`].
async fn upkeep(state: Weak<Inner>) {
    let every = super::LISTENING_FOR / 3;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_resync = (RESYNC.as_millis() / every.as_millis()).max(1);
    let mut n: u128 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = state.upgrade() else {
            return;
        };
        let state = AppState::from_inner(inner);
        if state.events.local_subscribers() > 0 {
            state.cluster.outbox.send(Note::Listening);
        }
        n += 1;
        if n.is_multiple_of(per_resync) {
            resync(&state).await;
        }
    }
}
