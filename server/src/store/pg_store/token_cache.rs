//! A cache of live tokens for PostgreSQL, so a heartbeat costs no database read for its
//! bearer token (the request's only other round trip is shared by a whole beat batch).
//!
//! A revocation must stop a token on every replica at once, so the cache serves only
//! while this replica is known to hear every token change:
//! - every transaction that removes or replaces a token also sends `pg_notify` on
//!   [`CHANNEL`], which PostgreSQL delivers to every listening replica when, and only
//!   when, it commits;
//! - the replica's listener turns the cache on once its `LISTEN` is in place and off
//!   the moment that connection is lost (what was sent meanwhile is gone), clearing it
//!   both times, and clears it on every notice;
//! - the replica that made the change clears its own cache as soon as the change has
//!   committed, before it answers, so its next request already sees it.
//!
//! Entries go through a generation check: a lookup that started before a clear cannot
//! put what it read back into the cache after it. Only live tokens are cached (an unknown
//! token always asks the database), and an entry also expires after [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Principal;

/// The `LISTEN/NOTIFY` channel of token changes.
pub const CHANNEL: &str = "kernex_tokens";
/// An entry's life at most (a bound for a change the notices somehow missed).
const TTL: Duration = Duration::from_secs(60);
/// Entries kept at most; a full cache starts over.
const CAPACITY: usize = 200_000;

#[derive(Default)]
pub struct TokenCache {
    /// Serving: the replica's listener hears every token change.
    live: AtomicBool,
    /// Bumped by every clear.
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("TokenCache")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("entries", &entries)
            .finish()
    }
}

impl TokenCache {
    /// The principal cached for `hash`, if the cache serves and the entry is fresh.
    pub fn get(&self, hash: &str) -> Option<Principal> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(p, _)| p.clone())
    }

    /// Taken before a database lookup, handed back to [`TokenCache::put`] with its answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remember `principal` for `hash`, unless the cache was cleared since `generation`
    /// was taken (the answer may predate the change that cleared it).
    pub fn put(&self, generation: u64, hash: &str, principal: &Principal) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that `clear` takes: no clear can slip in between.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(hash.to_owned(), (principal.clone(), Instant::now()));
    }

    /// Forget everything (a token changed, here or on another replica).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Serve (`true`: the listener is in place) or stop serving (it was lost); both
    /// clear.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.clear();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator() -> Principal {
        Principal::Operator {
            name: "admin".into(),
        }
    }

    #[test]
    fn serves_only_while_live() {
        let cache = TokenCache::default();
        cache.put(cache.generation(), "h", &operator());
        assert_eq!(cache.get("h"), None, "not live yet: nothing kept");
        cache.set_live(true);
        cache.put(cache.generation(), "h", &operator());
        assert_eq!(cache.get("h"), Some(operator()));
        cache.set_live(false);
        assert_eq!(cache.get("h"), None);
        cache.set_live(true);
        assert_eq!(cache.get("h"), None, "going live again starts empty");
    }

    #[test]
    fn a_lookup_older_than_a_clear_is_not_kept() {
        let cache = TokenCache::default();
        cache.set_live(true);
        let before = cache.generation();
        cache.clear(); // a revocation committed while the lookup was in flight
        cache.put(before, "h", &operator());
        assert_eq!(cache.get("h"), None);
        cache.put(cache.generation(), "h", &operator());
        cache.clear();
        assert_eq!(cache.get("h"), None);
    }
}
