//! Zero heap allocations per operation in steady state, on every backend compiled into the
//! facade, through the facade's `Engine` (the built-in path users take): the queue API and
//! the async API. glommio allocates per operation inside its own reactor, so its backend is
//! held to what glommio used directly allocates for the same work instead. A counting global allocator counts every allocation in the process, in
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

/// What glommio itself allocates for the work the glommio backend hands it, measured on
/// glommio used directly: `(allocations, operations)` of 4k `DmaFile` reads and writes on
/// glommio's own buffers, `BATCH` at a time, each batch started by a wake from another thread,
/// as every batch of requests reaches the backend's executor. glommio allocates per operation
/// (its I/O sources) and per foreign wake; the backend must add nothing to that.
fn glommio_floor<const BATCH: usize>(path: std::path::PathBuf, ops: u64) -> (u64, u64) {
    use std::sync::mpsc;
    use std::task::Poll;
    let (waker_tx, waker_rx) = mpsc::channel::<std::task::Waker>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, u64)>();
    let executor = std::thread::spawn(move || {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("glommio executor");
        ex.run(async move {
            // As the backend does, so glommio keeps the file on its interrupt-driven ring.
            let mut write_only = glommio::io::OpenOptions::new();
            if let Ok(file) = write_only.write(true).dma_open(&path).await {
                let _ = file.close().await;
            }
            let file = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .expect("DmaFile");
            let one = |i: u64| {
                let file = &file;
                async move {
                    if i % 2 == 0 {
                        let read = file.read_at(offset(i, 0), BLOCK).await.expect("read");
                        assert_eq!(read.len(), BLOCK);
                    } else {
                        let buffer = file.alloc_dma_buffer(BLOCK);
                        let written = file.write_at(buffer, offset(i, 0)).await.expect("write");
                        assert_eq!(written, BLOCK);
                    }
                }
            };
            let mut counted = (0, 0);
            for (phase, n) in [(0, ops / 5), (1, ops)] {
                let before = ALLOC.allocations();
                for batch in 0..n / BATCH as u64 {
                    // Wait for a wake from the other thread, as the backend's executor waits
                    // for its inbox.
                    let mut asked = false;
                    std::future::poll_fn(|cx| {
                        if asked {
                            return Poll::Ready(());
                        }
                        asked = true;
                        waker_tx.send(cx.waker().clone()).expect("waker");
                        Poll::Pending
                    })
                    .await;
                    // The batch's operations side by side, joined without allocating.
                    let mut ops = std::pin::pin!(std::array::from_fn::<_, BATCH, _>(|k| {
                        Some(one(batch * BATCH as u64 + k as u64))
                    }));
                    std::future::poll_fn(|cx| {
                        let mut pending = false;
                        for k in 0..BATCH {
                            // SAFETY: the pinned array never moves its elements, and each is
                            // dropped in place (set to None), so projecting the pin is sound.
                            let mut op = unsafe { ops.as_mut().map_unchecked_mut(|a| &mut a[k]) };
                            if let Some(future) = op.as_mut().as_pin_mut() {
                                match std::future::Future::poll(future, cx) {
                                    Poll::Ready(()) => op.set(None),
                                    Poll::Pending => pending = true,
                                }
                            }
                        }
                        if pending {
                            Poll::Pending
                        } else {
                            Poll::Ready(())
                        }
                    })
                    .await;
                }
                if phase == 1 {
                    counted = (ALLOC.allocations() - before, n);
                }
            }
            let _ = file.close().await;
            done_tx.send(counted).expect("done");
        });
    });
    // The other thread: wakes the executor's task each time it asks.
    while let Ok(waker) = waker_rx.recv() {
        waker.wake();
    }
    executor.join().expect("glommio thread");
    done_rx.recv().expect("floor")
}

fn main() {
    // The counter must see allocations, or a zero below would prove nothing.
    let before = ALLOC.allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert!(ALLOC.allocations() > before, "counting allocator is live");

    let mut all = Vec::new();
    for name in BUILTIN_BACKENDS {
        for api in [Api::Queue, Api::Async] {
            // glommio allocates per operation itself: its backend is held to glommio's count.
            let claim = match name {
                "glommio" => "allocates_no_more_than_glommio_per_operation",
                _ => "allocates_nothing_per_operation",
            };
            let case = format!("{api:?}_api_{claim}").to_lowercase();
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
                    if name == "glommio" {
                        return glommio_verdict(&engine, api);
                    }
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

/// The glommio backend allocates no more per operation than glommio itself does for the same
/// work ([`glommio_floor`]), give or take 15%: glommio's own count varies from run to run
/// with how often its executor parks (by a fifth here), so both are measured `REPS` times,
/// interleaved, and their medians compared. The verdict's message gives both.
fn glommio_verdict(engine: &Engine, api: Api) -> Outcome {
    const REPS: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("floor");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(BLOCKS * BLOCK as u64))
        .expect("floor file");
    let (mut backend, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        let (allocations, ops) = measure(engine, api);
        backend.push(allocations as f64 / ops as f64);
        // The async API hands the executor one request per wake, the queue API a round of
        // DEPTH.
        let (allocations, ops) = match api {
            Api::Async => glommio_floor::<1>(path.clone(), ASYNC_OPS),
            Api::Queue => glommio_floor::<DEPTH>(path.clone(), QUEUE_ROUNDS * DEPTH as u64),
        };
        floor.push(allocations as f64 / ops as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (per_op, floor_per_op) = (median(&mut backend), median(&mut floor));
    let message = format!(
        "glommio {api:?} API: a median of {per_op:.2} allocations per operation in steady \
         state over {REPS} runs ({backend:.2?}); glommio used directly, one foreign wake per \
         batch: {floor_per_op:.2} ({floor:.2?})"
    );
    if per_op <= floor_per_op * 1.15 {
        eprintln!("{message}");
        Outcome::Passed
    } else {
        Outcome::Failed(message)
    }
}
