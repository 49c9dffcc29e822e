//! One request's life, from admission to its completion, written once for every backend:
//! validation before anything is claimed ([`validate`]), admission ([`InFlight::admit`]), the
//! fault-hook gate before each submission ([`InFlight::next`]), what the kernel is asked to do
//! ([`InFlight::io_for`]) and the settle path that turns each kernel result into a resubmission
//! (EINTR/EAGAIN, the rest of an exact transfer) or the completion (errno mapping, poisoning,
//! buffer length, metrics).

use std::io::{IoSlice, IoSliceMut};
use std::time::Instant;

use crate::buf::AlignedBuf;
use crate::error::{AlignTarget, Error, ErrorKind, Misalignment, Op, Result};
use crate::file::File;
use crate::metadata::AllocateMode;
use crate::raw::common::Common;
use crate::request::{Completion, Request, WriteFlags};

/// The most retries of one submission on EINTR/EAGAIN before the errno is returned. Real
/// EINTR/EAGAIN on files are rare and short-lived; the bound keeps a pathological device (or a
/// fault hook that always fails) from spinning forever.
pub const RETRIES_MAX: u32 = 64;

/// Returns true for errnos the engine retries itself (contract point 3): `EINTR`, `EAGAIN`.
pub fn errno_is_transient(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

/// What the kernel is asked to do for one submission of a request. The buffer slices borrow
/// the request's own buffer, which stays in the request's slot until the result is settled:
/// a backend may hand their addresses to the kernel for exactly that long.
#[derive(Debug)]
pub enum Io<'a> {
    /// Read into `buf` at `offset`.
    Read {
        /// The file.
        file: &'a File,
        /// Byte offset in the file.
        offset: u64,
        /// Where the data goes: the part of the request's buffer this submission fills.
        buf: &'a mut [u8],
        /// The page pool the buffer came from, for registered-buffer opcodes.
        pool: Option<u64>,
    },
    /// Write `buf` at `offset`.
    Write {
        /// The file.
        file: &'a File,
        /// Byte offset in the file.
        offset: u64,
        /// The data: the part of the request's buffer this submission sends.
        buf: &'a [u8],
        /// The page pool the buffer came from, for registered-buffer opcodes.
        pool: Option<u64>,
        /// `RWF_*` flags for the kernel (`RWF_DSYNC`, `RWF_ATOMIC`): `pwritev2`'s flags,
        /// io_uring's `rw_flags`, AIO's `aio_rw_flags`.
        rw_flags: i32,
        /// Run an `fdatasync` after the write, ordered after it (only for kernels whose
        /// [`crate::raw::Kernel::links_sync`] is true).
        then_sync: bool,
    },
    /// Read into `bufs`, in order, from `offset` (`preadv`): the parts of a vectored
    /// request's buffers this submission fills, at most [`Request::IOV_MAX`] of them.
    /// `IoSliceMut` is ABI-compatible with `iovec`, so `bufs.as_mut_ptr().cast::<libc::iovec>()`
    /// is the array a kernel takes; it stays valid, like the buffers, until the result is
    /// settled.
    ReadVectored {
        /// The file.
        file: &'a File,
        /// Byte offset in the file.
        offset: u64,
        /// Where the data goes.
        bufs: &'a mut [IoSliceMut<'a>],
    },
    /// Write `bufs`, in order, from `offset` (`pwritev2`), as [`Io::ReadVectored`].
    WriteVectored {
        /// The file.
        file: &'a File,
        /// Byte offset in the file.
        offset: u64,
        /// The data.
        bufs: &'a [IoSlice<'a>],
        /// As [`Io::Write`]'s.
        rw_flags: i32,
        /// As [`Io::Write`]'s.
        then_sync: bool,
    },
    /// `fdatasync`.
    SyncData {
        /// The file.
        file: &'a File,
    },
    /// `fsync`.
    SyncAll {
        /// The file.
        file: &'a File,
    },
    /// `fallocate(mode.bits(), offset, len)`.
    Allocate {
        /// The file.
        file: &'a File,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The mode.
        mode: AllocateMode,
    },
    /// `ftruncate(len)`.
    SetLen {
        /// The file.
        file: &'a File,
        /// The new length.
        len: u64,
    },
    /// `statx(fd, "", AT_EMPTY_PATH, mask, statx)` with [`Io::METADATA_MASK`].
    Metadata {
        /// The file.
        file: &'a File,
        /// The record to fill: valid, and owned by the request's slot, until the result is
        /// settled.
        statx: *mut libc::statx,
    },
}

impl Io<'_> {
    /// The statx fields a metadata request asks for.
    pub const METADATA_MASK: u32 = crate::metadata::METADATA_MASK;

    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Io::Read { .. } | Io::ReadVectored { .. } => Op::Read,
            Io::Write { .. } | Io::WriteVectored { .. } => Op::Write,
            Io::SyncData { .. } => Op::SyncData,
            Io::SyncAll { .. } => Op::SyncAll,
            Io::Allocate { .. } => Op::Allocate,
            Io::SetLen { .. } => Op::SetLen,
            Io::Metadata { .. } => Op::Metadata,
        }
    }

    /// The file.
    pub fn file(&self) -> &File {
        match self {
            Io::Read { file, .. }
            | Io::Write { file, .. }
            | Io::ReadVectored { file, .. }
            | Io::WriteVectored { file, .. }
            | Io::SyncData { file }
            | Io::SyncAll { file }
            | Io::Allocate { file, .. }
            | Io::SetLen { file, .. }
            | Io::Metadata { file, .. } => file,
        }
    }

    /// The bytes a read or write asks to move (0 for the other operations).
    pub fn len(&self) -> usize {
        match self {
            Io::Read { buf, .. } => buf.len(),
            Io::Write { buf, .. } => buf.len(),
            Io::ReadVectored { bufs, .. } => bufs.iter().map(|b| b.len()).sum(),
            Io::WriteVectored { bufs, .. } => bufs.iter().map(|b| b.len()).sum(),
            _ => 0,
        }
    }

    /// True when the operation moves no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a write whose `fdatasync` the kernel is to run after it (`then_sync`).
    pub fn then_sync(&self) -> bool {
        matches!(
            self,
            Io::Write {
                then_sync: true,
                ..
            } | Io::WriteVectored {
                then_sync: true,
                ..
            }
        )
    }

    /// Runs the operation as a blocking syscall on the calling thread and returns the bytes
    /// transferred or `-errno`: the sync backend's workers do this, and a kernel interface
    /// falls back to it for an operation it has no opcode for.
    pub fn run_blocking(&mut self) -> i64 {
        crate::raw::pool::run_blocking(self, 0)
    }
}

/// What to do with a request about to be submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Hand [`InFlight::io_for`] to the kernel.
    Submit,
    /// Do not: settle it at once with this result (bytes, or a negated errno), as if the kernel
    /// had returned it. The fault hook decides this.
    Complete(i64),
}

/// A request between admission and completion. It owns the request, buffer included, until
/// [`InFlight::settle`] hands the completion back: a backend keeps it in its slot while the
/// kernel holds the buffer.
#[derive(Debug)]
pub struct InFlight {
    request: Request,
    /// Bytes asked for (the buffers' lengths at admission); 0 for syncs.
    total: usize,
    /// Bytes transferred so far, from the start of the (first) buffer.
    done: usize,
    /// This submission: where in the buffer (a vectored request's concatenation) it starts,
    /// and how long it is.
    start: usize,
    len: usize,
    /// The largest length one submission may have: the file's `io_bytes_max`, rounded down to
    /// its alignment so that the rest of an exact transfer stays aligned.
    len_max: usize,
    /// The alignment the rest of an exact transfer resumes at (1 for unaligned files).
    resume_align: usize,
    /// EINTR/EAGAIN retries of this submission, and of the whole request.
    attempt: u32,
    retries: u32,
    /// A torn write injected by the fault hook: the errno reported once the shortened
    /// transfer is done.
    torn: Option<i32>,
    /// The strict-mode span token, released when the request completes.
    span: u64,
    /// A write with [`WriteFlags::SYNC_DATA_AFTER`] whose data is written: its `fdatasync`
    /// is the submission now, and `done` is the count the completion reports.
    syncing: bool,
    /// This submission is a write with its fdatasync linked after it, run by the kernel.
    linked: bool,
    /// A vectored request's `iovec` array for this submission (empty otherwise).
    iov: IoVecs,
    started: Instant,
}

/// The `iovec` array of one vectored submission: the parts of the request's buffers it
/// covers, at most [`Request::IOV_MAX`]. Its heap allocation does not move with the
/// [`InFlight`], and it is rebuilt only for the next submission, after the kernel returned
/// the last one, so a kernel may read it until the result is reaped.
#[derive(Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers address the buffers of the request that owns this array, which move
// between threads with it; the array is only read or written through `&mut InFlight`.
unsafe impl Send for IoVecs {}

impl std::fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoVecs({})", self.0.len())
    }
}

/// Walks the parts of `bufs` that bytes `[start, start + len)` of their concatenation cover,
/// in order, empty buffers skipped, and at most [`Request::IOV_MAX`] of them: calls `part`
/// with each buffer and the range within it. Returns the bytes covered, less than `len` only
/// when the entries ran out.
fn walk_parts<B: std::ops::Deref<Target = AlignedBuf>>(
    bufs: impl IntoIterator<Item = B>,
    start: usize,
    len: usize,
    mut part: impl FnMut(B, std::ops::Range<usize>),
) -> usize {
    let end = start + len;
    let (mut at, mut parts, mut covered) = (0, 0, 0);
    for buf in bufs {
        let (from, to) = (at, at + buf.len());
        at = to;
        if to <= start || from == to {
            continue;
        }
        if from >= end || parts == Request::IOV_MAX {
            break;
        }
        let range = start.max(from) - from..end.min(to) - from;
        (parts, covered) = (parts + 1, covered + range.len());
        part(buf, range);
    }
    covered
}

impl IoVecs {
    /// Points the array at bytes `[start, start + len)` of the concatenation of `bufs` (at
    /// most [`Request::IOV_MAX`] parts: see [`walk_parts`]).
    fn window(&mut self, bufs: &mut [AlignedBuf], start: usize, len: usize) -> usize {
        self.0.clear();
        walk_parts(bufs.iter_mut(), start, len, |buf, range| {
            let part = &mut buf.as_mut_slice()[range];
            self.0.push(libc::iovec {
                iov_base: part.as_mut_ptr().cast(),
                iov_len: part.len(),
            });
        })
    }

    fn slices_mut(&mut self) -> &mut [IoSliceMut<'_>] {
        // SAFETY: `IoSliceMut` is ABI-compatible with `iovec` on Unix (std guarantees it). Each
        // entry addresses a distinct part of one of the request's buffers, which the caller
        // borrows mutably, through `&mut InFlight`, for as long as the slices live.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len()) }
    }

    fn slices(&self) -> &[IoSlice<'_>] {
        // SAFETY: as `slices_mut`, shared: `IoSlice` is ABI-compatible with `iovec`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len()) }
    }
}

/// Validates a request for engine `engine_id` before anything is claimed (contract points 1
/// and 10). Pure: it takes no lock but the file's, and claims nothing.
///
/// Checks, in order: the handle belongs to this engine and is open; the file's access mode
/// allows the operation; a sync on a poisoned file; offset overflow; under O_DIRECT (or the
/// file's `align_min`), the alignment of memory, offset and length, each buffer's own for a
/// vectored request.
///
/// # Errors
///
/// The typed error the request must complete with, carrying op, file, offset and length.
pub fn validate(engine_id: u64, request: &Request) -> Result<()> {
    let file = request.file();
    let op = request.op();
    let len = request.len();
    let with_range = |error: Error| match request.offset() {
        Some(offset) => error.with_range(offset, len as u64),
        None => error,
    };
    if file.engine_id() != engine_id {
        return Err(with_range(
            file.error(ErrorKind::BadFile, op)
                .with_message("the file was opened by another engine"),
        ));
    }
    if file.is_closed() {
        return Err(with_range(
            file.error(ErrorKind::BadFile, op)
                .with_message("the file is closed"),
        ));
    }
    let options = file.options();
    match op {
        Op::Read if !options.is_read() => {
            return Err(with_range(
                file.error(ErrorKind::BadFile, op)
                    .with_message("the file is not open for reading"),
            ))
        }
        Op::Write | Op::Allocate | Op::SetLen if !options.is_write() => {
            return Err(with_range(
                file.error(ErrorKind::ReadOnly, op)
                    .with_message("the file is open read-only"),
            ))
        }
        _ => {}
    }
    match request {
        Request::Allocate {
            offset, len, mode, ..
        } => return validate_allocate(file, *offset, *len, *mode),
        Request::SetLen { len, .. } => return validate_set_len(file, *len),
        _ => {}
    }
    let flags = request.write_flags();
    if flags.contains(WriteFlags::SYNC_DATA_AFTER) {
        if let Some(errno) = file.poisoned() {
            return Err(with_range(poisoned(file, op, errno)));
        }
    }
    if flags.contains(WriteFlags::ATOMIC) {
        let offset = request.offset().unwrap_or(0);
        let segments = request.bufs().iter().filter(|b| !b.is_empty()).count();
        validate_atomic(file, offset, len as u64, segments).map_err(with_range)?;
    }
    let Some(offset) = request.offset() else {
        // A sync (only the poison can refuse it), or metadata.
        return match file.poisoned() {
            Some(errno) if op.is_sync() => Err(poisoned(file, op, errno)),
            _ => Ok(()),
        };
    };
    // A positional offset must fit off_t, and so must its end.
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > i64::MAX as u64) {
        return Err(with_range(
            file.error(ErrorKind::OutOfRange, op)
                .with_message("offset plus length exceeds the largest file offset (2^63 - 1)"),
        ));
    }
    if file.enforces_alignment() {
        let geometry = file.geometry();
        let offset_align = if op == Op::Read {
            geometry.read_offset_align
        } else {
            geometry.offset_align
        };
        let misaligned = |target, required: u32, actual: u64| {
            let misalignment = Misalignment {
                target,
                required: u64::from(required),
                actual,
            };
            with_range(Error::misaligned(op, misalignment).with_file(file.file_ref()))
        };
        // Every buffer's memory and length (the kernel checks each iovec on its own; a
        // vectored request's empty buffers take no iovec), in the order memory, offset,
        // length.
        let bufs = request.bufs();
        let vectored = request.is_vectored();
        let check = |target, required: u32, actual: fn(&AlignedBuf) -> u64| {
            let parts = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| !vectored || !b.is_empty());
            for (i, buf) in parts {
                if actual(buf) % u64::from(required.max(1)) != 0 {
                    let error = misaligned(target, required, actual(buf));
                    return Err(match vectored {
                        true => error.with_message(format!("buffer {i} of {}", bufs.len())),
                        false => error,
                    });
                }
            }
            Ok(())
        };
        check(AlignTarget::Memory, geometry.mem_align, |b| {
            b.as_ptr() as u64
        })?;
        if offset % u64::from(offset_align.max(1)) != 0 {
            return Err(misaligned(AlignTarget::Offset, offset_align, offset));
        }
        check(AlignTarget::Length, geometry.offset_align, |b| {
            b.len() as u64
        })?;
    }
    Ok(())
}

/// The largest file offset, `off_t`'s maximum.
const OFFSET_MAX: u64 = i64::MAX as u64;

fn validate_allocate(file: &File, offset: u64, len: u64, mode: AllocateMode) -> Result<()> {
    let op = Op::Allocate;
    if len == 0 {
        return Err(file
            .error(ErrorKind::InvalidInput, op)
            .with_range(offset, len)
            .with_message("allocate needs a length of at least 1"));
    }
    if offset.checked_add(len).is_none_or(|end| end > OFFSET_MAX) {
        return Err(file
            .error(ErrorKind::OutOfRange, op)
            .with_range(offset, len)
            .with_message("offset plus length exceeds the largest file offset (2^63 - 1)"));
    }
    let geometry = file.geometry();
    if geometry.is_block_device && !mode.zeroes() {
        return Err(file
            .error(ErrorKind::Unsupported, op)
            .with_range(offset, len)
            .with_errno(libc::EOPNOTSUPP)
            .with_message(format!(
                "a block device's space is fixed: it takes only PunchHole and ZeroRange, not {mode:?}"
            )));
    }
    // A block device zeroes whole logical blocks only, and under O_DIRECT (or align_min) a
    // partial-block zeroing would go through the page cache: both must be aligned.
    if mode.zeroes() && (geometry.is_block_device || file.enforces_alignment()) {
        let align = u64::from(geometry.offset_align.max(1));
        for (target, actual) in [(AlignTarget::Offset, offset), (AlignTarget::Length, len)] {
            if actual % align != 0 {
                let misalignment = Misalignment {
                    target,
                    required: align,
                    actual,
                };
                return Err(Error::misaligned(op, misalignment)
                    .with_file(file.file_ref())
                    .with_range(offset, len));
            }
        }
    }
    Ok(())
}

/// An untorn write's rules (`RWF_ATOMIC`): an O_DIRECT file with atomic-write limits, a
/// power-of-two length within them, an offset aligned to the length, and no more buffers
/// than the file's segment limit.
fn validate_atomic(file: &File, offset: u64, len: u64, segments: usize) -> Result<()> {
    let op = Op::Write;
    let g = file.geometry();
    let limits = format!(
        "unit min {}, max {}, max_opt {}, segments {}",
        g.atomic_write_unit_min,
        g.atomic_write_unit_max,
        g.atomic_write_unit_max_opt,
        g.atomic_write_segments_max
    );
    if !file.options().is_direct() {
        return Err(file.error(ErrorKind::Unsupported, op).with_message(
            "atomic writes need O_DIRECT: the kernel refuses them on buffered files",
        ));
    }
    if g.atomic_write_unit_max == 0 {
        return Err(file
            .error(ErrorKind::Unsupported, op)
            .with_errno(libc::EOPNOTSUPP)
            .with_message(format!(
                "the file takes no atomic writes (statx STATX_WRITE_ATOMIC: {limits}); \
                 write a checksummed copy elsewhere first, or use a filesystem that has them \
                 (XFS with reflink on Linux 6.16+)"
            )));
    }
    let (min, max) = (
        u64::from(g.atomic_write_unit_min),
        u64::from(g.atomic_write_unit_max),
    );
    if !len.is_power_of_two() || len < min {
        let misalignment = Misalignment {
            target: AlignTarget::Length,
            required: min,
            actual: len,
        };
        return Err(Error::misaligned(op, misalignment)
            .with_file(file.file_ref())
            .with_message(format!(
                "an atomic write's length must be a power of two within the file's limits ({limits})"
            )));
    }
    if len > max {
        return Err(file
            .error(ErrorKind::Unsupported, op)
            .with_errno(libc::EINVAL)
            .with_message(format!(
                "a {len}-byte atomic write is longer than the file takes ({limits})"
            )));
    }
    if segments as u64 > u64::from(g.atomic_write_segments_max.max(1)) {
        return Err(file
            .error(ErrorKind::Unsupported, op)
            .with_errno(libc::EINVAL)
            .with_message(format!(
                "an atomic write of {segments} buffers is more than the file takes in one \
                 ({limits}); copy them into one buffer"
            )));
    }
    if offset % len != 0 {
        let misalignment = Misalignment {
            target: AlignTarget::Offset,
            required: len,
            actual: offset,
        };
        return Err(Error::misaligned(op, misalignment)
            .with_file(file.file_ref())
            .with_message(format!(
                "an atomic write's offset must be a multiple of its length ({limits})"
            )));
    }
    Ok(())
}

fn validate_set_len(file: &File, len: u64) -> Result<()> {
    let op = Op::SetLen;
    if len > OFFSET_MAX {
        return Err(file
            .error(ErrorKind::OutOfRange, op)
            .with_range(len, 0)
            .with_message("the length exceeds the largest file offset (2^63 - 1)"));
    }
    if file.geometry().is_block_device {
        return Err(file
            .error(ErrorKind::Unsupported, op)
            .with_errno(libc::EINVAL)
            .with_message("a block device's length is fixed"));
    }
    Ok(())
}

fn poisoned(file: &File, op: Op, errno: i32) -> Error {
    file.error(ErrorKind::Poisoned, op)
        .with_errno(errno)
        .with_message(
            "an earlier sync failed, so writes since the last successful sync may be lost even \
             though reads (from the page cache) may still show them: rewrite that data from \
             your own copy after reopening the file; the kernel's next fsync would report \
             success without writing it",
        )
}

/// Completes a request that will not run (validation failed, or the engine shut down before it
/// started) with `error`: records the error and hands the buffer back.
pub fn reject(common: &Common, request: Request, error: Error) -> Completion {
    let result = Err(error);
    common
        .metrics()
        .record(request.op(), &result, std::time::Duration::ZERO, 0);
    request.into_completion(result)
}

impl InFlight {
    /// Admits a request: validation, the shutdown check, then the strict-mode claim of its
    /// byte range. A request refused here comes back as its completion, carrying the typed
    /// error and the buffer, so every request still has exactly one.
    ///
    /// # Errors
    ///
    /// The completion of a refused request.
    #[allow(clippy::result_large_err)]
    pub fn admit(common: &Common, request: Request) -> std::result::Result<InFlight, Completion> {
        if let Err(error) = validate(common.engine_id(), &request) {
            return Err(reject(common, request, error));
        }
        InFlight::admit_validated(common, request)
    }

    /// As [`InFlight::admit`], for a request [`validate`] already passed (the async driver
    /// validates before it waits for a slot).
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit_validated(
        common: &Common,
        request: Request,
    ) -> std::result::Result<InFlight, Completion> {
        if common.is_shut_down() {
            let error = request
                .file()
                .error(ErrorKind::Shutdown, request.op())
                .with_message("the engine has shut down");
            return Err(reject(common, request, error));
        }
        let total = request.len();
        let span = match request.range() {
            Some((offset, len)) => {
                let writes = request.op() != Op::Read;
                match request.file().claim_span(offset, len, writes) {
                    Ok(span) => span,
                    Err(error) => return Err(reject(common, request, error)),
                }
            }
            None => 0,
        };
        let (len_max, resume_align) = limits(request.file(), request.op());
        let mut inflight = InFlight {
            total,
            done: 0,
            start: 0,
            len: 0,
            len_max,
            resume_align,
            attempt: 0,
            retries: 0,
            torn: None,
            span,
            syncing: false,
            linked: false,
            iov: IoVecs::default(),
            started: Instant::now(),
            request,
        };
        inflight.len = inflight.submission_len();
        Ok(inflight)
    }

    /// The length of the submission from `start`: the rest, capped at `len_max` and, for a
    /// vectored request, at [`Request::IOV_MAX`] buffers.
    fn submission_len(&self) -> usize {
        let len = (self.total - self.start).min(self.len_max);
        if !self.request.is_vectored() {
            return len;
        }
        walk_parts(self.request.bufs(), self.start, len, |_, _| {})
    }

    /// Runs a request [`validate`] passed to its completion on the calling thread, as
    /// blocking syscalls, with everything else of the lifecycle (admission, the fault hook,
    /// retries, poisoning, metrics): for a request nothing else is in flight beside, on a
    /// thread that would only wait for it (see [`crate::raw::Kernel::inline_idle_syncs`]).
    pub(crate) fn run_here(common: &Common, request: Request) -> Completion {
        let mut inflight = match InFlight::admit_validated(common, request) {
            Ok(inflight) => inflight,
            Err(completion) => return completion,
        };
        // Each round settles one result; retries and resumed transfers are bounded there.
        loop {
            let result = match inflight.next(common) {
                Next::Submit => inflight.io_for(false).run_blocking(),
                Next::Complete(result) => result,
            };
            match inflight.settle(common, result) {
                Ok(again) => inflight = again,
                Err(completion) => return completion,
            }
        }
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The operation.
    pub fn op(&self) -> Op {
        self.request.op()
    }

    /// The file.
    pub fn file(&self) -> &File {
        self.request.file()
    }

    /// The file offset of this submission (0 for syncs).
    pub fn offset(&self) -> u64 {
        self.request
            .offset()
            .map_or(0, |offset| offset + self.start as u64)
    }

    /// The length of this submission (0 for syncs).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when this submission transfers nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decides the fate of the next submission. Without a fault hook (every engine outside
    /// the `testing` feature) it is always [`Next::Submit`].
    pub fn next(&mut self, common: &Common) -> Next {
        #[cfg(feature = "testing")]
        if let Some(hook) = common.fault_hook() {
            use crate::testing::FaultAction;
            let (op, offset, len) = if self.syncing {
                (Op::SyncData, 0, 0)
            } else {
                (self.op(), self.offset(), self.len)
            };
            let action = hook.before(op, self.request.file(), offset, len, self.attempt);
            // An untorn write cannot be short or torn: the device does all of it or none.
            let atomic = self.request.write_flags().contains(WriteFlags::ATOMIC);
            match action {
                None => {}
                Some(FaultAction::Fail(errno)) => return Next::Complete(-i64::from(errno)),
                Some(FaultAction::Short(_)) if atomic || self.syncing => {}
                Some(FaultAction::Torn { errno, .. }) if atomic => {
                    return Next::Complete(-i64::from(errno))
                }
                Some(FaultAction::Short(n)) => self.len = self.len.min(n),
                Some(FaultAction::Torn { persist, errno }) => {
                    self.len = self.len.min(persist);
                    self.torn = Some(errno);
                }
            }
        }
        #[cfg(not(feature = "testing"))]
        let _ = common;
        Next::Submit
    }

    /// What the kernel is asked to do for this submission; with `links` (the kernel's
    /// [`crate::raw::Kernel::links_sync`]), the last write of a
    /// [`WriteFlags::SYNC_DATA_AFTER`] request carries its sync along.
    pub fn io_for(&mut self, links: bool) -> Io<'_> {
        if self.request.is_vectored() && !self.syncing {
            let bufs = self.request.bufs_mut();
            let covered = self.iov.window(bufs, self.start, self.len);
            debug_assert_eq!(covered, self.len, "the length was capped at IOV_MAX parts");
        }
        let (start, end) = (self.start, self.start + self.len);
        self.linked = links
            && !self.syncing
            && self
                .request
                .write_flags()
                .contains(WriteFlags::SYNC_DATA_AFTER)
            && (end >= self.total || !self.request.is_exact());
        let then_sync = self.linked;
        let offset = self.offset();
        if self.syncing {
            return Io::SyncData {
                file: self.request.file(),
            };
        }
        match &mut self.request {
            Request::Read { file, buf, .. } | Request::ReadExact { file, buf, .. } => {
                let pool = buf.pool_id();
                Io::Read {
                    file,
                    offset,
                    buf: &mut buf.as_mut_slice()[start..end],
                    pool,
                }
            }
            Request::Write {
                file, buf, flags, ..
            }
            | Request::WriteAll {
                file, buf, flags, ..
            } => {
                let pool = buf.pool_id();
                Io::Write {
                    file,
                    offset,
                    buf: &buf.as_slice()[start..end],
                    pool,
                    rw_flags: flags.rw_flags(),
                    then_sync,
                }
            }
            Request::ReadVectored { file, .. } => Io::ReadVectored {
                file,
                offset,
                bufs: self.iov.slices_mut(),
            },
            Request::WriteVectored { file, flags, .. } => Io::WriteVectored {
                file,
                offset,
                bufs: self.iov.slices(),
                rw_flags: flags.rw_flags(),
                then_sync,
            },
            Request::SyncData { file, .. } => Io::SyncData { file },
            Request::SyncAll { file, .. } => Io::SyncAll { file },
            Request::Allocate {
                file,
                offset,
                len,
                mode,
                ..
            } => Io::Allocate {
                file,
                offset: *offset,
                len: *len,
                mode: *mode,
            },
            Request::SetLen { file, len, .. } => Io::SetLen { file, len: *len },
            Request::Metadata { file, record, .. } => Io::Metadata {
                file,
                statx: record.as_mut_ptr(),
            },
        }
    }

    /// Takes the kernel's result of this submission (bytes, or a negated errno) and decides:
    /// `Ok` with the request to submit again (EINTR/EAGAIN, at most [`RETRIES_MAX`] times in a
    /// row; the rest of an exact transfer), or `Err` with its completion.
    ///
    /// # Errors
    ///
    /// The completion, when the request is finished (successfully or not).
    #[allow(clippy::result_large_err)]
    pub fn settle(
        mut self,
        common: &Common,
        res: i64,
    ) -> std::result::Result<InFlight, Completion> {
        if res < 0 {
            let errno = i32::try_from(-res).unwrap_or(libc::EIO);
            debug_assert_ne!(errno, libc::EFAULT, "the kernel saw a bad buffer address");
            if errno_is_transient(errno) && self.attempt < RETRIES_MAX {
                self.attempt += 1;
                self.retries += 1;
                self.torn = None;
                return Ok(self);
            }
            return Err(self.finish(common, Err(errno)));
        }
        let n = usize::try_from(res).unwrap_or(usize::MAX);
        if n > self.len {
            // More than was asked: the result belongs to another request (a backend's
            // bookkeeping bug). Fail this one loudly rather than trust any of its bytes; a
            // panic here could fire inside a queue's drop and abort the process.
            tracing::error!(
                moved = n,
                asked = self.len,
                "a completion larger than its request"
            );
            return Err(self.finish(common, Err(libc::EIO)));
        }
        if let Some(errno) = self.torn {
            // A torn write: the shortened transfer happened, and still reports its error.
            self.done = self.done.max(self.start + n);
            return Err(self.finish(common, Err(errno)));
        }
        if self.syncing {
            // The fdatasync after the write succeeded: the write's count is the result.
            let done = self.done;
            return Err(self.finish(common, Ok(done)));
        }
        if self.linked && n == self.len {
            // The whole write, and the fdatasync linked after it, are done.
            self.done = self.start + n;
            let done = self.done;
            return Err(self.finish(common, Ok(done)));
        }
        if n != self.len && self.request.write_flags().contains(WriteFlags::ATOMIC) {
            // The kernel does an atomic write whole or fails it; a short one breaks that
            // promise and cannot be resumed (the rest would not be atomic).
            tracing::error!(moved = n, asked = self.len, "a short atomic write");
            self.done = n;
            return Err(self.finish(common, Err(libc::EIO)));
        }
        if let Request::Metadata { file, record, .. } = &self.request {
            // A block device's size is not in statx: its ioctl completes the record.
            let fd = std::os::fd::AsFd::as_fd(file);
            let finished = crate::metadata::Metadata::complete_record(record, fd);
            return Err(self.finish(common, finished.map(|()| 0)));
        }
        if self.total == 0 && self.request.bufs().is_empty() {
            // A sync, an allocation or a length change: nothing to count.
            return Err(self.finish(common, Ok(0)));
        }
        if !self.request.is_exact() {
            self.done = n;
            return self.written(common);
        }
        let end = self.start + n;
        if end >= self.total {
            self.done = self.total;
            return self.written(common);
        }
        if n == 0 || end <= self.done {
            // End of file, or a write that made no progress (after resuming at an aligned
            // point below what was already done, nothing new came).
            self.done = self.done.max(end);
            return Err(self.finish_short(common));
        }
        self.done = end;
        // Resume the rest at the last aligned point: an O_DIRECT transfer that stopped short
        // of an alignment boundary (end of file) must not continue misaligned. Re-reading or
        // re-writing the bytes between that point and `done` is harmless. Inside a vectored
        // request's buffer the point is aligned too: the buffers before it have aligned
        // lengths, and a device's memory alignment never exceeds its block size.
        self.start = self.done / self.resume_align * self.resume_align;
        self.len = self.submission_len();
        self.attempt = 0;
        Ok(self)
    }

    /// A transfer that is done: its completion, or, for a write with
    /// [`WriteFlags::SYNC_DATA_AFTER`], its `fdatasync` as the next submission.
    #[allow(clippy::result_large_err)]
    fn written(mut self, common: &Common) -> std::result::Result<InFlight, Completion> {
        let flags = self.request.write_flags();
        if flags.contains(WriteFlags::SYNC_DATA_AFTER) {
            self.syncing = true;
            self.len = 0;
            self.attempt = 0;
            return Ok(self);
        }
        let done = self.done;
        Err(self.finish(common, Ok(done)))
    }

    /// Finishes an exact transfer that ended early: end of file for a read, no progress for a
    /// write.
    fn finish_short(self, common: &Common) -> Completion {
        let (kind, what) = match self.op() {
            Op::Read => (ErrorKind::UnexpectedEof, "end of file"),
            _ => (ErrorKind::WriteZero, "a write made no progress"),
        };
        let (done, total) = (self.done, self.total);
        let offset = self.request.offset().unwrap_or(0);
        let error = self
            .request
            .file()
            .error(kind, self.op())
            .with_range(offset, total as u64)
            .with_transferred(done as u64)
            .with_message(format!("{what} after {done} of {total} bytes"));
        self.complete(common, Err(error))
    }

    /// Maps the final raw result into the completion: the error's kind and context, poisoning
    /// (a failed sync, or a failed write on an `O_DSYNC` file, poisons the file; a sync that
    /// succeeded while another failed reports the poison: contract point 5).
    fn finish(self, common: &Common, raw: std::result::Result<usize, i32>) -> Completion {
        let op = self.op();
        let file = self.request.file();
        // A write that promised durability (O_DSYNC, WriteFlags::DSYNC, or a sync after it)
        // poisons the file when it fails, as a failed sync does.
        let flags = self.request.write_flags();
        let durable_write = op == Op::Write
            && (file.options().is_dsync()
                || flags.contains(WriteFlags::DSYNC)
                || flags.contains(WriteFlags::SYNC_DATA_AFTER));
        let result = match raw {
            Ok(n) => match file.poisoned() {
                Some(errno) if op.is_sync() || self.syncing || self.linked => {
                    Err(poisoned(file, op, errno))
                }
                _ => Ok(n),
            },
            Err(errno) => {
                // A write refused before it dirtied anything (a bad argument, a flag the file
                // does not take) lost no data and poisons nothing; a failed sync always does.
                let refused = matches!(
                    errno,
                    libc::EINVAL
                        | libc::EOPNOTSUPP
                        | libc::EBADF
                        | libc::EFBIG
                        | libc::EOVERFLOW
                        | libc::EROFS
                        | libc::EPERM
                        | libc::EACCES
                );
                let sync_failed = op.is_sync() || self.syncing;
                if sync_failed || (durable_write && !refused) {
                    file.poison(errno);
                }
                let mut error = Error::from_errno(errno, op).with_file(file.file_ref());
                if let Some(offset) = self.request.offset() {
                    error = error.with_range(offset, self.total as u64);
                } else if let Request::Allocate { offset, len, .. } = &self.request {
                    error = error.with_range(*offset, *len);
                }
                if self.request.is_exact() {
                    error = error.with_transferred(self.done as u64);
                }
                Err(error)
            }
        };
        self.complete(common, result)
    }

    /// Releases what the request held, records it and builds its completion.
    fn complete(mut self, common: &Common, result: Result<usize>) -> Completion {
        self.request.file().release_span(self.span);
        let exact = self.request.is_exact();
        // A read's buffers keep what arrived, in order: a plain read's count, or an exact
        // read's bytes up to where it stopped. A failed plain read leaves the length as it was.
        if self.op() == Op::Read && (result.is_ok() || exact) {
            let mut left = self.done;
            for buf in self.request.bufs_mut() {
                let filled = buf.len().min(left);
                left -= filled;
                buf.set_filled(filled);
            }
        }
        let latency = self.started.elapsed();
        common
            .metrics()
            .record(self.request.op(), &result, latency, self.retries);
        self.request.into_completion(result)
    }

    /// Fails a request without it ever reaching the kernel (shutdown, a dead completion path).
    pub fn fail(self, common: &Common, error: Error) -> Completion {
        self.complete(common, Err(error))
    }

    /// Gives up the request's buffer without freeing it: for a request the kernel may still
    /// hold when its completion can no longer be reaped (a dead reaper, a queue dropped with
    /// work in flight). Leaking is the only safe choice; the memory is lost.
    pub fn leak_buffer(&mut self) {
        for buf in self.request.bufs_mut() {
            std::mem::forget(std::mem::replace(buf, AlignedBuf::empty(1)));
        }
        // So does the iovec array a kernel may still read.
        std::mem::forget(std::mem::take(&mut self.iov.0));
        // A statx record the kernel may still write goes the same way.
        if let Request::Metadata { record, .. } = &mut self.request {
            record.leak();
        }
    }
}

/// The longest submission for `op` on `file`, and the alignment an exact transfer resumes at.
fn limits(file: &File, op: Op) -> (usize, usize) {
    let geometry = file.geometry();
    let align = if file.enforces_alignment() {
        let offset_align = if op == Op::Read {
            geometry.read_offset_align
        } else {
            geometry.offset_align
        };
        let align = geometry
            .mem_align
            .max(offset_align)
            .max(geometry.offset_align);
        usize::try_from(align).unwrap_or(1).max(1)
    } else {
        1
    };
    let io_max = usize::try_from(geometry.io_bytes_max).unwrap_or(usize::MAX);
    // At least one aligned unit, so a transfer always makes progress.
    let len_max = (io_max / align * align).max(align);
    (len_max, align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::file::OpenOptions;
    use crate::geometry::Geometry;

    fn common() -> Common {
        Common::new(EngineConfig::default())
    }

    fn file(common: &Common, options: OpenOptions, geometry: Geometry) -> File {
        let std = tempfile::tempfile().expect("tempfile");
        common.file(std, std::path::Path::new("/t"), options, geometry, 0, None)
    }

    fn geometry(align: u32) -> Geometry {
        let mut g = Geometry::FALLBACK;
        g.mem_align = align;
        g.offset_align = align;
        g.read_offset_align = align;
        g
    }

    fn rw() -> OpenOptions {
        OpenOptions::new().read(true).write(true)
    }

    fn buf(len: usize, align: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len, align).expect("alloc")
    }

    #[test]
    fn misalignment_is_typed_for_each_target() {
        let c = common();
        let f = file(&c, rw().direct(true), geometry(4096));
        let id = c.engine_id();
        assert!(validate(id, &Request::read(&f, 4096, buf(8192, 4096), 0)).is_ok());
        let e = validate(id, &Request::read(&f, 512, buf(8192, 4096), 0)).expect_err("offset");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Offset)
        );
        let mut unaligned = buf(8192 + 512, 4096);
        unaligned.truncate(4608);
        let e = validate(id, &Request::read(&f, 0, unaligned, 0)).expect_err("length");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Length)
        );
        assert_eq!((e.offset(), e.length()), (Some(0), Some(4608)));
        let e = validate(id, &Request::read(&f, 0, buf(4096, 512), 0));
        // A 512-aligned allocation may happen to be 4096-aligned; only check the kind.
        if let Err(e) = e {
            assert_eq!(
                e.misalignment().map(|m| m.target),
                Some(AlignTarget::Memory)
            );
        }
    }

    #[test]
    fn overflowing_offsets_and_wrong_engines_are_typed() {
        let c = common();
        let f = file(&c, rw(), geometry(512));
        let id = c.engine_id();
        let r = Request::write(&f, u64::MAX - 4, buf(16, 1), 0);
        assert_eq!(
            validate(id, &r).expect_err("overflow").kind(),
            ErrorKind::OutOfRange
        );
        let r = Request::write(&f, i64::MAX as u64, buf(16, 1), 0);
        assert_eq!(
            validate(id, &r).expect_err("past off_t").kind(),
            ErrorKind::OutOfRange
        );
        let r = Request::sync_data(&f, 0);
        assert_eq!(
            validate(id + 1, &r).expect_err("engine").kind(),
            ErrorKind::BadFile
        );
        c.close(&f).expect("close");
        assert_eq!(
            validate(id, &r).expect_err("closed").kind(),
            ErrorKind::BadFile
        );
    }

    #[test]
    fn submissions_are_capped_at_an_aligned_io_bytes_max() {
        let c = common();
        let mut g = geometry(65536);
        g.io_bytes_max = 0x7fff_f000;
        let f = file(&c, rw().align_min(65536), g);
        let (len_max, align) = limits(&f, Op::Read);
        assert_eq!(align, 65536);
        assert_eq!(
            len_max % 65536,
            0,
            "cap {len_max:#x} keeps the 64 KiB alignment"
        );
        assert!(len_max <= 0x7fff_f000);
    }

    #[test]
    fn exact_read_resumes_aligned_and_reports_eof_with_the_count() {
        let c = common();
        let f = file(&c, rw().direct(true), geometry(4096));
        let request = Request::read_exact(&f, 0, buf(8192, 4096), 3);
        let inflight = InFlight::admit(&c, request).expect("admitted");
        assert_eq!((inflight.offset(), inflight.len()), (0, 8192));
        // The file is 5000 bytes: the first read stops at end of file.
        let mut inflight = inflight_ok(inflight.settle(&c, 5000));
        assert_eq!(
            (inflight.offset(), inflight.len()),
            (4096, 4096),
            "resumed at the aligned point below 5000"
        );
        assert!(matches!(inflight.next(&c), Next::Submit));
        let completion = inflight.settle(&c, 904).expect_err("finished");
        let error = completion.result.expect_err("short");
        assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(error.transferred(), Some(5000));
        assert_eq!(completion.buf.map(|b| b.len()), Some(5000));
        assert_eq!(completion.user_data, 3);
    }

    #[test]
    fn vectored_requests_split_at_iov_max_resume_exactly_and_fill_buffers_in_order() {
        const MAX: usize = Request::IOV_MAX;
        let c = common();
        let f = file(&c, rw(), geometry(512));
        // MAX + 5 buffers of 512 bytes, and an empty one (index 3) that takes no entry.
        let bufs = (0..MAX + 6)
            .map(|i| buf(if i == 3 { 0 } else { 512 }, 512))
            .collect();
        let mut inflight =
            InFlight::admit(&c, Request::read_vectored(&f, 4096, bufs, 5)).expect("admitted");
        assert_eq!(inflight.len(), MAX * 512, "capped at IOV_MAX entries");
        match inflight.io_for(false) {
            Io::ReadVectored { offset, bufs, .. } => {
                assert_eq!((offset, bufs.len()), (4096, MAX));
                assert!(bufs.iter().all(|b| b.len() == 512));
            }
            other => panic!("expected a vectored read, got {other:?}"),
        }
        let inflight = inflight_ok(inflight.settle(&c, (MAX * 512) as i64));
        assert_eq!(
            (inflight.offset(), inflight.len()),
            (4096 + (MAX * 512) as u64, 5 * 512),
            "the rest, from the next buffer"
        );
        // A short read that stops 100 bytes into a buffer resumes inside it.
        let mut inflight = inflight_ok(inflight.settle(&c, 3 * 512 + 100));
        match inflight.io_for(false) {
            Io::ReadVectored { bufs, .. } => {
                let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
                assert_eq!(lens, [412, 512], "the rest of that buffer, then the last");
            }
            other => panic!("expected a vectored read, got {other:?}"),
        }
        let completion = inflight.settle(&c, 0).expect_err("end of file");
        let error = completion.result.expect_err("short");
        assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
        let done = MAX * 512 + 3 * 512 + 100;
        assert_eq!(error.transferred(), Some(done as u64));
        assert!(completion.buf.is_none());
        let lens: Vec<usize> = completion.bufs.iter().map(AlignedBuf::len).collect();
        assert_eq!(lens.len(), MAX + 6, "every buffer back, in order");
        assert_eq!(lens.iter().sum::<usize>(), done);
        assert_eq!(lens[3], 0);
        assert_eq!(
            &lens[MAX + 3..],
            [512, 100, 0],
            "filled in order up to the end"
        );
    }

    #[test]
    fn an_atomic_vectored_write_is_held_to_the_segment_limit() {
        let c = common();
        let mut g = geometry(4096);
        (g.atomic_write_unit_min, g.atomic_write_unit_max) = (4096, 65536);
        g.atomic_write_segments_max = 1;
        let f = file(&c, rw().direct(true), g);
        let id = c.engine_id();
        let atomic = |bufs| Request::write_vectored(&f, 0, bufs, 0).with_flags(WriteFlags::ATOMIC);
        assert!(
            validate(id, &atomic(vec![buf(8192, 4096)])).is_ok(),
            "one segment"
        );
        let e = validate(id, &atomic(vec![buf(4096, 4096), buf(4096, 4096)])).expect_err("two");
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("2 buffers"), "{e}");
    }

    #[test]
    fn every_buffer_of_a_vectored_request_is_checked_for_alignment() {
        let c = common();
        let f = file(&c, rw().direct(true), geometry(4096));
        let id = c.engine_id();
        // An empty buffer takes no iovec, so its address does not matter.
        let ok = vec![buf(4096, 4096), buf(0, 8), buf(8192, 4096)];
        assert!(validate(id, &Request::write_vectored(&f, 0, ok, 0)).is_ok());
        let mut short = buf(8192, 4096);
        short.truncate(4096 + 512);
        let bad = vec![buf(4096, 4096), short, buf(4096, 4096)];
        let e = validate(id, &Request::write_vectored(&f, 0, bad, 0)).expect_err("length");
        assert_eq!(
            e.misalignment().map(|m| (m.target, m.actual)),
            Some((AlignTarget::Length, 4608)),
            "the buffer's own length, though the total is aligned: {e}"
        );
        assert!(e.to_string().contains("buffer 1 of 3"), "{e}");
    }

    fn inflight_ok(step: std::result::Result<InFlight, Completion>) -> InFlight {
        match step {
            Ok(inflight) => inflight,
            Err(c) => panic!("expected a resubmission, got {:?}", c.result),
        }
    }

    #[test]
    fn transient_errors_are_retried_then_surface() {
        let c = common();
        let f = file(&c, rw(), geometry(512));
        let mut inflight = InFlight::admit(&c, Request::read(&f, 0, buf(16, 1), 0)).expect("ok");
        for _ in 0..RETRIES_MAX {
            inflight = inflight_ok(inflight.settle(&c, -i64::from(libc::EINTR)));
        }
        let completion = inflight
            .settle(&c, -i64::from(libc::EAGAIN))
            .expect_err("bounded");
        assert_eq!(
            completion.result.expect_err("gave up").raw_os_error(),
            Some(libc::EAGAIN)
        );
        assert_eq!(c.metrics().snapshot().read.retries, u64::from(RETRIES_MAX));
    }

    #[test]
    fn a_completion_larger_than_its_request_fails_it() {
        let c = common();
        let f = file(&c, rw(), geometry(512));
        let inflight = InFlight::admit(&c, Request::read(&f, 0, buf(16, 1), 0)).expect("ok");
        let completion = inflight.settle(&c, 4096).expect_err("finished");
        let error = completion.result.expect_err("not trusted");
        assert_eq!(error.kind(), ErrorKind::Io);
        assert_eq!(
            completion.buf.map(|b| b.len()),
            Some(16),
            "buffer handed back"
        );
    }

    #[test]
    fn sync_failure_poisons_and_sticks() {
        let c = common();
        let f = file(&c, rw(), geometry(512));
        let first = InFlight::admit(&c, Request::sync_data(&f, 0)).expect("healthy");
        let second = InFlight::admit(&c, Request::sync_all(&f, 1)).expect("healthy");
        let e = first.settle(&c, -i64::from(libc::EIO)).expect_err("done");
        assert_eq!(e.result.expect_err("fails").kind(), ErrorKind::Io);
        let refused = InFlight::admit(&c, Request::sync_data(&f, 2)).expect_err("poisoned");
        let e = refused.result.expect_err("poisoned");
        assert_eq!(
            (e.kind(), e.raw_os_error()),
            (ErrorKind::Poisoned, Some(libc::EIO))
        );
        // A sync already in flight that succeeds must still report the poison.
        let late = second.settle(&c, 0).expect_err("done");
        assert_eq!(late.result.expect_err("late").kind(), ErrorKind::Poisoned);
    }

    #[test]
    fn strict_mode_claims_at_admission_and_releases_at_completion() {
        let c = Common::new(EngineConfig {
            strict: true,
            ..EngineConfig::default()
        });
        let f = file(&c, rw(), geometry(512));
        let w = InFlight::admit(&c, Request::write(&f, 0, buf(4096, 512), 0)).expect("first");
        let clash =
            InFlight::admit(&c, Request::read(&f, 2048, buf(4096, 512), 1)).expect_err("overlap");
        assert_eq!(
            clash.result.expect_err("overlap").kind(),
            ErrorKind::Overlap
        );
        let _ = w.settle(&c, 4096).expect_err("done");
        let again = InFlight::admit(&c, Request::read(&f, 2048, buf(4096, 512), 1));
        assert!(again.is_ok(), "released at completion");
    }

    #[test]
    fn a_block_device_takes_only_aligned_zeroing_and_keeps_its_length() {
        let c = common();
        let mut g = geometry(4096);
        g.is_block_device = true;
        let f = file(&c, rw(), g);
        let id = c.engine_id();
        let allocate = |offset, len, mode| Request::allocate(&f, offset, len, mode, 0);
        for mode in [AllocateMode::Allocate, AllocateMode::KeepSize] {
            let e = validate(id, &allocate(0, 4096, mode)).expect_err("no preallocation");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
        assert!(validate(id, &allocate(8192, 4096, AllocateMode::PunchHole)).is_ok());
        let e = validate(id, &allocate(512, 4096, AllocateMode::ZeroRange)).expect_err("offset");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Offset)
        );
        let e = validate(id, &allocate(0, 512, AllocateMode::PunchHole)).expect_err("length");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Length)
        );
        let e = validate(id, &Request::set_len(&f, 0, 0)).expect_err("fixed length");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(validate(id, &Request::metadata(&f, 0)).is_ok());
    }

    #[test]
    fn strict_mode_claims_the_range_an_allocation_or_a_cut_changes() {
        let c = Common::new(EngineConfig {
            strict: true,
            ..EngineConfig::default()
        });
        let f = file(&c, rw(), geometry(512));
        let punch = Request::allocate(&f, 4096, 4096, AllocateMode::PunchHole, 0);
        let punch = InFlight::admit(&c, punch).expect("first");
        let read = Request::read(&f, 6144, buf(512, 512), 1);
        let clash = InFlight::admit(&c, read).expect_err("a read inside the hole");
        assert_eq!(
            clash.result.expect_err("overlap").kind(),
            ErrorKind::Overlap
        );
        let cut = InFlight::admit(&c, Request::set_len(&f, 1 << 20, 2)).expect("past the hole");
        let write = Request::write(&f, 2 << 20, buf(512, 512), 3);
        let clash = InFlight::admit(&c, write).expect_err("a write past the cut");
        assert_eq!(
            clash.result.expect_err("overlap").kind(),
            ErrorKind::Overlap
        );
        let done = punch.settle(&c, 0).expect_err("done");
        assert_eq!(done.result.expect("punched"), 0);
        let _ = cut.settle(&c, 0).expect_err("done");
        assert!(InFlight::admit(&c, Request::read(&f, 6144, buf(512, 512), 4)).is_ok());
    }

    #[test]
    fn validation_claims_nothing() {
        let c = Common::new(EngineConfig {
            strict: true,
            ..EngineConfig::default()
        });
        let f = file(&c, rw(), geometry(512));
        let r = Request::write(&f, 0, buf(4096, 512), 0);
        validate(c.engine_id(), &r).expect("valid");
        validate(c.engine_id(), &r).expect("still valid: nothing was claimed");
        assert!(InFlight::admit(&c, r).is_ok());
    }
}
