//! Online / offline / never counts without a scan: every device that ever beat sits in
//! one bucket keyed by the second its "online" window ends (last beat + 3 × interval).
//! A scrape sums the buckets still in the future, a cost that depends on how many
//! distinct seconds are pending (at most 3 × the longest interval), never on the fleet.
//!
//! Kept by the beat writer (one move per beat) and device deletion; rebuilt from the
//! `live` tree at open. A device whose interval changes moves buckets at its next beat.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct OnlineTracker {
    inner: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Window end (unix seconds) → devices whose window ends then.
    by_expiry: BTreeMap<i64, u64>,
    /// Devices with a live record (they beat at least once).
    beaten: u64,
}

/// The second a device's online window ends.
pub fn expiry(last_beat_ns: i64, interval: u64) -> i64 {
    let window = i64::try_from(interval.saturating_mul(3)).unwrap_or(i64::MAX / 2);
    (last_beat_ns / 1_000_000_000).saturating_add(window)
}

impl OnlineTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A device beat: its window moved from `old` (none: its first beat) to `new`.
    pub fn moved(&self, old: Option<i64>, new: i64) {
        let mut b = self.lock();
        match old {
            Some(old) => b.remove(old),
            None => b.beaten += 1,
        }
        *b.by_expiry.entry(new).or_default() += 1;
    }

    /// A device that had beaten is gone.
    pub fn forget(&self, old: i64) {
        let mut b = self.lock();
        b.remove(old);
        b.beaten = b.beaten.saturating_sub(1);
    }

    /// (online, beaten) at `now_secs`; online windows include their last second.
    pub fn counts(&self, now_secs: i64) -> (u64, u64) {
        let mut b = self.lock();
        // Windows that ended long ago are offline for good: fold them away so the map
        // only holds seconds that may still matter.
        let stale: Vec<i64> = b.by_expiry.range(..now_secs).map(|(k, _)| *k).collect();
        for k in stale {
            b.by_expiry.remove(&k);
        }
        let online = b.by_expiry.values().sum();
        (online, b.beaten)
    }
}

impl Buckets {
    fn remove(&mut self, at: i64) {
        if let Some(n) = self.by_expiry.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.by_expiry.remove(&at);
            }
        }
    }
}
