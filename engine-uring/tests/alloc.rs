//! Zero heap allocations per operation on the io_uring queue API and on its async path, in
//! steady state, counted by a global allocator across every thread (the reaper included).

use engine_core::{
    block_on, AlignedBuf, Completion, CountingAllocator, Engine, EngineConfig, EngineExt, File,
    OpenOptions, PageAllocator, Queue, Request,
};
use engine_uring::UringEngine;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const DEPTH: usize = 16;
const BLOCK: usize = 4096;
const BLOCKS: u64 = 256;

fn offset(round: u64, i: usize) -> u64 {
    (round * DEPTH as u64 + i as u64) * 7919 % BLOCKS * BLOCK as u64
}

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

fn run_async(engine: &UringEngine, file: &File, buf: AlignedBuf, ops: u64) -> AlignedBuf {
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

fn main() {
    let engine = match UringEngine::new(EngineConfig {
        queue_depth: DEPTH,
        ..EngineConfig::default()
    }) {
        Ok(engine) => engine,
        Err(e) => {
            println!("skipped: io_uring is not available here: {e}");
            println!("0 passed, 0 failed, 1 skipped");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true);
    let file = match engine.open(&dir.path().join("data"), &options) {
        Ok(file) => file,
        Err(_) => engine
            .open(
                &dir.path().join("data"),
                &OpenOptions::new().read(true).write(true).create(true),
            )
            .expect("open"),
    };
    file.std().set_len(BLOCKS * BLOCK as u64).expect("size");
    let pool = engine.pool().cloned();
    let alloc = |n: usize| -> AlignedBuf {
        match &pool {
            Some(pool) => pool.alloc(n).expect("pool"),
            None => AlignedBuf::zeroed(n, 4096).expect("alloc"),
        }
    };

    let probe_before = ALLOC.allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert!(
        ALLOC.allocations() > probe_before,
        "counting allocator is live"
    );

    // Queue API.
    let mut queue = engine.queue().expect("queue");
    let mut bufs: Vec<AlignedBuf> = (0..DEPTH).map(|_| alloc(BLOCK)).collect();
    let mut out = Vec::with_capacity(DEPTH);
    run_queue(&mut queue, &file, &mut bufs, &mut out, 100);
    let before = ALLOC.allocations();
    let rounds = 1000;
    run_queue(&mut queue, &file, &mut bufs, &mut out, rounds);
    let queue_allocations = ALLOC.allocations() - before;
    let queue_ops = rounds * DEPTH as u64;
    println!(
        "uring queue API: {queue_allocations} allocations over {queue_ops} operations (flags {:?})",
        queue.flags()
    );

    // Async API.
    let buf = run_async(&engine, &file, alloc(BLOCK), 1000);
    let before = ALLOC.allocations();
    let async_ops = 10_000;
    let buf = run_async(&engine, &file, buf, async_ops);
    let async_allocations = ALLOC.allocations() - before;
    println!("uring async API: {async_allocations} allocations over {async_ops} operations");
    drop(buf);

    assert_eq!(
        queue_allocations, 0,
        "queue API allocations over {queue_ops} operations"
    );
    assert_eq!(
        async_allocations, 0,
        "async API allocations over {async_ops} operations"
    );
    println!("2 passed, 0 failed");
}
