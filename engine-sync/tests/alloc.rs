//! Zero heap allocations per operation on the sync queue API in steady state.
//!
//! A counting global allocator counts every allocation in the process (worker threads
//! included). After a warm-up that lets every queue and list reach its working size, a long
//! run of reads and writes through the queue API must allocate nothing at all.

use engine_core::{
    AlignedBuf, Completion, CountingAllocator, Engine, EngineConfig, File, OpenOptions, Queue,
    Request,
};
use engine_sync::SyncEngine;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const DEPTH: usize = 16;
const BLOCK: usize = 4096;
const BLOCKS: u64 = 256;

/// Runs `rounds` rounds of `DEPTH` requests (alternating reads and writes), reusing buffers.
fn run(
    queue: &mut impl Queue,
    file: &File,
    bufs: &mut Vec<AlignedBuf>,
    out: &mut Vec<Completion>,
    rounds: u64,
) {
    for round in 0..rounds {
        for (i, mut buf) in bufs.drain(..).enumerate() {
            buf.resize(BLOCK).expect("capacity");
            let block = (round * DEPTH as u64 + i as u64) * 7919 % BLOCKS;
            let request = if i % 2 == 0 {
                Request::read(file, block * BLOCK as u64, buf, i as u64)
            } else {
                Request::write(file, block * BLOCK as u64, buf, i as u64)
            };
            queue.push(request).expect("queue has room");
        }
        queue.wait(DEPTH, out).expect("wait");
        assert_eq!(out.len(), DEPTH, "one completion per request");
        for completion in out.drain(..) {
            assert_eq!(completion.result.expect("io"), BLOCK);
            bufs.push(completion.buf.expect("buffer back"));
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = SyncEngine::new(EngineConfig {
        queue_depth: DEPTH,
        threads: 4,
        ..EngineConfig::default()
    })
    .expect("engine");
    let options = OpenOptions::new().read(true).write(true).create(true);
    let file = engine
        .open(&dir.path().join("data"), &options)
        .expect("open");
    file.std().set_len(BLOCKS * BLOCK as u64).expect("size");
    let mut queue = engine.queue().expect("queue");
    let mut bufs: Vec<AlignedBuf> = (0..DEPTH)
        .map(|_| AlignedBuf::zeroed(BLOCK, 4096).expect("alloc"))
        .collect();
    let mut out = Vec::with_capacity(DEPTH);

    // The counter must see allocations, or a zero below would prove nothing.
    let probe_before = ALLOC.allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert!(
        ALLOC.allocations() > probe_before,
        "counting allocator is live"
    );

    run(&mut queue, &file, &mut bufs, &mut out, 200);
    let before = ALLOC.allocations();
    let rounds = 2000;
    run(&mut queue, &file, &mut bufs, &mut out, rounds);
    let allocations = ALLOC.allocations() - before;
    let ops = rounds * DEPTH as u64;
    println!("sync queue API: {allocations} allocations over {ops} operations");
    assert_eq!(
        allocations, 0,
        "heap allocations in steady state over {ops} operations"
    );
    println!("1 passed, 0 failed");
}
