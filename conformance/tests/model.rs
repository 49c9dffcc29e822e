//! Model-based randomized test: random sequences of batched reads and writes (many in flight
//! at once, through the async API or the queue API), syncs and reopens, run on every compiled
//! backend and on the in-memory reference engine; every result and every byte must agree.
//!
//! One trial per backend (`model:<backend>::agrees_with_the_reference_model`), run by the
//! conformance runner with a time limit. `CONFORMANCE_MODEL_CASES` sets the number of cases
//! per backend (default 256). The cases come from the run's seed (`CONFORMANCE_SEED`), which
//! a failure or a hang prints; a failure also prints the minimal failing sequence, and
//! proptest keeps it in `model.proptest-regressions` to try first on later runs.

use conformance::crash::{CrashPolicy, CrashSim};
use conformance::faulty::{Fault, FaultyEngine, Injector, Plan};
use conformance::runner::{self, Outcome, Trial};
use conformance::MemEngine;
use engine::{Engine, BUILTIN_BACKENDS};
use engine_core::{
    block_on, AlignedBuf, BackendExt, Completion, EngineConfig, File, OpenOptions, Queue, Request,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

const BLOCKS: u16 = 48;
const DEPTH: usize = 8;

#[derive(Clone, Debug)]
enum Op {
    Write { block: u16, blocks: u8, seed: u64 },
    Read { block: u16, blocks: u8 },
}

impl Op {
    fn range(&self) -> (u16, u16) {
        match *self {
            Op::Write { block, blocks, .. } | Op::Read { block, blocks } => {
                (block, block + u16::from(blocks))
            }
        }
    }
    fn is_write(&self) -> bool {
        matches!(self, Op::Write { .. })
    }
}

#[derive(Clone, Debug)]
enum Step {
    Batch { ops: Vec<Op>, via_queue: bool },
    Sync { all: bool },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..BLOCKS, 1..4u8, any::<u64>()).prop_map(|(block, blocks, seed)| Op::Write {
            block,
            blocks,
            seed
        }),
        (0..BLOCKS + 4, 1..4u8).prop_map(|(block, blocks)| Op::Read { block, blocks }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::collection::vec(op(), 1..=DEPTH), any::<bool>())
            .prop_map(|(ops, via_queue)| Step::Batch { ops: without_overlaps(ops), via_queue }),
        1 => any::<bool>().prop_map(|all| Step::Sync { all }),
        1 => Just(Step::Reopen),
    ]
}

/// Requests in flight together must not overlap a write (contract point 6 leaves that
/// undefined), so drop the ops that would.
fn without_overlaps(ops: Vec<Op>) -> Vec<Op> {
    let mut kept: Vec<Op> = Vec::new();
    for op in ops {
        let (start, end) = op.range();
        let clash = kept.iter().any(|k| {
            let (s, e) = k.range();
            s < end && start < e && (k.is_write() || op.is_write())
        });
        if !clash {
            kept.push(op);
        }
    }
    kept
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    conformance::pattern(len, seed)
}

/// One engine under test and its file.
struct Side<E: engine_core::Backend> {
    engine: E,
    file: File,
    options: OpenOptions,
    /// Made on first use and kept, as a thread would: creating a queue can be costly (an
    /// AIO context's teardown waits for an RCU grace period).
    queue: Option<E::Queue>,
}

/// What an operation returned, in a form both sides can compare: the count and a digest of
/// the bytes read.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Done(usize, u64),
    Failed(engine_core::ErrorKind),
}

fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Requests in flight have no order (contract point 6), so a read that a concurrent write
/// could affect by extending the file has no single right answer. When the batch extends the
/// file, keep only the reads that end within the size it had before.
fn settle(ops: &[Op], size: u64, block_size: usize) -> Vec<Op> {
    let end = |op: &Op| u64::from(op.range().1) * block_size as u64;
    let extends = ops.iter().any(|op| op.is_write() && end(op) > size);
    ops.iter()
        .filter(|op| !extends || op.is_write() || end(op) <= size)
        .cloned()
        .collect()
}

impl<E: engine_core::Backend> Side<E> {
    fn requests(&self, ops: &[Op], block_size: usize) -> Vec<Request> {
        ops.iter()
            .enumerate()
            .map(|(i, op)| {
                let (start, end) = op.range();
                let offset = u64::from(start) * block_size as u64;
                let len = usize::from(end - start) * block_size;
                let align = block_size;
                // Every other request of more than one block is vectored, a buffer per block
                // (exact: a read across end of file fails as UnexpectedEof on both sides).
                let vectored = i % 2 == 1 && end - start > 1;
                let blocks = |bytes: &[u8]| -> Vec<AlignedBuf> {
                    let block = |b: &[u8]| AlignedBuf::from_slice(b, align).expect("buf");
                    bytes.chunks(block_size).map(block).collect()
                };
                match *op {
                    Op::Write { seed, .. } if vectored => {
                        let bufs = blocks(&pattern(len, seed));
                        Request::write_vectored(&self.file, offset, bufs, i as u64)
                    }
                    Op::Write { seed, .. } => {
                        let data = AlignedBuf::from_slice(&pattern(len, seed), align).expect("buf");
                        Request::write(&self.file, offset, data, i as u64)
                    }
                    Op::Read { .. } if vectored => {
                        let bufs = blocks(&vec![0; len]);
                        Request::read_vectored(&self.file, offset, bufs, i as u64)
                    }
                    Op::Read { .. } => {
                        let buf = AlignedBuf::zeroed(len, align).expect("buf");
                        Request::read(&self.file, offset, buf, i as u64)
                    }
                }
            })
            .collect()
    }

    fn run(&mut self, ops: &[Op], via_queue: bool, block_size: usize) -> Vec<Seen> {
        let requests = self.requests(ops, block_size);
        let mut completions: Vec<Completion> = if via_queue {
            let engine = &self.engine;
            let queue = self
                .queue
                .get_or_insert_with(|| engine.queue().expect("queue"));
            let mut out = Vec::new();
            for request in requests {
                queue.push_or_wait(request, &mut out).expect("push");
            }
            while queue.in_flight() > 0 {
                queue.wait(queue.in_flight(), &mut out).expect("wait");
            }
            out
        } else {
            block_on(self.engine.submit_batch(requests))
        };
        completions.sort_by_key(|c| c.user_data);
        assert_eq!(completions.len(), ops.len(), "one completion per request");
        completions
            .into_iter()
            .map(|c| match c.result {
                Ok(n) => {
                    let bytes: Vec<u8> = c.buffers().flat_map(|b| b.to_vec()).collect();
                    Seen::Done(n, digest(&bytes))
                }
                Err(e) => Seen::Failed(e.kind()),
            })
            .collect()
    }

    fn sync(&self, all: bool) -> Result<(), engine_core::ErrorKind> {
        let result = if all {
            block_on(self.engine.sync_all(&self.file))
        } else {
            block_on(self.engine.sync_data(&self.file))
        };
        result.map_err(|e| e.kind())
    }

    fn reopen(&mut self) {
        self.engine.close(&self.file).expect("close");
        self.file = self
            .engine
            .open(self.file.path(), &self.options)
            .expect("reopen");
    }
}

fn open<E: engine_core::Backend>(
    engine: E,
    dir: &std::path::Path,
    name: &str,
    direct: bool,
) -> Option<Side<E>> {
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(direct);
    let file = match engine.open(&dir.join(name), &options) {
        Ok(file) => file,
        Err(e) if direct && e.kind() == engine_core::ErrorKind::Unsupported => return None,
        Err(e) => panic!("open {name}: {e}"),
    };
    Some(Side {
        engine,
        file,
        options,
        queue: None,
    })
}

fn check(backend: &str, steps: &[Step], direct: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        queue_depth: DEPTH,
        threads: 4,
        ..EngineConfig::default()
    };
    // The backend under maskable faults (retried EINTR/EAGAIN, latency) with its queue's
    // completions permuted: none of it may change a result.
    let injector = Injector::new(
        steps.len() as u64,
        Plan::Rates(vec![
            (Fault::Eintr, 0.05),
            (Fault::Eagain, 0.05),
            (Fault::Latency, 0.01),
        ]),
    );
    let real_engine = FaultyEngine::new(
        |c| Engine::with_backend(backend, c),
        config.clone(),
        &injector,
        true,
    )
    .expect("engine");
    // ... and under the crash simulator's bookkeeping, which the end of the run checks.
    let real_engine = CrashSim::new(real_engine, 512);
    let Some(mut real) = open(real_engine, dir.path(), "real", direct) else {
        return Ok(());
    };
    let mut model = open(
        MemEngine::new(config).expect("mem"),
        dir.path(),
        "model",
        direct,
    )
    .expect("model opens like the real one");
    let geometry = *real.file.geometry();
    let block_size = if direct {
        geometry.offset_align.max(geometry.mem_align) as usize
    } else {
        512
    };
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Batch { ops, via_queue } => {
                let size = std::fs::metadata(model.file.path())
                    .expect("model size")
                    .len();
                let ops = &settle(ops, size, block_size);
                let seen = real.run(ops, *via_queue, block_size);
                let expected = model.run(ops, *via_queue, block_size);
                prop_assert_eq!(seen, expected, "step {}: {:?}", i, step);
            }
            Step::Sync { all } => prop_assert_eq!(real.sync(*all), model.sync(*all), "step {}", i),
            Step::Reopen => {
                real.reopen();
                model.reopen();
            }
        }
    }
    let on_disk = std::fs::read(real.file.path()).expect("read real");
    let in_model = std::fs::read(model.file.path()).expect("read model");
    prop_assert_eq!(on_disk.len(), in_model.len(), "file sizes");
    prop_assert!(on_disk == in_model, "final contents differ");
    // Power loss at the end: everything a sync acknowledged must still be there.
    let Side {
        engine,
        file,
        queue,
        ..
    } = real;
    drop((file, queue));
    let policy = CrashPolicy::ALL[steps.len() % CrashPolicy::ALL.len()];
    let losses = engine.crash(policy, steps.len() as u64).verify();
    prop_assert!(
        losses.is_empty(),
        "crash ({:?}) lost acknowledged data: {:?}",
        policy,
        losses
    );
    Ok(())
}

fn cases() -> u32 {
    std::env::var("CONFORMANCE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Proptest's cases on one backend: arbitrary step sequences, on a buffered or an O_DIRECT
/// file, each compared with the reference engine.
fn agrees_with_the_reference_model(backend: &'static str) -> Outcome {
    if let Err(e) = Engine::with_backend(backend, EngineConfig::default()) {
        return Outcome::Skipped(format!("{backend} cannot run here: {e}"));
    }
    let mut runner = TestRunner::new(Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/model.proptest-regressions"
        )))),
        ..runner::proptest_config(cases())
    });
    let strategy = (prop::collection::vec(step(), 1..24), any::<bool>());
    match runner.run(&strategy, |(steps, direct)| check(backend, &steps, direct)) {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn main() {
    let trials = BUILTIN_BACKENDS
        .into_iter()
        .map(|backend| {
            Trial::new(
                &format!("model:{backend}"),
                "agrees_with_the_reference_model",
                std::time::Duration::from_secs(300),
                move || agrees_with_the_reference_model(backend),
            )
            .seeded()
        })
        .collect();
    runner::run_parallel(trials);
}
