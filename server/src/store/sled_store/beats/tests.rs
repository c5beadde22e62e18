//! The live records across restarts: the log replays, snapshots keep what they hold,
//! deletions stay deleted, and a data dir with live records in the old sled tree moves.
#![allow(clippy::unwrap_used)]

use kernex_common::api::HeartbeatRequest;

use super::super::test_support::{device, reopen as open};
use super::*;

fn beat(device_id: &str, n: usize) -> Beat {
    Beat {
        device_id: device_id.to_owned(),
        at: Utc::now(),
        report: HeartbeatRequest {
            agent_version: format!("0.{n}.0"),
            cpu_pct: n as f64,
            memory_mb: 100.0,
            status: "idle".into(),
            current_bundle_version: Some("1.0.0".into()),
            config_version: Some(1),
            queued_reports: 0,
            trust_version: None,
        },
        polling_interval: 60,
    }
}

/// The `agent_version`s of a device's history, oldest first.
fn history(store: &SledStore, id: &str) -> Vec<String> {
    let mut h: Vec<String> = store
        .heartbeats(id, 10_000)
        .unwrap()
        .into_iter()
        .map(|r| r.agent_version)
        .collect();
    h.reverse();
    h
}

fn versions(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("0.{n}.0")).collect()
}

#[test]
fn beats_survive_a_reopen_without_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        let id = device(&store, 0, Utc::now());
        // 40 beats: two sealed chunks and 8 in the live record, one batch each.
        for n in 0..40 {
            store.write_beats_blocking(&[beat(&id, n)]).unwrap();
        }
        // No fsync, no snapshot: what a killed process leaves (the log was written).
        id
    };
    let store = open(dir.path());
    assert_eq!(history(&store, &id), versions(0..40));
    let live = store.live_record(&id).unwrap().unwrap();
    assert_eq!(live.agent_version, "0.39.0");
    assert_eq!(store.online.counts(Utc::now().timestamp()), (1, 1));
    // And it goes on from there.
    store.write_beats_blocking(&[beat(&id, 40)]).unwrap();
    assert_eq!(history(&store, &id), versions(0..41));
}

#[test]
fn a_snapshot_then_more_beats_replay_to_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        let id = device(&store, 0, Utc::now());
        let batch: Vec<Beat> = (0..20).map(|n| beat(&id, n)).collect();
        store.write_beats_blocking(&batch).unwrap();
        store
            .live_table
            .snapshot(|| store.flush_blocking().map_err(io_error))
            .unwrap();
        let batch: Vec<Beat> = (20..37).map(|n| beat(&id, n)).collect();
        store.write_beats_blocking(&batch).unwrap();
        id
    };
    let store = open(dir.path());
    assert_eq!(history(&store, &id), versions(0..37));
}

#[test]
fn a_deleted_device_stays_deleted_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let (gone, kept) = {
        let store = open(dir.path());
        let gone = device(&store, 0, now);
        let kept = device(&store, 1, now);
        store
            .write_beats_blocking(&[beat(&gone, 0), beat(&kept, 0)])
            .unwrap();
        store.delete_device(&gone, now).unwrap();
        store.flush_blocking().unwrap();
        // A beat that was in flight for it is dropped, not a resurrection.
        store.write_beats_blocking(&[beat(&gone, 1)]).unwrap();
        (gone, kept)
    };
    let store = open(dir.path());
    assert!(store.live_record(&gone).unwrap().is_none());
    assert!(history(&store, &gone).is_empty());
    assert_eq!(history(&store, &kept), versions(0..1));
    assert_eq!(store.online.counts(Utc::now().timestamp()), (1, 1));
}

#[test]
fn live_records_in_the_old_sled_tree_move_into_the_table_once() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        let id = device(&store, 0, Utc::now());
        let batch: Vec<Beat> = (0..5).map(|n| beat(&id, n)).collect();
        store.write_beats_blocking(&batch).unwrap();
        // Put the record where the previous layout kept it, and remove the new files.
        let record = store.live_table.read(&id, <[u8]>::to_vec).unwrap();
        store
            .db
            .open_tree("live")
            .unwrap()
            .insert(id.as_bytes(), record)
            .unwrap();
        store.flush_blocking().unwrap();
        id
    };
    std::fs::remove_dir_all(dir.path().join("live")).unwrap();
    {
        let store = open(dir.path());
        assert_eq!(history(&store, &id), versions(0..5));
        assert!(!store.db.tree_names().iter().any(|n| n.as_ref() == b"live"));
    }
    // Moved for good: the next start reads it from the table's snapshot.
    let store = open(dir.path());
    assert_eq!(history(&store, &id), versions(0..5));
}
