//! A write-ahead log with group commit (`log.rs`), against the same job written by hand the
//! way a log usually starts: `pwrite` and `fdatasync` for every record.
//!
//! `cargo run --release -p engine --example wal [-- <writers> <records per writer>]`
//! (default 16 writers, 100 records of 100 bytes each), on a temporary file in the current
//! directory's filesystem; `ENGINE_BACKEND` picks the engine.
//!
//! Both make every record durable before acknowledging it. The log acknowledges a whole group
//! with one sync; the baseline syncs once per record.

mod log;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use engine::{block_on, join_all, Engine};
use log::Wal;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let per_writer: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let payload = |w: usize, i: usize| format!("writer {w:2} record {i:5} ").repeat(4).into_bytes();
    let dir = tempfile::tempdir_in(".")?;

    // The log: every writer's appends in flight together, each awaited before its next.
    let engine = Engine::from_env()?;
    println!("engine: {}", engine.name());
    let path = dir.path().join("wal");
    let started = Instant::now();
    let (wal, replayed) = block_on(Wal::open(engine, &path))?;
    assert!(replayed.is_empty(), "a new log holds nothing");
    let latencies = block_on(join_all(
        (0..writers)
            .map(|w| {
                let wal = &wal;
                async move {
                    let mut latencies = Vec::with_capacity(per_writer);
                    for i in 0..per_writer {
                        let at = Instant::now();
                        wal.append(payload(w, i)).await?;
                        latencies.push(at.elapsed());
                    }
                    Ok::<_, engine::Error>(latencies)
                }
            })
            .collect(),
    ));
    let elapsed = started.elapsed();
    let mut all: Vec<Duration> = Vec::new();
    for writer in latencies {
        all.extend(writer?);
    }
    all.sort();
    let records = writers * per_writer;
    let groups = wal.groups();
    let engine = wal.close()?;
    let group_rate = records as f64 / elapsed.as_secs_f64();
    println!(
        "group commit: {records} records from {writers} writers in {:.2} s: {group_rate:.0} records/s, \
         {groups} syncs ({:.1} records each), commit p50 {:?} p99 {:?}",
        elapsed.as_secs_f64(),
        records as f64 / groups.max(1) as f64,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    );

    // Replayed after a clean close: every record, in order.
    let (wal, replayed) = block_on(Wal::open(engine, &path))?;
    assert_eq!(
        replayed.len(),
        records,
        "every acknowledged record is replayed"
    );
    assert!(replayed
        .iter()
        .enumerate()
        .all(|(i, (lsn, _))| *lsn == i as u64));
    drop(wal);

    // The hand-written baseline: the same records, each a pwrite and an fdatasync, from as
    // many threads.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("baseline"))?;
    let tail = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let mut base: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (file, tail) = (&file, &tail);
                scope.spawn(move || -> std::io::Result<Vec<Duration>> {
                    let mut latencies = Vec::with_capacity(per_writer);
                    for i in 0..per_writer {
                        let record = payload(w, i);
                        let at = Instant::now();
                        let offset = tail.fetch_add(4096, std::sync::atomic::Ordering::Relaxed);
                        file.write_all_at(&record, offset)?;
                        file.sync_data()?;
                        latencies.push(at.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            match handle.join() {
                Ok(latencies) => all.extend(latencies?),
                Err(_) => return Err(std::io::Error::other("a baseline writer panicked")),
            }
        }
        Ok(all)
    })?;
    let base_elapsed = started.elapsed();
    base.sort();
    let base_rate = records as f64 / base_elapsed.as_secs_f64();
    println!(
        "one sync per record (pwrite + fdatasync): {records} records in {:.2} s: {base_rate:.0} records/s, \
         commit p50 {:?} p99 {:?}",
        base_elapsed.as_secs_f64(),
        percentile(&base, 0.50),
        percentile(&base, 0.99),
    );
    println!(
        "group commit / one sync per record: {:.2}x",
        group_rate / base_rate
    );
    Ok(())
}
