//! What a caller asks of an engine ([`Request`]) and what comes back ([`Completion`]).
//!
//! A request is an enum of operations, so a read without a buffer or a sync with an offset
//! cannot be written. Every buffer goes in by value and comes back in the completion.

use crate::buf::AlignedBuf;
use crate::error::{Op, Result};
use crate::file::File;
use crate::metadata::{AllocateMode, Metadata, StatxBuf};

/// One operation on a file, owning its buffers, with caller-chosen user data that comes back
/// unchanged in the [`Completion`].
///
/// The exact variants ([`Request::ReadExact`], [`Request::WriteAll`] and the vectored
/// [`Request::ReadVectored`], [`Request::WriteVectored`]) are resumed inside the engine after
/// short transfers until every buffer is done, so one request is one completion either way.
///
/// # Examples
///
/// ```
/// # fn demo(file: &engine_core::File) -> engine_core::Result<()> {
/// use engine_core::{AlignedBuf, Op, Request};
///
/// let request = Request::read(file, 4096, AlignedBuf::zeroed(4096, 4096)?, 7);
/// assert_eq!(request.op(), Op::Read);
/// assert_eq!(request.user_data(), 7);
/// assert_eq!(request.len(), 4096);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Request {
    /// Reads up to `buf.len()` bytes at `offset`; the completion's count may be short (0 at or
    /// past end of file), and the buffer's length becomes the count.
    Read {
        /// The file.
        file: File,
        /// Byte offset in the file.
        offset: u64,
        /// Where the data goes; its length is how much to read.
        buf: AlignedBuf,
        /// Returned in the completion.
        user_data: u64,
    },
    /// Fills all of `buf` from `offset`, resuming short reads. End of file first is
    /// [`crate::ErrorKind::UnexpectedEof`], with the bytes read in
    /// [`crate::Error::transferred`] and the buffer's length set to them.
    ReadExact {
        /// The file.
        file: File,
        /// Byte offset in the file.
        offset: u64,
        /// Where the data goes; its length is how much to read.
        buf: AlignedBuf,
        /// Returned in the completion.
        user_data: u64,
    },
    /// Writes `buf` at `offset`; the completion's count may be short.
    Write {
        /// The file.
        file: File,
        /// Byte offset in the file.
        offset: u64,
        /// The data.
        buf: AlignedBuf,
        /// Per-write durability and atomicity ([`Request::with_flags`]).
        flags: WriteFlags,
        /// Returned in the completion.
        user_data: u64,
    },
    /// Writes all of `buf` at `offset`, resuming short writes. A write that makes no progress
    /// is [`crate::ErrorKind::WriteZero`].
    WriteAll {
        /// The file.
        file: File,
        /// Byte offset in the file.
        offset: u64,
        /// The data.
        buf: AlignedBuf,
        /// Per-write durability and atomicity ([`Request::with_flags`]).
        flags: WriteFlags,
        /// Returned in the completion.
        user_data: u64,
    },
    /// Fills every buffer of `bufs` in order from `offset` (`preadv`), as one read over their
    /// concatenation, resuming short reads: exact, like [`Request::ReadExact`]. A request of
    /// more than [`Request::IOV_MAX`] buffers is split into submissions of at most that many. End of
    /// file first is [`crate::ErrorKind::UnexpectedEof`], with the bytes read in
    /// [`crate::Error::transferred`] and each buffer's length set to what it received. The
    /// buffers come back in [`Completion::bufs`].
    ReadVectored {
        /// The file.
        file: File,
        /// Byte offset in the file of the first buffer's first byte.
        offset: u64,
        /// Where the data goes, in order; their lengths are how much to read.
        bufs: Vec<AlignedBuf>,
        /// Returned in the completion.
        user_data: u64,
    },
    /// Writes every buffer of `bufs` in order from `offset` (`pwritev2`), resuming short
    /// writes: exact, like [`Request::WriteAll`], split as [`Request::ReadVectored`] is.
    WriteVectored {
        /// The file.
        file: File,
        /// Byte offset in the file of the first buffer's first byte.
        offset: u64,
        /// The data, in order.
        bufs: Vec<AlignedBuf>,
        /// Per-write durability and atomicity ([`Request::with_flags`]).
        flags: WriteFlags,
        /// Returned in the completion.
        user_data: u64,
    },
    /// `fdatasync`: makes every write that completed before it was submitted durable.
    SyncData {
        /// The file.
        file: File,
        /// Returned in the completion.
        user_data: u64,
    },
    /// `fsync`: as [`Request::SyncData`], plus all metadata.
    SyncAll {
        /// The file.
        file: File,
        /// Returned in the completion.
        user_data: u64,
    },
    /// `fallocate` of `[offset, offset + len)` in `mode`; the completion's count is 0.
    Allocate {
        /// The file (open for writing).
        file: File,
        /// Start of the range.
        offset: u64,
        /// Length of the range (at least 1).
        len: u64,
        /// What to do to the range.
        mode: AllocateMode,
        /// Returned in the completion.
        user_data: u64,
    },
    /// `ftruncate`: sets the file's length to `len`, cutting or extending with zeros; the
    /// completion's count is 0. Durable after a [`Request::SyncAll`].
    SetLen {
        /// The file (open for writing; not a block device).
        file: File,
        /// The new length.
        len: u64,
        /// Returned in the completion.
        user_data: u64,
    },
    /// `statx`: the completion carries the file's [`Metadata`] in [`Completion::metadata`].
    Metadata {
        /// The file.
        file: File,
        /// The record the kernel fills (make the request with [`Request::metadata`]).
        record: StatxBuf,
        /// Returned in the completion.
        user_data: u64,
    },
}

impl Request {
    /// The most buffers one vectored submission takes (the kernel's `UIO_MAXIOV`, which
    /// `preadv`, io_uring and AIO all enforce); a vectored request of more is split into
    /// submissions of at most this many.
    pub const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

    /// A read of up to `buf.len()` bytes at `offset`.
    pub fn read(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        let file = file.clone();
        Request::Read {
            file,
            offset,
            buf,
            user_data,
        }
    }

    /// A read of exactly `buf.len()` bytes at `offset`.
    pub fn read_exact(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        let file = file.clone();
        Request::ReadExact {
            file,
            offset,
            buf,
            user_data,
        }
    }

    /// A write of `buf` at `offset`.
    pub fn write(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        let file = file.clone();
        Request::Write {
            file,
            offset,
            buf,
            flags: WriteFlags::NONE,
            user_data,
        }
    }

    /// A write of all of `buf` at `offset`.
    pub fn write_all(file: &File, offset: u64, buf: AlignedBuf, user_data: u64) -> Request {
        let file = file.clone();
        Request::WriteAll {
            file,
            offset,
            buf,
            flags: WriteFlags::NONE,
            user_data,
        }
    }

    /// A read filling every buffer of `bufs` in order from `offset`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(file: &engine_core::File) -> engine_core::Result<()> {
    /// use engine_core::{AlignedBuf, Op, Request};
    ///
    /// // A 512-byte header and a 4 KiB body, read from offset 0 in one request.
    /// let bufs = vec![AlignedBuf::zeroed(512, 512)?, AlignedBuf::zeroed(4096, 512)?];
    /// let request = Request::read_vectored(file, 0, bufs, 9);
    /// assert_eq!((request.op(), request.len()), (Op::Read, 4608));
    /// assert!(request.is_exact());
    /// # Ok(()) }
    /// ```
    pub fn read_vectored(
        file: &File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
        user_data: u64,
    ) -> Request {
        let file = file.clone();
        Request::ReadVectored {
            file,
            offset,
            bufs,
            user_data,
        }
    }

    /// A write of every buffer of `bufs` in order from `offset`.
    pub fn write_vectored(
        file: &File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
        user_data: u64,
    ) -> Request {
        let file = file.clone();
        Request::WriteVectored {
            file,
            offset,
            bufs,
            flags: WriteFlags::NONE,
            user_data,
        }
    }

    /// `fdatasync`.
    pub fn sync_data(file: &File, user_data: u64) -> Request {
        let file = file.clone();
        Request::SyncData { file, user_data }
    }

    /// `fsync`.
    pub fn sync_all(file: &File, user_data: u64) -> Request {
        let file = file.clone();
        Request::SyncAll { file, user_data }
    }

    /// Sets a write's [`WriteFlags`] (other requests come back unchanged: they take none).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo(file: &engine_core::File) -> engine_core::Result<()> {
    /// use engine_core::{AlignedBuf, Request, WriteFlags};
    ///
    /// let record = AlignedBuf::from_slice(b"commit", 512)?;
    /// let request = Request::write_all(file, 0, record, 1).with_flags(WriteFlags::DSYNC);
    /// assert_eq!(request.write_flags(), WriteFlags::DSYNC);
    /// # Ok(()) }
    /// ```
    pub fn with_flags(mut self, new: WriteFlags) -> Request {
        if let Request::Write { flags, .. }
        | Request::WriteAll { flags, .. }
        | Request::WriteVectored { flags, .. } = &mut self
        {
            *flags = new;
        }
        self
    }

    /// A write's flags; [`WriteFlags::NONE`] for other requests.
    pub fn write_flags(&self) -> WriteFlags {
        match self {
            Request::Write { flags, .. }
            | Request::WriteAll { flags, .. }
            | Request::WriteVectored { flags, .. } => *flags,
            _ => WriteFlags::NONE,
        }
    }

    /// `fallocate` of `[offset, offset + len)` in `mode`.
    pub fn allocate(
        file: &File,
        offset: u64,
        len: u64,
        mode: AllocateMode,
        user_data: u64,
    ) -> Request {
        let file = file.clone();
        Request::Allocate {
            file,
            offset,
            len,
            mode,
            user_data,
        }
    }

    /// `ftruncate` to `len`.
    pub fn set_len(file: &File, len: u64, user_data: u64) -> Request {
        let file = file.clone();
        Request::SetLen {
            file,
            len,
            user_data,
        }
    }

    /// `statx` of the file.
    pub fn metadata(file: &File, user_data: u64) -> Request {
        let file = file.clone();
        Request::Metadata {
            file,
            record: StatxBuf::new(),
            user_data,
        }
    }

    /// The operation: [`Op::Read`] for every read, [`Op::Write`] for every write.
    pub fn op(&self) -> Op {
        match self {
            Request::Read { .. } | Request::ReadExact { .. } | Request::ReadVectored { .. } => {
                Op::Read
            }
            Request::Write { .. } | Request::WriteAll { .. } | Request::WriteVectored { .. } => {
                Op::Write
            }
            Request::SyncData { .. } => Op::SyncData,
            Request::SyncAll { .. } => Op::SyncAll,
            Request::Allocate { .. } => Op::Allocate,
            Request::SetLen { .. } => Op::SetLen,
            Request::Metadata { .. } => Op::Metadata,
        }
    }

    /// The byte range a request changes or reads, for strict mode's overlap check and for
    /// wrappers that track file contents: a transfer's range, an allocation's range, or from a
    /// new length to the end of the largest file. `None` for syncs and metadata.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Request::Allocate { offset, len, .. } => Some((*offset, *len)),
            Request::SetLen { len, .. } => Some((*len, (i64::MAX as u64).saturating_sub(*len))),
            _ => self.offset().map(|offset| (offset, self.len() as u64)),
        }
    }

    /// True for the variants resumed after short transfers.
    pub fn is_exact(&self) -> bool {
        matches!(
            self,
            Request::ReadExact { .. }
                | Request::WriteAll { .. }
                | Request::ReadVectored { .. }
                | Request::WriteVectored { .. }
        )
    }

    /// The file.
    pub fn file(&self) -> &File {
        match self {
            Request::Read { file, .. }
            | Request::ReadExact { file, .. }
            | Request::Write { file, .. }
            | Request::WriteAll { file, .. }
            | Request::ReadVectored { file, .. }
            | Request::WriteVectored { file, .. }
            | Request::SyncData { file, .. }
            | Request::SyncAll { file, .. }
            | Request::Allocate { file, .. }
            | Request::SetLen { file, .. }
            | Request::Metadata { file, .. } => file,
        }
    }

    /// The user data.
    pub fn user_data(&self) -> u64 {
        match self {
            Request::Read { user_data, .. }
            | Request::ReadExact { user_data, .. }
            | Request::Write { user_data, .. }
            | Request::WriteAll { user_data, .. }
            | Request::ReadVectored { user_data, .. }
            | Request::WriteVectored { user_data, .. }
            | Request::SyncData { user_data, .. }
            | Request::SyncAll { user_data, .. }
            | Request::Allocate { user_data, .. }
            | Request::SetLen { user_data, .. }
            | Request::Metadata { user_data, .. } => *user_data,
        }
    }

    /// Replaces the user data, returning the old one (for wrappers that tag requests).
    pub fn replace_user_data(&mut self, new: u64) -> u64 {
        match self {
            Request::Read { user_data, .. }
            | Request::ReadExact { user_data, .. }
            | Request::Write { user_data, .. }
            | Request::WriteAll { user_data, .. }
            | Request::ReadVectored { user_data, .. }
            | Request::WriteVectored { user_data, .. }
            | Request::SyncData { user_data, .. }
            | Request::SyncAll { user_data, .. }
            | Request::Allocate { user_data, .. }
            | Request::SetLen { user_data, .. }
            | Request::Metadata { user_data, .. } => std::mem::replace(user_data, new),
        }
    }

    /// The byte offset of a read or write; `None` for the other operations.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Request::Read { offset, .. }
            | Request::ReadExact { offset, .. }
            | Request::Write { offset, .. }
            | Request::WriteAll { offset, .. }
            | Request::ReadVectored { offset, .. }
            | Request::WriteVectored { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The buffer of a single-buffer read or write; `None` for the other operations (a
    /// vectored request's are in [`Request::bufs`]).
    pub fn buf(&self) -> Option<&AlignedBuf> {
        match self {
            Request::Read { buf, .. }
            | Request::ReadExact { buf, .. }
            | Request::Write { buf, .. }
            | Request::WriteAll { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// The buffer of a single-buffer read or write, writable; `None` for the other
    /// operations.
    pub fn buf_mut(&mut self) -> Option<&mut AlignedBuf> {
        match self {
            Request::Read { buf, .. }
            | Request::ReadExact { buf, .. }
            | Request::Write { buf, .. }
            | Request::WriteAll { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// Every buffer of a read or write, in order: one for the single-buffer variants, all of
    /// a vectored request's; none for the other operations.
    pub fn bufs(&self) -> &[AlignedBuf] {
        match self {
            Request::ReadVectored { bufs, .. } | Request::WriteVectored { bufs, .. } => bufs,
            _ => self.buf().map_or(&[], std::slice::from_ref),
        }
    }

    /// Every buffer of a read or write, in order, writable.
    pub fn bufs_mut(&mut self) -> &mut [AlignedBuf] {
        match self {
            Request::ReadVectored { bufs, .. } | Request::WriteVectored { bufs, .. } => bufs,
            _ => self.buf_mut().map_or(&mut [], std::slice::from_mut),
        }
    }

    /// True for the requests over several buffers ([`Request::ReadVectored`],
    /// [`Request::WriteVectored`]).
    pub fn is_vectored(&self) -> bool {
        matches!(
            self,
            Request::ReadVectored { .. } | Request::WriteVectored { .. }
        )
    }

    /// The number of bytes the request asks to transfer: the sum of its buffers' lengths (0
    /// for operations without a buffer).
    pub fn len(&self) -> usize {
        match self {
            Request::ReadVectored { bufs, .. } | Request::WriteVectored { bufs, .. } => {
                bufs.iter().map(AlignedBuf::len).sum()
            }
            _ => self.buf().map_or(0, AlignedBuf::len),
        }
    }

    /// True when the request transfers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Completes the request with `result`, handing the buffer back (and, for a metadata
    /// request that succeeded, its answer: only call it so once the kernel is done).
    pub fn into_completion(self, result: Result<usize>) -> Completion {
        let op = self.op();
        let user_data = self.user_data();
        let (buf, bufs, metadata) = match self {
            Request::Read { buf, .. }
            | Request::ReadExact { buf, .. }
            | Request::Write { buf, .. }
            | Request::WriteAll { buf, .. } => (Some(buf), Vec::new(), None),
            Request::ReadVectored { bufs, .. } | Request::WriteVectored { bufs, .. } => {
                (None, bufs, None)
            }
            // Only a successful statx filled the record.
            Request::Metadata { record, .. } if result.is_ok() => {
                (None, Vec::new(), Some(Metadata::from_record(record)))
            }
            _ => (None, Vec::new(), None),
        };
        Completion {
            user_data,
            op,
            result,
            buf,
            bufs,
            metadata,
        }
    }
}

/// Per-write durability, ordering and atomicity, combined with `|`.
///
/// - [`WriteFlags::DSYNC`]: the write is durable when it completes (`RWF_DSYNC`, a per-write
///   `O_DSYNC`; FUA on devices that have it), with no separate sync. A failed durable write
///   poisons the file as a failed sync does.
/// - [`WriteFlags::SYNC_DATA_AFTER`]: an `fdatasync` runs after the write has completed and
///   before the request completes, so the completion means written and synced. A failed sync
///   poisons the file.
/// - Poisoning: a sync, and the sync of a `SYNC_DATA_AFTER` write, report that earlier
///   writes were lost ([`crate::ErrorKind::Poisoned`] after a failed sync), so a
///   `SYNC_DATA_AFTER` write on a poisoned file is refused. A `DSYNC` write promises only its
///   own data, so it runs on a poisoned file; a failure of either kind poisons the file unless
///   the kernel refused the write before it dirtied anything (`EINVAL`, `EOPNOTSUPP`, ...).
/// - [`WriteFlags::ATOMIC`]: the write is untorn (`RWF_ATOMIC`, Linux 6.11+): after a crash
///   the range holds all of it or none of it. It needs an `O_DIRECT` file whose
///   [`crate::Geometry`] has atomic-write limits, a power-of-two length within them and an
///   offset aligned to the length; anything else is refused before submission. Atomic is not
///   durable: combine it with `DSYNC` or sync afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteFlags(u8);

impl WriteFlags {
    /// No flags: a plain write.
    pub const NONE: WriteFlags = WriteFlags(0);
    /// Durable at completion (`RWF_DSYNC`).
    pub const DSYNC: WriteFlags = WriteFlags(1);
    /// Untorn (`RWF_ATOMIC`).
    pub const ATOMIC: WriteFlags = WriteFlags(2);
    /// Followed by an `fdatasync` before the request completes.
    pub const SYNC_DATA_AFTER: WriteFlags = WriteFlags(4);

    /// True when every flag of `other` is set.
    pub fn contains(self, other: WriteFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The `RWF_*` bits the kernel takes with the write (`pwritev2` flags, io_uring's
    /// `rw_flags`, AIO's `aio_rw_flags`).
    pub fn rw_flags(self) -> i32 {
        let mut bits = 0;
        if self.contains(WriteFlags::DSYNC) {
            bits |= libc::RWF_DSYNC;
        }
        if self.contains(WriteFlags::ATOMIC) {
            bits |= libc::RWF_ATOMIC;
        }
        bits
    }
}

impl std::ops::BitOr for WriteFlags {
    type Output = WriteFlags;
    fn bitor(self, other: WriteFlags) -> WriteFlags {
        WriteFlags(self.0 | other.0)
    }
}

/// The outcome of one request: its user data, the result and the buffer, handed back.
#[derive(Debug)]
pub struct Completion {
    /// The request's user data.
    pub user_data: u64,
    /// The request's operation.
    pub op: Op,
    /// Bytes transferred (for exact requests, the whole buffer), or the error.
    pub result: Result<usize>,
    /// The request's buffer: always there for single-buffer reads and writes, `None` for the
    /// other operations. After a read its length is the number of bytes read.
    pub buf: Option<AlignedBuf>,
    /// A vectored request's buffers, in order; empty for the other operations. After a read
    /// each one's length is the number of bytes it received.
    pub bufs: Vec<AlignedBuf>,
    /// A successful [`Request::Metadata`]'s answer; `None` otherwise.
    pub metadata: Option<Metadata>,
}

impl Completion {
    /// Every buffer that came back, in order: a single-buffer request's, or a vectored
    /// request's; none for the other operations.
    pub fn buffers(&self) -> impl Iterator<Item = &AlignedBuf> {
        self.buf.iter().chain(&self.bufs)
    }
}
