//! Requests, completions, and the shared layer every backend runs around the syscall:
//! validation before submission ([`prepare`]) and result mapping after it ([`finish`]).

use std::time::Instant;

use crate::buf::AlignedBuf;
use crate::error::{AlignTarget, Error, ErrorKind, Misalignment, Op, Result};
use crate::file::File;
use crate::metrics::Metrics;

/// The kind of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `pread`: fill `buf[buf_start..len]` from `offset`.
    Read,
    /// `pwrite`: write `buf[buf_start..len]` at `offset`.
    Write,
    /// `fdatasync`.
    SyncData,
    /// `fsync`.
    SyncAll,
}

impl OpKind {
    /// Every kind, in a fixed order (the index used by metrics).
    pub const ALL: [OpKind; 4] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::SyncData,
        OpKind::SyncAll,
    ];

    /// The operation named in errors.
    pub fn op(self) -> Op {
        match self {
            OpKind::Read => Op::Read,
            OpKind::Write => Op::Write,
            OpKind::SyncData => Op::SyncData,
            OpKind::SyncAll => Op::SyncAll,
        }
    }

    /// The position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the two sync kinds.
    pub fn is_sync(self) -> bool {
        matches!(self, OpKind::SyncData | OpKind::SyncAll)
    }
}

/// One operation, owning its buffer, with caller-chosen user data.
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub kind: OpKind,
    /// On which file.
    pub file: File,
    /// Byte offset in the file (ignored by syncs).
    pub offset: u64,
    /// The buffer, for reads and writes.
    pub buf: Option<AlignedBuf>,
    /// Where in the buffer the transfer starts; it ends at the buffer's length. Lets the
    /// exact-transfer loop resubmit the remainder of a short transfer without copying.
    pub buf_start: usize,
    /// Returned unchanged in the completion.
    pub user_data: u64,
}

impl Request {
    /// A read of `buf.len()` bytes at `offset`.
    pub fn read(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        Request::with_buf(OpKind::Read, file, offset, buf, user_data)
    }

    /// A write of `buf.len()` bytes at `offset`.
    pub fn write(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        Request::with_buf(OpKind::Write, file, offset, buf, user_data)
    }

    /// `fdatasync`.
    pub fn sync_data(file: &File, user_data: u64) -> Request {
        Request::sync(OpKind::SyncData, file, user_data)
    }

    /// `fsync`.
    pub fn sync_all(file: &File, user_data: u64) -> Request {
        Request::sync(OpKind::SyncAll, file, user_data)
    }

    fn with_buf(
        kind: OpKind,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
        user_data: u64,
    ) -> Request {
        Request {
            kind,
            file: file.clone(),
            offset,
            buf: Some(buf),
            buf_start: 0,
            user_data,
        }
    }

    fn sync(kind: OpKind, file: &File, user_data: u64) -> Request {
        Request {
            kind,
            file: file.clone(),
            offset: 0,
            buf: None,
            buf_start: 0,
            user_data,
        }
    }

    /// The number of bytes the request asks to transfer.
    pub fn len(&self) -> usize {
        match &self.buf {
            Some(buf) if !self.kind.is_sync() => buf.len().saturating_sub(self.buf_start),
            _ => 0,
        }
    }

    /// True when the request transfers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Completes the request with `result` without running it, handing the buffer back.
    pub fn into_completion(self, result: Result<usize>) -> Completion {
        Completion {
            user_data: self.user_data,
            kind: self.kind,
            result,
            buf: self.buf,
        }
    }
}

/// The outcome of one request: its user data, the result and the buffer, handed back.
#[derive(Debug)]
pub struct Completion {
    /// The request's user data.
    pub user_data: u64,
    /// The request's kind.
    pub kind: OpKind,
    /// Bytes transferred, or the error.
    pub result: Result<usize>,
    /// The request's buffer. For a successful read its length is `buf_start` plus the bytes
    /// read.
    pub buf: Option<AlignedBuf>,
}

/// What [`prepare`] hands the backend: the validated request's execution parameters.
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    /// Bytes to transfer in this submission: the request's length, capped at the file's
    /// `io_bytes_max` (a longer request is a short transfer the exact loop completes).
    pub len: usize,
    /// Strict-mode range token, released by [`finish`].
    pub span_token: u64,
    /// When the request was accepted, for the latency histogram.
    pub started: Instant,
}

/// Validates a request before submission (contract points 1 and 10), for engine `engine_id`.
///
/// Checks, in order: the handle belongs to this engine and is open; the buffer is present;
/// the file's access mode allows the operation; the sync poison; offset overflow; under
/// O_DIRECT, the alignment of memory, offset and length; strict-mode overlap.
///
/// # Errors
///
/// The typed error the request must complete with, carrying op, file, offset and length.
pub fn prepare(engine_id: u64, request: &Request) -> Result<Prepared> {
    let file = &request.file;
    let op = request.kind.op();
    let len = request.len();
    let with_range = |error: Error| {
        if request.kind.is_sync() {
            error
        } else {
            error.with_range(request.offset, len as u64)
        }
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
    match request.kind {
        OpKind::Read | OpKind::Write => {
            let Some(buf) = &request.buf else {
                return Err(with_range(
                    file.error(ErrorKind::InvalidInput, op)
                        .with_message("no buffer"),
                ));
            };
            if request.buf_start > buf.len() {
                return Err(with_range(
                    file.error(ErrorKind::InvalidInput, op)
                        .with_message(format!(
                            "buf_start {} is past the length {}",
                            request.buf_start,
                            buf.len()
                        )),
                ));
            }
            if request.kind == OpKind::Read && !options.is_read() {
                return Err(with_range(
                    file.error(ErrorKind::BadFile, op)
                        .with_message("the file is not open for reading"),
                ));
            }
            if request.kind == OpKind::Write && !options.is_write() {
                return Err(with_range(
                    file.error(ErrorKind::ReadOnly, op)
                        .with_message("the file is open read-only"),
                ));
            }
        }
        OpKind::SyncData | OpKind::SyncAll => {
            if let Some(errno) = file.poisoned() {
                return Err(poisoned(file, op, errno));
            }
        }
    }
    if request.kind.is_sync() {
        return Ok(Prepared {
            len: 0,
            span_token: 0,
            started: Instant::now(),
        });
    }
    // A positional offset must fit off_t, and so must its end.
    let end = request.offset.checked_add(len as u64);
    if end.is_none_or(|end| end > i64::MAX as u64) {
        return Err(with_range(
            file.error(ErrorKind::OutOfRange, op)
                .with_message("offset plus length exceeds the largest file offset (2^63 - 1)"),
        ));
    }
    let geometry = file.geometry();
    if options.is_direct() || options.alignment_min() != 0 {
        let offset_align = match request.kind {
            OpKind::Read => geometry.read_offset_align,
            _ => geometry.offset_align,
        };
        let address = request
            .buf
            .as_ref()
            .map_or(0, |b| b.as_ptr() as u64 + request.buf_start as u64);
        let checks = [
            (AlignTarget::Memory, geometry.mem_align, address),
            (AlignTarget::Offset, offset_align, request.offset),
            (AlignTarget::Length, geometry.offset_align, len as u64),
        ];
        for (target, required, actual) in checks {
            if actual % u64::from(required.max(1)) != 0 {
                let misalignment = Misalignment {
                    target,
                    required: u64::from(required),
                    actual,
                };
                return Err(with_range(
                    Error::misaligned(op, misalignment).with_file(file.file_ref()),
                ));
            }
        }
    }
    let capped = (len as u64).min(geometry.io_bytes_max) as usize;
    let span_token = file
        .claim_span(request.offset, capped as u64, request.kind == OpKind::Write)
        .map_err(|e| e.with_range(request.offset, len as u64))?;
    Ok(Prepared {
        len: capped,
        span_token,
        started: Instant::now(),
    })
}

/// Completes a request that will not run (validation failed, or the engine shut down before
/// it started) with `error`: releases its strict-mode range, records the error in `metrics`
/// and hands the buffer back.
pub fn reject(
    request: Request,
    prepared: Option<&Prepared>,
    error: Error,
    metrics: &Metrics,
) -> Completion {
    let started = prepared.map(|p| {
        request.file.release_span(p.span_token);
        p.started
    });
    let result = Err(error);
    let latency = started.map(|s| s.elapsed()).unwrap_or_default();
    metrics.record(request.kind, &result, latency, 0);
    request.into_completion(result)
}

fn poisoned(file: &File, op: Op, errno: i32) -> Error {
    file.error(ErrorKind::Poisoned, op)
        .with_errno(errno)
        .with_message("an earlier sync failed; reopen the file and recover before syncing again")
}

/// The raw outcome of one executed request: bytes transferred or an errno.
pub type RawResult = std::result::Result<usize, i32>;

/// Maps a backend's raw result into the request's typed result, after the syscall, and
/// records metrics. Shared by every backend so they agree on:
/// - the error's kind and context (op, file, offset, length);
/// - poisoning: a failed sync, or a failed write on an `O_DSYNC` file, poisons the file, and
///   a sync that succeeded while another failed reports the poison (contract point 5);
/// - the read buffer's length after the transfer.
///
/// `retries` is how many EINTR/EAGAIN the backend retried for this request.
pub fn finish(
    request: &mut Request,
    prepared: &Prepared,
    raw: RawResult,
    retries: u32,
    metrics: &Metrics,
) -> Result<usize> {
    let file = &request.file;
    file.release_span(prepared.span_token);
    let op = request.kind.op();
    let result = match raw {
        Ok(n) => {
            let n = n.min(prepared.len);
            if request.kind == OpKind::Read {
                if let Some(buf) = &mut request.buf {
                    // SAFETY: the kernel wrote `n <= prepared.len` bytes at `buf_start`, within
                    // the length the buffer had at submission.
                    unsafe { buf.set_filled(request.buf_start, n) };
                }
            }
            match file.poisoned() {
                Some(errno) if request.kind.is_sync() => Err(poisoned(file, op, errno)),
                _ => Ok(n),
            }
        }
        Err(errno) => {
            if request.kind.is_sync()
                || (request.kind == OpKind::Write && file.options().is_dsync())
            {
                file.poison(errno);
            }
            let error = Error::from_errno(errno, op).with_file(file.file_ref());
            Err(if request.kind.is_sync() {
                error
            } else {
                error.with_range(request.offset, request.len() as u64)
            })
        }
    };
    metrics.record(request.kind, &result, prepared.started.elapsed(), retries);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::OpenOptions;
    use crate::geometry::Geometry;

    fn file(options: OpenOptions, geometry: Geometry, strict: bool) -> File {
        let std = tempfile::tempfile().expect("tempfile");
        File::new(
            7,
            std,
            std::path::Path::new("/t"),
            options,
            geometry,
            strict,
            0,
        )
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

    #[test]
    fn misalignment_is_typed_for_each_target() {
        let f = file(rw().direct(true), geometry(4096), false);
        let buf = AlignedBuf::zeroed(8192, 4096).expect("alloc");
        let mut r = Request::read(&f, 4096, buf, 0);
        assert!(prepare(7, &r).is_ok());
        r.offset = 512;
        let e = prepare(7, &r).expect_err("offset");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Offset)
        );
        r.offset = 0;
        r.buf_start = 512;
        let e = prepare(7, &r).expect_err("memory");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Memory)
        );
        r.buf_start = 0;
        if let Some(b) = r.buf.as_mut() {
            b.truncate(4096 + 512);
        }
        let e = prepare(7, &r).expect_err("length");
        assert_eq!(
            e.misalignment().map(|m| m.target),
            Some(AlignTarget::Length)
        );
        assert_eq!(e.offset(), Some(0));
        assert_eq!(e.length(), Some(4608));
    }

    #[test]
    fn overflowing_offsets_and_wrong_engines_are_typed() {
        let f = file(rw(), geometry(512), false);
        let buf = AlignedBuf::zeroed(16, 1).expect("alloc");
        let r = Request::write(&f, u64::MAX - 4, buf, 0);
        assert_eq!(
            prepare(7, &r).expect_err("overflow").kind(),
            ErrorKind::OutOfRange
        );
        let buf = AlignedBuf::zeroed(16, 1).expect("alloc");
        let r = Request::write(&f, i64::MAX as u64, buf, 0);
        assert_eq!(
            prepare(7, &r).expect_err("past off_t").kind(),
            ErrorKind::OutOfRange
        );
        let r = Request::sync_data(&f, 0);
        assert_eq!(
            prepare(8, &r).expect_err("engine").kind(),
            ErrorKind::BadFile
        );
        f.mark_closed(7).expect("close");
        assert_eq!(
            prepare(7, &r).expect_err("closed").kind(),
            ErrorKind::BadFile
        );
    }

    #[test]
    fn long_requests_are_capped_at_io_bytes_max() {
        let mut g = geometry(512);
        g.io_bytes_max = 4096;
        let f = file(rw(), g, false);
        let r = Request::read(&f, 0, AlignedBuf::zeroed(10_000, 1).expect("alloc"), 0);
        assert_eq!(prepare(7, &r).expect("valid").len, 4096);
    }

    #[test]
    fn sync_failure_poisons_and_sticks() {
        let metrics = Metrics::default();
        let f = file(rw(), geometry(512), false);
        let mut r = Request::sync_data(&f, 0);
        let p = prepare(7, &r).expect("healthy");
        let e = finish(&mut r, &p, Err(libc::EIO), 0, &metrics).expect_err("fails");
        assert_eq!(e.kind(), ErrorKind::Io);
        let e = prepare(7, &r).expect_err("poisoned");
        assert_eq!(e.kind(), ErrorKind::Poisoned);
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // A sync that was already in flight and succeeds must still report the poison.
        let mut other = Request::sync_all(&f, 1);
        let e = finish(&mut other, &p, Ok(0), 0, &metrics).expect_err("late success");
        assert_eq!(e.kind(), ErrorKind::Poisoned);
    }

    #[test]
    fn strict_mode_rejects_overlap_until_released() {
        let metrics = Metrics::default();
        let f = file(rw(), geometry(512), true);
        let buf = || AlignedBuf::zeroed(4096, 512).expect("alloc");
        let mut w = Request::write(&f, 0, buf(), 0);
        let p = prepare(7, &w).expect("first");
        let r = Request::read(&f, 2048, buf(), 1);
        assert_eq!(
            prepare(7, &r).expect_err("overlap").kind(),
            ErrorKind::Overlap
        );
        let other = Request::read(&f, 4096, buf(), 2);
        let q = prepare(7, &other).expect("disjoint is fine");
        finish(&mut w, &p, Ok(4096), 0, &metrics).expect("done");
        let p2 = prepare(7, &r).expect("released");
        f.release_span(p2.span_token);
        f.release_span(q.span_token);
    }
}
