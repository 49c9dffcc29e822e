//! The fault oracle: runs operations one at a time through a [`FaultyEngine`], takes the
//! faults injected during each from the injector's log, and checks that every one was either
//! masked (retried, or completed by the exact-transfer loop, with the right data) or
//! surfaced as a typed error carrying the operation's identity. An injected error followed by
//! a success is a swallowed error; an error with nothing injected is an unexplained one.

use std::path::Path;

use engine_core::{
    block_on, AlignedBuf, AllocateMode, Backend, BackendExt, ErrorKind, File, Op, OpenOptions,
    Result,
};

use crate::faulty::{Fault, FaultyEngine, Injection};

/// The size of each file the oracle drives.
pub const FILE_BYTES: usize = 64 << 10;
const SECTOR: usize = 512;

/// One step of an oracle workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Which file.
    pub file: usize,
    /// What.
    pub op: Op,
    /// Through `read_exact_at`/`write_all_at` (true) or one `read_at`/`write_at`; for an
    /// allocation, a punched hole (true) or a `KeepSize` reservation. An exact step of more
    /// than one sector whose seed is a multiple of 3 goes through
    /// `read_vectored_at`/`write_vectored_at`, one buffer per sector.
    pub exact: bool,
    /// Offset, sector-aligned.
    pub offset: u64,
    /// Length, whole sectors.
    pub len: usize,
    /// Seed of the data written.
    pub seed: u64,
}

/// What the oracle found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Operations run.
    pub ops: usize,
    /// Faults injected.
    pub injected: usize,
    /// Of those, masked correctly.
    pub masked: usize,
    /// Of those, surfaced as typed errors.
    pub surfaced: usize,
    /// Everything wrong, one sentence each.
    pub violations: Vec<String>,
}

/// The oracle's model of one file: known bytes, and the sync poison.
struct Model {
    file: File,
    bytes: Vec<Option<u8>>,
    dsync: bool,
    poisoned: Option<i32>,
}

/// Opens `count` files of [`FILE_BYTES`] in `dir` through `engine`, the second with O_DSYNC.
fn open_files<E: Backend>(
    engine: &FaultyEngine<E>,
    dir: &Path,
    count: usize,
) -> Result<Vec<Model>> {
    let mut models = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("oracle-{i}"));
        let initial = crate::pattern(FILE_BYTES, 1000 + i as u64);
        std::fs::write(&path, &initial).map_err(|e| engine_core::Error::from_io(&e, Op::Open))?;
        let dsync = i == 1;
        let options = OpenOptions::new().read(true).write(true).dsync(dsync);
        let file = engine.open(&path, &options)?;
        models.push(Model {
            file,
            bytes: initial.into_iter().map(Some).collect(),
            dsync,
            poisoned: None,
        });
    }
    Ok(models)
}

fn kind_of(fault: Fault) -> ErrorKind {
    match fault {
        Fault::Enospc => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    }
}

/// Runs `step` and checks it against the faults injected while it ran.
fn check<E: Backend>(
    engine: &FaultyEngine<E>,
    models: &mut [Model],
    step: &Step,
    index: usize,
    verdict: &mut Verdict,
) {
    let mark = engine.injector().log_len();
    let model = &mut models[step.file];
    let file = model.file.clone();
    let data = crate::pattern(step.len, step.seed);
    // Ok(bytes transferred, bytes read) or the error.
    let vectored = step.exact && step.len > SECTOR && step.seed % 3 == 0;
    let sectors = |fill: &[u8]| -> Result<Vec<AlignedBuf>> {
        fill.chunks(SECTOR)
            .map(|chunk| AlignedBuf::from_slice(chunk, SECTOR))
            .collect()
    };
    let outcome: std::result::Result<(usize, Vec<u8>), engine_core::Error> = block_on(async {
        match (step.op, step.exact) {
            (Op::Read, true) if vectored => {
                let bufs = sectors(&vec![0; step.len])?;
                let (r, bufs) = engine.read_vectored_at(&file, step.offset, bufs).await;
                r.map(|()| (step.len, bufs.iter().flat_map(|b| b.to_vec()).collect()))
            }
            (Op::Write, true) if vectored => {
                let bufs = sectors(&data)?;
                let (r, _) = engine.write_vectored_at(&file, step.offset, bufs).await;
                r.map(|()| (step.len, Vec::new()))
            }
            (Op::Read, true) => {
                let (r, buf) = engine
                    .read_exact_at(&file, step.offset, AlignedBuf::zeroed(step.len, SECTOR)?)
                    .await;
                r.map(|()| (step.len, buf.to_vec()))
            }
            (Op::Read, false) => {
                let (r, buf) = engine
                    .read_at(&file, step.offset, AlignedBuf::zeroed(step.len, SECTOR)?)
                    .await;
                r.map(|n| (n, buf.to_vec()))
            }
            (Op::Write, true) => {
                let (r, _) = engine
                    .write_all_at(&file, step.offset, AlignedBuf::from_slice(&data, SECTOR)?)
                    .await;
                r.map(|()| (step.len, Vec::new()))
            }
            (Op::Write, false) => {
                let (r, _) = engine
                    .write_at(&file, step.offset, AlignedBuf::from_slice(&data, SECTOR)?)
                    .await;
                r.map(|n| (n, Vec::new()))
            }
            (Op::SyncData, _) => engine.sync_data(&file).await.map(|()| (0, Vec::new())),
            (Op::Allocate, punch) => {
                let mode = if punch {
                    AllocateMode::PunchHole
                } else {
                    AllocateMode::KeepSize
                };
                let len = step.len as u64;
                let done = engine.allocate(&file, step.offset, len, mode).await;
                done.map(|()| (0, Vec::new()))
            }
            // The same length again: a length change that changes nothing.
            (Op::SetLen, _) => engine
                .set_len(&file, FILE_BYTES as u64)
                .await
                .map(|()| (FILE_BYTES, Vec::new())),
            (Op::Metadata, _) => {
                let metadata = engine.metadata(&file).await?;
                Ok((metadata.len() as usize, Vec::new()))
            }
            _ => engine.sync_all(&file).await.map(|()| (0, Vec::new())),
        }
    });
    let injected: Vec<Injection> = engine.injector().log()[mark..].to_vec();
    verdict.ops += 1;
    verdict.injected += injected.len();
    let persistent = injected.iter().find(|i| !i.fault.maskable());
    let short = injected
        .iter()
        .find(|i| i.fault == Fault::Short && i.identity.offset == step.offset);
    let seed = engine.injector().seed();
    let mut violation = |what: String| {
        verdict.violations.push(format!(
            "seed {seed:#x}, op {index} {step:?}: {what}; injected {injected:?}"
        ));
    };
    let range = step.offset as usize..step.offset as usize + step.len;
    match (&outcome, persistent, model.poisoned) {
        (Err(e), _, Some(errno)) if step.op.is_sync() => {
            if e.kind() != ErrorKind::Poisoned || e.raw_os_error() != Some(errno) {
                violation(format!(
                    "a sync on a poisoned file must fail as poisoned with errno {errno}, got {e}"
                ));
            }
        }
        (Ok(_), _, Some(_)) if step.op.is_sync() => {
            violation("a sync on a poisoned file succeeded".into())
        }
        (Err(e), Some(fault), _) => {
            verdict.surfaced += 1;
            let expected_errno = fault.fault.errno();
            if e.raw_os_error() != expected_errno || e.kind() != kind_of(fault.fault) {
                violation(format!("injected {:?} surfaced as {e}", fault.fault));
            }
            if e.file().map(|f| f.id) != Some(file.id()) {
                violation(format!("error does not name the file: {e}"));
            }
            if matches!(step.op, Op::Read | Op::Write | Op::Allocate) {
                let inside = e.offset().is_some_and(|o| range.contains(&(o as usize)))
                    && e.length().is_some();
                if !inside {
                    violation(format!("error does not carry the request's range: {e}"));
                }
            }
            if step.op == Op::Write || (step.op == Op::Allocate && step.exact) {
                // Part of the range may have reached the file (torn, or before the failure).
                for b in &mut model.bytes[range.clone()] {
                    *b = None;
                }
            }
            if (step.op.is_sync() || (step.op == Op::Write && model.dsync))
                && model.poisoned.is_none()
            {
                // The first failure's errno is the one every later sync reports.
                model.poisoned = expected_errno;
            }
        }
        (Ok(_), Some(fault), _) => violation(format!(
            "injected {:?} was swallowed: the operation succeeded",
            fault.fault
        )),
        (Err(e), None, _) => violation(format!("an error with nothing injected: {e}")),
        (Ok((n, read)), None, _) => {
            verdict.masked += injected.len();
            let expected_n = match (step.op, step.exact, short) {
                (Op::Metadata | Op::SetLen, ..) => FILE_BYTES,
                (Op::Allocate | Op::SyncData | Op::SyncAll, ..) => 0,
                (_, true, _) => step.len,
                (_, false, Some(short)) => short.bytes,
                (_, false, None) => step.len,
            };
            if *n != expected_n {
                violation(format!("transferred {n} bytes, expected {expected_n}"));
            }
            match step.op {
                Op::Read => {
                    let got = (*n).min(read.len());
                    let expected = &model.bytes[range.start..range.start + got];
                    let wrong = expected
                        .iter()
                        .zip(&read[..got])
                        .position(|(m, r)| m.is_some_and(|m| m != *r));
                    if let Some(at) = wrong {
                        violation(format!(
                            "read returned wrong data at byte {}",
                            range.start + at
                        ));
                    }
                }
                Op::Write => {
                    for (i, b) in data[..*n].iter().enumerate() {
                        model.bytes[range.start + i] = Some(*b);
                    }
                }
                Op::Allocate if step.exact => {
                    for b in &mut model.bytes[range.clone()] {
                        *b = Some(0);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A random workload of `count` operations with seed `seed` through `engine`, one at a time,
/// every one checked.
///
/// # Errors
///
/// Setup errors (opening the files).
pub fn random_workload<E: Backend>(
    engine: &FaultyEngine<E>,
    dir: &Path,
    seed: u64,
    count: usize,
) -> Result<Verdict> {
    let mut models = open_files(engine, dir, 2)?;
    let mut verdict = Verdict::default();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for index in 0..count {
        let kind = match next() % 13 {
            0..=3 => Op::Read,
            4..=7 => Op::Write,
            8 => Op::SyncData,
            9 => Op::SyncAll,
            10 => Op::Allocate,
            11 => Op::SetLen,
            _ => Op::Metadata,
        };
        let sectors = 1 + (next() % 16) as usize;
        let start = (next() as usize % (FILE_BYTES / SECTOR - sectors)) * SECTOR;
        let step = Step {
            file: (next() % 2) as usize,
            op: kind,
            exact: next() % 2 == 0,
            offset: if has_range(kind) { start as u64 } else { 0 },
            len: if has_range(kind) { sectors * SECTOR } else { 0 },
            seed: next(),
        };
        check(engine, &mut models, &step, index, &mut verdict);
    }
    Ok(verdict)
}

/// True for the operations a step gives an offset and a length.
fn has_range(op: Op) -> bool {
    matches!(op, Op::Read | Op::Write | Op::Allocate)
}

/// One operation of `kind` (exact transfer for reads and writes) on a fresh file set, for
/// the fault matrix.
///
/// # Errors
///
/// Setup errors.
pub fn single<E: Backend>(engine: &FaultyEngine<E>, dir: &Path, kind: Op) -> Result<Verdict> {
    let mut models = open_files(engine, dir, 1)?;
    let mut verdict = Verdict::default();
    let step = Step {
        file: 0,
        op: kind,
        exact: true,
        offset: if has_range(kind) { 4096 } else { 0 },
        len: if has_range(kind) { 8192 } else { 0 },
        seed: 7,
    };
    check(engine, &mut models, &step, 0, &mut verdict);
    // A second sync shows whether a sync failure stuck.
    if kind.is_sync() {
        check(engine, &mut models, &step, 1, &mut verdict);
    }
    Ok(verdict)
}
