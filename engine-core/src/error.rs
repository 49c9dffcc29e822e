//! The one error type every engine returns, and the errno mapping shared by every backend.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A result whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form callers can match on.
///
/// The kind is decided once, by [`ErrorKind::from_errno`] for OS errors and by the shared
/// validation layer for requests rejected before submission, so every backend reports the same
/// kind for the same failure.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Memory address, offset or length is not a multiple of the file's required alignment.
    /// Always raised before submission, never by the kernel's `EINVAL`.
    Misaligned,
    /// The offset, or offset plus length, does not fit the file's offset range (`EFBIG`,
    /// `EOVERFLOW`, or an overflow detected before submission).
    OutOfRange,
    /// `read_exact_at` reached end of file before the buffer was full.
    UnexpectedEof,
    /// A write transferred zero bytes, so `write_all_at` could make no progress.
    WriteZero,
    /// The device or quota is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The device reported an I/O error (`EIO`).
    Io,
    /// An earlier sync on this file failed, so every later sync fails until it is reopened.
    Poisoned,
    /// The backend, kernel or filesystem cannot do this (`ENOSYS`, `EOPNOTSUPP`, O_DIRECT on a
    /// filesystem without it).
    Unsupported,
    /// The file handle is closed, belongs to another engine, or was opened without the access
    /// this operation needs (`EBADF`).
    BadFile,
    /// A write or sync to a file opened read-only, or on a read-only filesystem (`EROFS`).
    ReadOnly,
    /// The engine has shut down, or its completion path died.
    Shutdown,
    /// An argument the engine cannot accept (`EINVAL` after validation, a bad option value).
    InvalidInput,
    /// The kernel refused the operation (`EPERM`, `EACCES`).
    PermissionDenied,
    /// The path does not exist (`ENOENT`).
    NotFound,
    /// The path exists, and the operation wanted to create it (`EEXIST`, `create_new`).
    AlreadyExists,
    /// Memory or a memory bound ran out (`ENOMEM`, the page pool's limit).
    NoMemory,
    /// Strict mode saw a write overlapping another write or read still in flight.
    Overlap,
    /// An OS error with no more specific kind; see [`Error::raw_os_error`].
    Other,
}

impl ErrorKind {
    /// Maps an errno to the kind every backend reports for it.
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::EIO => ErrorKind::Io,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EBADF => ErrorKind::BadFile,
            libc::EROFS => ErrorKind::ReadOnly,
            libc::EPERM | libc::EACCES => ErrorKind::PermissionDenied,
            libc::ENOENT => ErrorKind::NotFound,
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::EINVAL => ErrorKind::InvalidInput,
            libc::ENOSYS | libc::EOPNOTSUPP => ErrorKind::Unsupported,
            libc::ENOMEM => ErrorKind::NoMemory,
            libc::EFBIG | libc::EOVERFLOW => ErrorKind::OutOfRange,
            _ => ErrorKind::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Misaligned => "misaligned",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::UnexpectedEof => "unexpected end of file",
            ErrorKind::WriteZero => "write made no progress",
            ErrorKind::NoSpace => "no space left",
            ErrorKind::Io => "I/O error",
            ErrorKind::Poisoned => "poisoned by an earlier sync failure",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::BadFile => "bad file",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Shutdown => "engine shut down",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::NoMemory => "out of memory",
            ErrorKind::Overlap => "overlapping operation in flight",
            ErrorKind::Other => "OS error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation: what a request does, and what an error belongs to.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A positional read.
    Read,
    /// A positional write.
    Write,
    /// `fdatasync`.
    SyncData,
    /// `fsync`.
    SyncAll,
    /// `fallocate`: preallocation, punching a hole, zeroing a range.
    Allocate,
    /// `ftruncate`: setting a file's length.
    SetLen,
    /// `statx`: a file's length, blocks and times.
    Metadata,
    /// Opening a file.
    Open,
    /// Closing a file.
    Close,
    /// Creating an engine or a queue.
    Setup,
    /// Allocating a buffer.
    Alloc,
    /// Handing queued requests to the kernel.
    Submit,
    /// Waiting for completions.
    Wait,
}

impl Op {
    /// The operations a request can carry, in the order metrics index them.
    pub const IO: [Op; 7] = [
        Op::Read,
        Op::Write,
        Op::SyncData,
        Op::SyncAll,
        Op::Allocate,
        Op::SetLen,
        Op::Metadata,
    ];

    /// True for the two syncs.
    pub fn is_sync(self) -> bool {
        matches!(self, Op::SyncData | Op::SyncAll)
    }

    /// The position in [`Op::IO`], for the request operations.
    pub(crate) fn io_index(self) -> Option<usize> {
        Op::IO.iter().position(|&op| op == self)
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::SyncData => "sync_data",
            Op::SyncAll => "sync_all",
            Op::Allocate => "allocate",
            Op::SetLen => "set_len",
            Op::Metadata => "metadata",
            Op::Open => "open",
            Op::Close => "close",
            Op::Setup => "setup",
            Op::Alloc => "alloc",
            Op::Submit => "submit",
            Op::Wait => "wait",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a request broke the alignment rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlignTarget {
    /// The buffer's memory address.
    Memory,
    /// The file offset.
    Offset,
    /// The transfer length.
    Length,
}

/// The details of a [`ErrorKind::Misaligned`] error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Misalignment {
    /// What was misaligned.
    pub target: AlignTarget,
    /// The alignment the file requires, in bytes.
    pub required: u64,
    /// The value that broke it (an address, offset or length).
    pub actual: u64,
}

/// Identifies a file in an error: the engine-wide file number and, when known, its path.
#[derive(Clone, Debug)]
pub struct FileRef {
    /// The file's number, unique within its engine.
    pub id: u64,
    /// The path it was opened with.
    pub path: Option<Arc<Path>>,
}

#[derive(Clone, Debug)]
struct Inner {
    kind: ErrorKind,
    op: Op,
    file: Option<FileRef>,
    offset: Option<u64>,
    len: Option<u64>,
    errno: Option<i32>,
    misalignment: Option<Misalignment>,
    /// Bytes transferred before the failure (exact transfers).
    transferred: Option<u64>,
    message: Cow<'static, str>,
}

/// An engine error: the operation, the file, offset and length, the OS error, and a kind.
///
/// It is boxed so that `Result<usize, Error>` stays two words; building one allocates, which
/// only happens on the failure path.
#[derive(Clone)]
pub struct Error(Box<Inner>);

impl Error {
    /// The error of every operation asked of an engine that has shut down.
    pub fn shutdown(op: Op) -> Error {
        Error::new(ErrorKind::Shutdown, op, "the engine has shut down")
    }

    /// Creates an error of `kind` for `op` with a message saying why.
    pub fn new(kind: ErrorKind, op: Op, message: impl Into<Cow<'static, str>>) -> Error {
        Error(Box::new(Inner {
            kind,
            op,
            file: None,
            offset: None,
            len: None,
            errno: None,
            misalignment: None,
            transferred: None,
            message: message.into(),
        }))
    }

    /// Creates an error from an errno, with the kind from [`ErrorKind::from_errno`].
    pub fn from_errno(errno: i32, op: Op) -> Error {
        let mut error = Error::new(ErrorKind::from_errno(errno), op, "");
        error.0.errno = Some(errno);
        error
    }

    /// Creates an error from a `std::io::Error`, keeping its errno when it has one.
    pub fn from_io(error: &std::io::Error, op: Op) -> Error {
        match error.raw_os_error() {
            Some(errno) => Error::from_errno(errno, op),
            None => Error::new(ErrorKind::Other, op, error.to_string()),
        }
    }

    /// Creates a [`ErrorKind::Misaligned`] error.
    pub fn misaligned(op: Op, misalignment: Misalignment) -> Error {
        let mut error = Error::new(ErrorKind::Misaligned, op, "");
        error.0.misalignment = Some(misalignment);
        error
    }

    /// Attaches the file.
    pub fn with_file(mut self, file: FileRef) -> Error {
        self.0.file = Some(file);
        self
    }

    /// Attaches the offset and length of the request.
    pub fn with_range(mut self, offset: u64, len: u64) -> Error {
        self.0.offset = Some(offset);
        self.0.len = Some(len);
        self
    }

    /// Attaches an errno (for kinds decided by the engine, such as [`ErrorKind::Poisoned`]).
    pub fn with_errno(mut self, errno: i32) -> Error {
        self.0.errno = Some(errno);
        self
    }

    /// Attaches the number of bytes an exact transfer moved before it failed.
    pub fn with_transferred(mut self, bytes: u64) -> Error {
        self.0.transferred = Some(bytes);
        self
    }

    /// Replaces the message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Error {
        self.0.message = message.into();
        self
    }

    /// The kind to match on.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> Op {
        self.0.op
    }

    /// The file, when the error belongs to one.
    pub fn file(&self) -> Option<&FileRef> {
        self.0.file.as_ref()
    }

    /// The request's offset, when the error belongs to a positional request.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// The request's length, when the error belongs to a positional request.
    pub fn length(&self) -> Option<u64> {
        self.0.len
    }

    /// The OS error number, when there is one. For [`ErrorKind::Poisoned`] it is the errno of
    /// the sync failure that poisoned the file.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.errno
    }

    /// For a failed exact transfer (`read_exact_at`, `write_all_at`): the bytes moved before
    /// it failed. For [`ErrorKind::UnexpectedEof`], the bytes up to end of file.
    pub fn transferred(&self) -> Option<u64> {
        self.0.transferred
    }

    /// The misalignment, for [`ErrorKind::Misaligned`].
    pub fn misalignment(&self) -> Option<Misalignment> {
        self.0.misalignment
    }

    /// The message saying why, possibly empty.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Display form carries every field; Debug repeats it with the kind for matching.
        write!(f, "Error({:?}: {})", self.0.kind, self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        write!(f, "{}", inner.op)?;
        if let Some(len) = inner.len {
            write!(f, " of {len} bytes")?;
        }
        if let Some(offset) = inner.offset {
            write!(f, " at offset {offset}")?;
        }
        if let Some(file) = &inner.file {
            write!(f, " on file #{}", file.id)?;
            if let Some(path) = &file.path {
                write!(f, " ({})", path.display())?;
            }
        }
        write!(f, ": {}", inner.kind)?;
        if let Some(m) = inner.misalignment {
            let target = match m.target {
                AlignTarget::Memory => "memory address",
                AlignTarget::Offset => "offset",
                AlignTarget::Length => "length",
            };
            write!(
                f,
                " ({target} {:#x} is not a multiple of {})",
                m.actual, m.required
            )?;
        }
        if let Some(errno) = inner.errno {
            write!(f, " ({})", std::io::Error::from_raw_os_error(errno))?;
        }
        if !inner.message.is_empty() {
            write!(f, ": {}", inner.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    /// Keeps the whole error as the source, so `downcast_ref::<Error>()` gets it back.
    fn from(error: Error) -> std::io::Error {
        use std::io::ErrorKind as Io;
        let kind = match error.kind() {
            ErrorKind::Misaligned | ErrorKind::InvalidInput | ErrorKind::OutOfRange => {
                Io::InvalidInput
            }
            ErrorKind::UnexpectedEof => Io::UnexpectedEof,
            ErrorKind::WriteZero => Io::WriteZero,
            ErrorKind::NoSpace => Io::StorageFull,
            ErrorKind::Unsupported => Io::Unsupported,
            ErrorKind::ReadOnly => Io::ReadOnlyFilesystem,
            ErrorKind::PermissionDenied => Io::PermissionDenied,
            ErrorKind::NotFound => Io::NotFound,
            ErrorKind::AlreadyExists => Io::AlreadyExists,
            ErrorKind::NoMemory => Io::OutOfMemory,
            _ => Io::Other,
        };
        std::io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_one_table() {
        assert_eq!(ErrorKind::from_errno(libc::EIO), ErrorKind::Io);
        assert_eq!(ErrorKind::from_errno(libc::ENOSPC), ErrorKind::NoSpace);
        assert_eq!(ErrorKind::from_errno(libc::EDQUOT), ErrorKind::NoSpace);
        assert_eq!(ErrorKind::from_errno(libc::EBADF), ErrorKind::BadFile);
        assert_eq!(
            ErrorKind::from_errno(libc::EEXIST),
            ErrorKind::AlreadyExists
        );
        assert_eq!(ErrorKind::from_errno(libc::EROFS), ErrorKind::ReadOnly);
        assert_eq!(ErrorKind::from_errno(libc::ENOSYS), ErrorKind::Unsupported);
        assert_eq!(ErrorKind::from_errno(libc::EXDEV), ErrorKind::Other);
    }

    #[test]
    fn display_carries_op_file_offset_length_and_errno() {
        let error = Error::from_errno(libc::EIO, Op::Write)
            .with_file(FileRef {
                id: 7,
                path: Some(Arc::from(Path::new("/data/log"))),
            })
            .with_range(4096, 512);
        let text = error.to_string();
        assert!(
            text.starts_with("write of 512 bytes at offset 4096 on file #7 (/data/log): I/O error"),
            "{text}"
        );
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn io_error_conversion_keeps_context() {
        let error = Error::misaligned(
            Op::Read,
            Misalignment {
                target: AlignTarget::Offset,
                required: 4096,
                actual: 512,
            },
        );
        let io: std::io::Error = error.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
        let inner = io
            .get_ref()
            .and_then(|e| e.downcast_ref::<Error>())
            .map(Error::kind);
        assert_eq!(inner, Some(ErrorKind::Misaligned));
    }
}
