//! Shutdown under load, on every backend compiled into the facade: while several threads keep
//! thousands of requests in flight through their queues and the async API, the engine is shut
//! down and dropped at a seeded moment. Every thread must finish in bounded time (the
//! runner's time limit fails a hang with the trial's name, which carries the seed), every
//! request must complete either normally or with the shutdown error, and once everything is
//! dropped the process's descriptors and threads must be back to where they were.
//!
//! `CONFORMANCE_SHUTDOWN_SEEDS` sets the seeds per backend (default 3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::process;
use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, EngineConfig, ErrorKind, BUILTIN_BACKENDS};
use engine_core::{block_on, join_all, AlignedBuf, Completion, File, OpenOptions, Queue, Request};

const DEPTH: usize = 512;
const BLOCK: usize = 4096;
const BLOCKS: u64 = 1024;
const QUEUE_THREADS: u64 = 3;

/// A small deterministic generator (splitmix64), so a seed names one schedule.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    conformance::mix(*state)
}

/// What a thread saw: completions that succeeded, and those that failed with Shutdown.
#[derive(Default)]
struct Seen {
    ok: u64,
    shut: u64,
}

/// Checks one completion: Ok, or the shutdown error; anything else is the failure's text.
fn check(completion: Completion, seen: &mut Seen) -> Result<(), String> {
    match completion.result {
        Ok(_) => seen.ok += 1,
        Err(e) if e.kind() == ErrorKind::Shutdown => seen.shut += 1,
        Err(e) => return Err(format!("request {}: {e}", completion.user_data)),
    }
    Ok(())
}

/// A request for the `i`th operation of a thread: reads and writes over the file, and now and
/// then a sync.
fn request(file: &File, rng: &mut u64, i: u64) -> Request {
    let offset = next(rng) % BLOCKS * BLOCK as u64;
    let buf = || AlignedBuf::zeroed(BLOCK, BLOCK).expect("buffer");
    match next(rng) % 16 {
        0 => Request::sync_data(file, i),
        1..=7 => Request::write(file, offset, buf(), i),
        _ => Request::read(file, offset, buf(), i),
    }
}

/// One queue's thread: keeps the queue full until the engine's shutdown shows in a
/// completion, then drains it.
fn queue_thread(
    mut queue: impl Queue,
    file: File,
    seed: u64,
    pushed: Arc<AtomicU64>,
) -> Result<Seen, String> {
    let mut rng = seed;
    let mut seen = Seen::default();
    let mut out = Vec::with_capacity(DEPTH);
    let mut i = 0;
    while seen.shut == 0 {
        while queue.in_flight() < queue.depth() {
            if queue.push(request(&file, &mut rng, i)).is_err() {
                break;
            }
            i += 1;
            pushed.fetch_add(1, Ordering::Relaxed);
        }
        queue.wait(1, &mut out).map_err(|e| format!("wait: {e}"))?;
        for completion in out.drain(..) {
            check(completion, &mut seen)?;
        }
    }
    while queue.in_flight() > 0 {
        queue
            .wait(1, &mut out)
            .map_err(|e| format!("wait while draining: {e}"))?;
        for completion in out.drain(..) {
            check(completion, &mut seen)?;
        }
    }
    Ok(seen)
}

/// The async API's thread: rounds of `DEPTH` futures joined, until one fails with Shutdown.
fn async_thread(engine: Arc<Engine>, file: File, seed: u64) -> Result<Seen, String> {
    let mut rng = seed;
    let mut seen = Seen::default();
    while seen.shut == 0 {
        let round: Vec<_> = (0..DEPTH)
            .map(|k| {
                let offset = next(&mut rng) % BLOCKS * BLOCK as u64;
                let (engine, file) = (&engine, &file);
                async move {
                    let buf = AlignedBuf::zeroed(BLOCK, BLOCK).expect("buffer");
                    if k % 2 == 0 {
                        engine.read_at(file, offset, buf).await.0.map(drop)
                    } else {
                        engine.write_at(file, offset, buf).await.0.map(drop)
                    }
                }
            })
            .collect();
        for result in block_on(join_all(round)) {
            match result {
                Ok(()) => seen.ok += 1,
                Err(e) if e.kind() == ErrorKind::Shutdown => seen.shut += 1,
                Err(e) => return Err(format!("async request: {e}")),
            }
        }
    }
    Ok(seen)
}

fn shutdown_under_load(backend: &'static str, seed: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    std::fs::write(&path, vec![0u8; (BLOCKS as usize) * BLOCK]).expect("file");
    let before = process::census();
    let eventfds_before = process::eventfds();
    let config = EngineConfig {
        queue_depth: DEPTH,
        ..EngineConfig::default()
    };
    let engine = match Engine::with_backend(backend, config) {
        Ok(engine) => Arc::new(engine),
        Err(e) => return Outcome::Skipped(format!("{backend} cannot run here: {e}")),
    };
    let options = OpenOptions::new().read(true).write(true);
    let file = engine.open(&path, &options).expect("open");
    let pushed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..QUEUE_THREADS {
        let queue = engine.queue().expect("queue");
        let (file, pushed) = (file.clone(), Arc::clone(&pushed));
        threads.push(std::thread::spawn(move || {
            queue_thread(queue, file, seed * 31 + t, pushed)
        }));
    }
    {
        let (engine, file) = (Arc::clone(&engine), file.clone());
        threads.push(std::thread::spawn(move || {
            async_thread(engine, file, seed * 31 + QUEUE_THREADS)
        }));
    }
    drop(file);
    // The seeded moment: some milliseconds into the load, with requests in flight.
    let mut rng = seed;
    std::thread::sleep(Duration::from_millis(5 + next(&mut rng) % 40));
    let started = Instant::now();
    engine.shutdown();
    drop(engine);
    let mut total = Seen::default();
    for thread in threads {
        match thread.join() {
            Ok(Ok(seen)) => {
                total.ok += seen.ok;
                total.shut += seen.shut;
            }
            Ok(Err(e)) => return Outcome::Failed(format!("seed {seed}: {e}")),
            Err(_) => return Outcome::Failed(format!("seed {seed}: a load thread panicked")),
        }
    }
    let stopped = started.elapsed();
    if total.shut == 0 {
        return Outcome::Failed(format!(
            "seed {seed}: no request failed with Shutdown: the engine stopped with nothing in flight"
        ));
    }
    // Descriptors and threads go back to where they were.
    if let Err(after) = process::back_to_baseline(backend, before, eventfds_before) {
        return Outcome::Failed(format!(
            "seed {seed}: descriptors and threads {before:?} before the engine, {after:?} after it \
             and every queue were dropped"
        ));
    }
    println!(
        "  {backend} seed {seed}: {} pushed to queues; {} completed, {} failed with Shutdown; \
         everything stopped {stopped:?} after shutdown",
        pushed.load(Ordering::Relaxed),
        total.ok,
        total.shut
    );
    Outcome::Passed
}

fn main() {
    let seeds: u64 = std::env::var("CONFORMANCE_SHUTDOWN_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut all = Vec::new();
    for backend in BUILTIN_BACKENDS {
        for seed in 0..seeds {
            all.push(Trial::new(
                &format!("shutdown:{backend}"),
                &format!("under_load_seed_{seed}"),
                Duration::from_secs(60),
                move || shutdown_under_load(backend, seed),
            ));
        }
    }
    runner::run(all);
}
