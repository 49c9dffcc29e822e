//! Zero heap allocations per operation in steady state, on every backend compiled into the
//! facade, through the facade's `Engine` (the built-in path users take): the queue API and
//! the async API. A counting global allocator counts every allocation in the process, in
//! every thread (workers and reapers included).

use std::time::Duration;

use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, BUILTIN_BACKENDS};
use engine_core::raw::CountingAllocator;
use engine_core::raw::FileRaw;
use engine_core::{
    block_on, AlignedBuf, Completion, EngineConfig, File, OpenOptions, PageAllocator, Queue,
    Request,
};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const DEPTH: usize = 16;
const BLOCK: usize = 4096;
const BLOCKS: u64 = 256;
const QUEUE_ROUNDS: u64 = 500;
const ASYNC_OPS: u64 = 5000;

fn offset(round: u64, i: usize) -> u64 {
    (round * DEPTH as u64 + i as u64) * 7919 % BLOCKS * BLOCK as u64
}

/// `rounds` rounds of `DEPTH` requests, alternating reads and writes, reusing the buffers.
fn run_queue(
    queue: &mut impl Queue,
    file: &File,
    bufs: &mut Vec<AlignedBuf>,
    out: &mut Vec<Completion>,
    rounds: u64,
) {
    for round in 0..rounds {
        for (i, buf) in bufs.drain(..).enumerate() {
            let request = if i % 2 == 0 {
                Request::read(file, offset(round, i), buf, i as u64)
            } else {
                Request::write(file, offset(round, i), buf, i as u64)
            };
            queue.push(request).expect("queue has room");
        }
        queue.wait(DEPTH, out).expect("wait");
        assert_eq!(out.len(), DEPTH, "one completion per request");
        for completion in out.drain(..) {
            assert_eq!(completion.result.expect("io"), BLOCK);
            let mut buf = completion.buf.expect("buffer back");
            buf.resize(BLOCK).expect("capacity");
            bufs.push(buf);
        }
    }
}

/// `ops` requests one after another through the async API, in one `block_on`.
fn run_async(engine: &Engine, file: &File, buf: AlignedBuf, ops: u64) -> AlignedBuf {
    block_on(async {
        let mut buf = buf;
        for i in 0..ops {
            let (result, back) = if i % 2 == 0 {
                engine.read_at(file, offset(i, 0), buf).await
            } else {
                engine.write_at(file, offset(i, 0), buf).await
            };
            assert_eq!(result.expect("io"), BLOCK);
            buf = back;
            buf.resize(BLOCK).expect("capacity");
        }
        buf
    })
}

/// Which API a trial measures.
#[derive(Clone, Copy, Debug)]
enum Api {
    Queue,
    Async,
}

/// The heap allocations of `ops` operations through `api` in steady state (after a warm-up).
fn measure(engine: &Engine, api: Api) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true);
    let file = engine
        .open(&path, &direct)
        .or_else(|_| {
            engine.open(
                &path,
                &OpenOptions::new().read(true).write(true).create(true),
            )
        })
        .expect("open");
    file.std().set_len(BLOCKS * BLOCK as u64).expect("size");
    let alloc = |n: usize| match engine.pool() {
        Some(pool) => pool.alloc(n).expect("pool buffer"),
        None => AlignedBuf::zeroed(n, 4096).expect("buffer"),
    };
    match api {
        Api::Queue => {
            let mut queue = engine.queue().expect("queue");
            let mut bufs: Vec<AlignedBuf> = (0..DEPTH).map(|_| alloc(BLOCK)).collect();
            let mut out = Vec::with_capacity(DEPTH);
            run_queue(&mut queue, &file, &mut bufs, &mut out, QUEUE_ROUNDS / 5);
            let before = ALLOC.allocations();
            run_queue(&mut queue, &file, &mut bufs, &mut out, QUEUE_ROUNDS);
            (ALLOC.allocations() - before, QUEUE_ROUNDS * DEPTH as u64)
        }
        Api::Async => {
            let buf = run_async(engine, &file, alloc(BLOCK), ASYNC_OPS / 5);
            let before = ALLOC.allocations();
            let buf = run_async(engine, &file, buf, ASYNC_OPS);
            let allocations = ALLOC.allocations() - before;
            drop(buf);
            (allocations, ASYNC_OPS)
        }
    }
}

fn main() {
    // The counter must see allocations, or a zero below would prove nothing.
    let before = ALLOC.allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert!(ALLOC.allocations() > before, "counting allocator is live");

    let mut all = Vec::new();
    for name in BUILTIN_BACKENDS {
        for api in [Api::Queue, Api::Async] {
            let case = format!("{api:?}_api_allocates_nothing_per_operation").to_lowercase();
            all.push(Trial::new(
                &format!("alloc:{name}"),
                &case,
                Duration::from_secs(120),
                move || {
                    let config = EngineConfig {
                        queue_depth: DEPTH,
                        threads: 4,
                        ..EngineConfig::default()
                    };
                    let engine = match Engine::with_backend(name, config) {
                        Ok(engine) => engine,
                        Err(e) => return Outcome::Skipped(format!("{name} cannot run here: {e}")),
                    };
                    let (allocations, ops) = measure(&engine, api);
                    if allocations == 0 {
                        Outcome::Passed
                    } else {
                        Outcome::Failed(format!(
                            "{name} {api:?} API: {allocations} allocations over {ops} operations in steady state"
                        ))
                    }
                },
            ));
        }
    }
    runner::run(all);
}
