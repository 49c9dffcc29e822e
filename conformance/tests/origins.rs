//! The origins rebuilt as examples, checked here on a small size on every kernel backend.
//!
//! The write-ahead log (`engine/examples/wal/log.rs`): eight writers append with group
//! commit through the crash simulator; a last round of appends is left in flight (its group
//! written but perhaps not synced) and power is lost under each policy. Reopened on a fresh
//! engine, the log must replay every acknowledged record, in LSN order from 0, and only
//! records that were appended, and take new records after them. An append after the dropped
//! round must answer rather than wait for a group nobody writes. A torn tail written by hand
//! must be found by its checksum and cut off, to the byte.
//!
//! The blob store (`engine/examples/blob/store.rs`): eight writers put objects through the
//! crash simulator, some are deleted, a last round of puts is left in flight, and power is
//! lost under each policy. Reopened on a fresh engine (the index rebuilt by scanning the
//! file), the store must hold every acknowledged object not deleted, with its bytes, none
//! that was deleted, and only objects that check out.
//!
//! The snapshot writer (`engine/examples/snapshot/pipeline.rs`): a 16 MiB stream in 1 MiB
//! writes, two buffers in turn, through the crash simulator; power lost after its sync must
//! leave the whole stream, and the file must read back as the stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use conformance::crash::{crash_config, CrashPolicy, CrashSim};
use conformance::runner::{self, Outcome, Trial};
use engine::{block_on, join_all, Engine};

#[path = "../../engine/examples/wal/log.rs"]
mod log;
#[path = "../../engine/examples/snapshot/pipeline.rs"]
mod pipeline;
#[path = "../../engine/examples/blob/store.rs"]
mod store;

use log::Wal;

const WRITERS: usize = 8;
const RECORDS: usize = 40;

fn payload(writer: usize, i: usize) -> Vec<u8> {
    format!("writer {writer} record {i} ")
        .repeat(1 + i % 5)
        .into_bytes()
}

/// Polls `future` a few times, pausing between polls so the kernel can complete what it
/// started, then drops it: requests stay in flight or complete unawaited.
fn poll_then_drop<F: Future>(future: F, polls: usize) {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if future.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn open(backend: &str) -> Result<Engine, String> {
    Engine::with_backend(backend, crash_config()).map_err(|e| e.to_string())
}

fn survives(backend: &'static str, policy: CrashPolicy, seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("wal");
    let engine = CrashSim::new(open(backend)?, 512);
    let (wal, replayed) = block_on(Wal::open(engine, &path)).map_err(|e| e.to_string())?;
    if !replayed.is_empty() {
        return Err("a new log replayed records".into());
    }
    let mut appended: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // Acknowledged rounds: every writer's appends in flight together.
    let results = block_on(join_all(
        (0..WRITERS)
            .map(|w| {
                let wal = &wal;
                async move {
                    let mut mine = Vec::new();
                    for i in 0..RECORDS {
                        let lsn = wal.append(payload(w, i)).await?;
                        mine.push((lsn, payload(w, i)));
                    }
                    Ok::<_, engine::Error>(mine)
                }
            })
            .collect(),
    ));
    for writer in results {
        for (lsn, payload) in writer.map_err(|e| format!("append: {e}"))? {
            appended.insert(payload.clone(), ());
            acked.insert(lsn, payload);
        }
    }
    if wal.groups() >= (WRITERS * RECORDS) as u64 {
        return Err(format!(
            "{} groups for {} records: no group commit",
            wal.groups(),
            WRITERS * RECORDS
        ));
    }
    // A last round left in flight: written perhaps, synced perhaps not, acknowledged never.
    let tail: Vec<Vec<u8>> = (0..WRITERS).map(|w| payload(w, RECORDS + w)).collect();
    for p in &tail {
        appended.insert(p.clone(), ());
    }
    let polls = 1 + (seed % 4) as usize;
    poll_then_drop(
        join_all(tail.into_iter().map(|p| wal.append(p)).collect()),
        polls,
    );
    // An append after the dropped ones must answer (taken, or refused if their leader was
    // dropped midway), never wait forever for a group nobody writes (the trial's time limit
    // fails a hang).
    let after = b"after the dropped round".to_vec();
    if let Ok(lsn) = block_on(wal.append(after.clone())) {
        appended.insert(after.clone(), ());
        acked.insert(lsn, after);
    }
    let sim = wal.close().map_err(|e| format!("close: {e}"))?;
    let ledger = sim.crash(policy, seed);
    let losses = ledger.verify();
    if !losses.is_empty() {
        return Err(format!("the crash lost acknowledged sectors: {losses:?}"));
    }
    // Recovery on a fresh engine.
    let (wal, replayed) =
        block_on(Wal::open(open(backend)?, &path)).map_err(|e| format!("reopen: {e}"))?;
    for (i, (lsn, payload)) in replayed.iter().enumerate() {
        if *lsn != i as u64 {
            return Err(format!("record {i} replayed with LSN {lsn}"));
        }
        if !appended.contains_key(payload) {
            return Err(format!("LSN {lsn} replayed bytes never appended"));
        }
    }
    for (lsn, payload) in &acked {
        match replayed.get(*lsn as usize) {
            Some((_, got)) if got == payload => {}
            _ => {
                return Err(format!(
                    "acknowledged LSN {lsn} was not replayed as appended"
                ))
            }
        }
    }
    // The log takes records again after the replayed ones.
    let next = block_on(wal.append(b"after recovery".to_vec())).map_err(|e| e.to_string())?;
    if next != replayed.len() as u64 {
        return Err(format!(
            "the first record after recovery got LSN {next}, not {}",
            replayed.len()
        ));
    }
    Ok(())
}

fn torn_tail_is_truncated(backend: &'static str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("wal");
    let (wal, _) = block_on(Wal::open(open(backend)?, &path)).map_err(|e| e.to_string())?;
    for i in 0..3 {
        block_on(wal.append(payload(0, i))).map_err(|e| e.to_string())?;
    }
    drop(wal.close().map_err(|e| e.to_string())?);
    let good = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    // A group header that promises more than follows, and a body of garbage: a torn group.
    let mut torn = vec![0u8; 8192];
    torn[..4].copy_from_slice(b"WALG");
    torn[4..8].copy_from_slice(&1u32.to_le_bytes());
    torn[8..16].copy_from_slice(&3u64.to_le_bytes());
    torn[16..20].copy_from_slice(&100u32.to_le_bytes());
    torn[24..124].fill(0xa5);
    append_raw(&path, &torn)?;
    let (wal, replayed) =
        block_on(Wal::open(open(backend)?, &path)).map_err(|e| format!("reopen: {e}"))?;
    if replayed.len() != 3 {
        return Err(format!("{} records replayed, not 3", replayed.len()));
    }
    let after = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    if after != good {
        return Err(format!(
            "the torn tail was not cut: {after} bytes, not {good}"
        ));
    }
    drop(wal);
    Ok(())
}

fn snapshot_survives(backend: &'static str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("snapshot");
    let sim = CrashSim::new(open(backend)?, 512);
    let options = engine::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true);
    let file = match engine::Backend::open(&sim, &path, &options.clone().direct(true)) {
        Ok(file) => file,
        Err(_) => engine::Backend::open(&sim, &path, &options).map_err(|e| e.to_string())?,
    };
    let len = 16 << 20;
    let mut stream = pipeline::Stream::new(len);
    let stats = pipeline::write(&sim, &file, &mut stream, len, 1 << 20, 2)
        .map_err(|e| format!("write: {e}"))?;
    if stats.waited > stats.elapsed {
        return Err("the producer waited longer than the whole write took".into());
    }
    if stats.waits > 16 {
        return Err(format!(
            "the producer waited {} times for 16 writes",
            stats.waits
        ));
    }
    drop(file);
    let losses = sim.crash(CrashPolicy::DropAll, 5).verify();
    if !losses.is_empty() {
        return Err(format!("the crash lost synced sectors: {losses:?}"));
    }
    let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
    if bytes.len() as u64 != len {
        return Err(format!("{} bytes after the crash, not {len}", bytes.len()));
    }
    let digest = bytes.chunks(8).fold(pipeline::DIGEST_START, |d, w| {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        pipeline::digest_step(d, u64::from_le_bytes(word))
    });
    if digest != stream.digest {
        return Err("the file does not read back as the stream".into());
    }
    Ok(())
}

/// Blob object `i` of writer `w`.
fn blob(w: usize, i: usize) -> Vec<u8> {
    let len = 1 + (w * 7919 + i * 104_729) % (40 << 10);
    (0..len)
        .map(|b| (b as u8) ^ (w as u8).wrapping_mul(17) ^ (i as u8))
        .collect()
}

fn blobs_survive(backend: &'static str, policy: CrashPolicy, seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("blobs");
    let capacity = 16 << 20;
    let sim = CrashSim::new(open(backend)?, 512);
    let blobs =
        block_on(store::BlobStore::open(sim, &path, capacity)).map_err(|e| e.to_string())?;
    let results = block_on(join_all(
        (0..WRITERS)
            .map(|w| {
                let blobs = &blobs;
                async move {
                    let mut mine = Vec::new();
                    for i in 0..6 {
                        mine.push((blobs.put(&blob(w, i)).await?, blob(w, i)));
                    }
                    Ok::<_, engine::Error>(mine)
                }
            })
            .collect(),
    ));
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for writer in results {
        acked.extend(writer.map_err(|e| format!("put: {e}"))?);
    }
    let deleted: Vec<u64> = acked.keys().copied().step_by(4).collect();
    let free_before = blobs.free_bytes();
    for id in &deleted {
        block_on(blobs.delete(*id)).map_err(|e| format!("delete: {e}"))?;
        acked.remove(id);
    }
    if blobs.free_bytes() <= free_before {
        return Err("deleting objects freed no space".into());
    }
    // A second round after the deletes, acknowledged with no later sync to cover it.
    let second = block_on(join_all(
        (0..WRITERS)
            .map(|w| {
                let blobs = &blobs;
                async move {
                    let mut mine = Vec::new();
                    for i in 10..13 {
                        mine.push((blobs.put(&blob(w, i)).await?, blob(w, i)));
                    }
                    Ok::<_, engine::Error>(mine)
                }
            })
            .collect(),
    ));
    for writer in second {
        acked.extend(writer.map_err(|e| format!("put: {e}"))?);
    }
    // A last round left in flight.
    let polls = 1 + (seed % 4) as usize;
    let tail: Vec<Vec<u8>> = (0..WRITERS).map(|w| blob(w, 100)).collect();
    poll_then_drop(join_all(tail.iter().map(|b| blobs.put(b)).collect()), polls);
    let sim = blobs.close().map_err(|e| format!("close: {e}"))?;
    let losses = sim.crash(policy, seed).verify();
    if !losses.is_empty() {
        return Err(format!("the crash lost acknowledged sectors: {losses:?}"));
    }
    let blobs = block_on(store::BlobStore::open(open(backend)?, &path, capacity))
        .map_err(|e| format!("reopen: {e}"))?;
    let held = blobs.ids();
    for (id, bytes) in &acked {
        match block_on(blobs.get(*id)) {
            Ok(got) if &got == bytes => {}
            Ok(_) => return Err(format!("object {id} came back with other bytes")),
            Err(e) => return Err(format!("acknowledged object {id} is gone: {e}")),
        }
    }
    for id in &held {
        if deleted.contains(id) {
            return Err(format!("deleted object {id} came back"));
        }
        if !acked.contains_key(id) {
            // A put in flight at the crash: it may survive, but only whole.
            let got = block_on(blobs.get(*id)).map_err(|e| format!("object {id}: {e}"))?;
            if !tail.contains(&got) {
                return Err(format!("object {id} holds bytes never put"));
            }
        }
    }
    // The store takes new objects in the space it found free.
    let id = block_on(blobs.put(b"after the crash")).map_err(|e| e.to_string())?;
    if block_on(blobs.get(id)).map_err(|e| e.to_string())? != b"after the crash" {
        return Err("a put after recovery reads back other bytes".into());
    }
    Ok(())
}

fn append_raw(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    file.write_all(bytes).map_err(|e| e.to_string())
}

fn outcome(backend: &str, run: impl FnOnce() -> Result<(), String>) -> Outcome {
    if let Err(e) = open(backend) {
        return Outcome::Skipped(format!("{backend} cannot run here: {e}"));
    }
    match run() {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e),
    }
}

fn main() {
    let mut all = Vec::new();
    for backend in ["uring", "aio", "sync"] {
        let group = format!("wal:{backend}");
        for (k, policy) in CrashPolicy::ALL.into_iter().enumerate() {
            let name = format!("acknowledged_records_survive_{policy:?}").to_lowercase();
            let seed = 11 + k as u64;
            all.push(Trial::new(
                &group,
                &name,
                Duration::from_secs(120),
                move || outcome(backend, || survives(backend, policy, seed)),
            ));
        }
        all.push(Trial::new(
            &group,
            "a_torn_tail_is_found_and_truncated",
            Duration::from_secs(60),
            move || outcome(backend, || torn_tail_is_truncated(backend)),
        ));
    }
    for backend in ["uring", "aio", "sync"] {
        for (k, policy) in CrashPolicy::ALL.into_iter().enumerate() {
            let name = format!("acknowledged_objects_survive_{policy:?}").to_lowercase();
            let seed = 21 + k as u64;
            all.push(Trial::new(
                &format!("blob:{backend}"),
                &name,
                Duration::from_secs(120),
                move || outcome(backend, || blobs_survive(backend, policy, seed)),
            ));
        }
        all.push(Trial::new(
            &format!("snapshot:{backend}"),
            "the_stream_survives_a_crash_after_its_sync",
            Duration::from_secs(120),
            move || outcome(backend, || snapshot_survives(backend)),
        ));
    }
    runner::run(all);
}
