//! Open options, the file handle every engine hands out, and the per-file state shared by all
//! backends: geometry, sticky sync failure and strict-mode overlap tracking.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::error::{Error, ErrorKind, FileRef, Op, Result};
use crate::geometry::{Geometry, Support};

/// How to open a file. Like `std::fs::OpenOptions` (with `create_new` and `mode`), plus
/// `direct`, `dsync` and a minimum alignment.
///
/// # Examples
///
/// ```
/// let options = engine_core::OpenOptions::new().read(true).write(true).create(true).direct(true);
/// assert!(options.is_direct());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    /// Permission bits of a file this open creates; `None`: 0o666, less the umask.
    mode: Option<u32>,
    direct: bool,
    dsync: bool,
    align_min: u32,
}

impl OpenOptions {
    /// Options with everything off.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// Open for reading.
    pub fn read(mut self, on: bool) -> OpenOptions {
        self.read = on;
        self
    }

    /// Open for writing.
    pub fn write(mut self, on: bool) -> OpenOptions {
        self.write = on;
        self
    }

    /// Create the file if it does not exist (needs `write`).
    pub fn create(mut self, on: bool) -> OpenOptions {
        self.create = on;
        self
    }

    /// Create the file, failing with [`ErrorKind::AlreadyExists`] if it exists (`O_CREAT |
    /// O_EXCL`; needs `write`). `create` and `truncate` are then ignored, as in std. A new
    /// file's name is durable only once its directory is synced (fsync of the directory).
    pub fn create_new(mut self, on: bool) -> OpenOptions {
        self.create_new = on;
        self
    }

    /// The permission bits (at most `0o7777`) of a file this open creates, before the umask;
    /// without it, `0o666`.
    pub fn mode(mut self, mode: u32) -> OpenOptions {
        self.mode = Some(mode);
        self
    }

    /// Truncate the file to zero length (needs `write`).
    pub fn truncate(mut self, on: bool) -> OpenOptions {
        self.truncate = on;
        self
    }

    /// Open with `O_DIRECT`: every request must then meet the file's [`Geometry`], which is
    /// checked before submission.
    pub fn direct(mut self, on: bool) -> OpenOptions {
        self.direct = on;
        self
    }

    /// Open with `O_DSYNC`: a write is durable when it completes.
    pub fn dsync(mut self, on: bool) -> OpenOptions {
        self.dsync = on;
        self
    }

    /// Enforce at least this alignment (a power of two) for memory, offsets and lengths, even
    /// where the device would accept less: the same rules on every device.
    pub fn align_min(mut self, align: u32) -> OpenOptions {
        self.align_min = align;
        self
    }

    /// True when reading was asked for.
    pub fn is_read(&self) -> bool {
        self.read
    }

    /// True when writing was asked for.
    pub fn is_write(&self) -> bool {
        self.write
    }

    /// True when creating was asked for.
    pub fn is_create(&self) -> bool {
        self.create
    }

    /// True when creating a new file (and failing if one exists) was asked for.
    pub fn is_create_new(&self) -> bool {
        self.create_new
    }

    /// True when truncating was asked for (and `create_new` was not, which ignores it).
    pub fn is_truncate(&self) -> bool {
        self.truncate && !self.create_new
    }

    /// The permission bits asked for a created file, if any.
    pub fn creation_mode(&self) -> Option<u32> {
        self.mode
    }

    /// True when `O_DIRECT` was asked for.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// True when `O_DSYNC` was asked for.
    pub fn is_dsync(&self) -> bool {
        self.dsync
    }

    /// The minimum alignment asked for, or 0.
    pub fn alignment_min(&self) -> u32 {
        self.align_min
    }

    /// Opens `path` with these options and probes its geometry: the part of `open` every
    /// backend shares.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for contradictory options; [`ErrorKind::AlreadyExists`]
    /// for `create_new` on an existing path; [`ErrorKind::Unsupported`] when `direct` is
    /// asked of a filesystem without O_DIRECT; the OS error otherwise.
    pub(crate) fn open_std(&self, path: &Path) -> Result<(std::fs::File, Geometry)> {
        let invalid = |why: &'static str| {
            Error::new(ErrorKind::InvalidInput, Op::Open, why).with_file(FileRef {
                id: 0,
                path: Some(Arc::from(path)),
            })
        };
        if !self.read && !self.write {
            return Err(invalid("open needs read, write or both"));
        }
        if (self.create || self.create_new || self.truncate) && !self.write {
            return Err(invalid("create, create_new and truncate need write"));
        }
        if self.mode.is_some_and(|mode| mode > 0o7777) {
            return Err(invalid("mode takes permission bits only (at most 0o7777)"));
        }
        if self.align_min != 0 && !self.align_min.is_power_of_two() {
            return Err(invalid("align_min must be a power of two"));
        }
        // A FIFO is refused before opening it: opening one for reading blocks until a writer
        // comes, and positional I/O on it cannot work anyway.
        if let Ok(meta) = std::fs::metadata(path) {
            let kind = meta.file_type();
            if kind.is_fifo() || kind.is_socket() {
                return Err(not_seekable(
                    path,
                    if kind.is_fifo() { "a FIFO" } else { "a socket" },
                ));
            }
        }
        let mut flags = libc::O_CLOEXEC;
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        if self.dsync {
            flags |= libc::O_DSYNC;
        }
        let mut std_options = std::fs::OpenOptions::new();
        std_options
            .read(self.read)
            .write(self.write)
            .create(self.create)
            .create_new(self.create_new)
            .truncate(self.is_truncate())
            .custom_flags(flags);
        if let Some(mode) = self.mode {
            std_options.mode(mode);
        }
        let opened = std_options.open(path);
        let file = opened.map_err(|e| {
            let mut error = Error::from_io(&e, Op::Open).with_file(FileRef {
                id: 0,
                path: Some(Arc::from(path)),
            });
            if self.direct && e.raw_os_error() == Some(libc::EINVAL) {
                error = Error::new(ErrorKind::Unsupported, Op::Open, "")
                    .with_errno(libc::EINVAL)
                    .with_file(FileRef {
                        id: 0,
                        path: Some(Arc::from(path)),
                    })
                    .with_message("the filesystem does not support O_DIRECT");
            }
            error
        })?;
        let geometry = self.probe_opened(&file, path)?;
        Ok((file, geometry))
    }

    /// The part of opening that follows the `open` call, shared with adoption: refuses files
    /// that cannot seek and probes the geometry.
    fn probe_opened(&self, file: &std::fs::File, path: &Path) -> Result<Geometry> {
        // Character devices such as terminals open fine but cannot seek: positional reads
        // and writes would ignore the offset (or hang waiting for input).
        // SAFETY: lseek takes no pointers; the descriptor is open for the duration of the call.
        if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESPIPE)
        {
            return Err(not_seekable(path, "not seekable"));
        }
        let mut geometry = Geometry::probe(file.as_fd());
        if self.direct && geometry.direct_io == Support::Unknown {
            // The open with O_DIRECT succeeded, which is the kernel's answer.
            geometry.direct_io = Support::Supported;
        }
        if self.align_min != 0 {
            geometry.require_alignment(self.align_min);
        }
        if self.read {
            geometry.nowait = crate::geometry::probe_nowait(file.as_fd(), &geometry);
        }
        Ok(geometry)
    }

    /// Takes over a descriptor opened elsewhere (before a sandbox, or a block device opened
    /// with `O_EXCL`): the part of [`crate::Backend::adopt`] every backend shares. Checks the
    /// descriptor against the options, switches `O_DIRECT` to match them, and probes the
    /// geometry as `open` does. Returns the file, the path it names (from `/proc/self/fd`,
    /// for errors and metrics), the options it really has, and its geometry.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::BadFile`] for a closed descriptor; [`ErrorKind::InvalidInput`] when the
    /// options ask for an access the descriptor lacks, ask for `create`, `create_new`,
    /// `truncate` or `mode` (they act at open), ask for `O_DSYNC` the descriptor was not
    /// opened with (`fcntl` cannot add it), or when the descriptor is `O_PATH` or
    /// `O_APPEND` (which makes positional writes append); [`ErrorKind::Unsupported`] when
    /// `O_DIRECT` cannot be set, and for files that cannot seek.
    pub(crate) fn adopt_std(
        &self,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(std::fs::File, std::path::PathBuf, OpenOptions, Geometry)> {
        let raw = fd.as_raw_fd();
        let path = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .unwrap_or_else(|_| std::path::PathBuf::from(format!("fd:{raw}")));
        let invalid = |why: &'static str| {
            Error::new(ErrorKind::InvalidInput, Op::Open, why).with_file(FileRef {
                id: 0,
                path: Some(Arc::from(path.as_path())),
            })
        };
        if !self.read && !self.write {
            return Err(invalid("adopt needs read, write or both"));
        }
        if self.create || self.create_new || self.truncate || self.mode.is_some() {
            return Err(invalid(
                "create, create_new, truncate and mode act at open; an adopted descriptor is already open",
            ));
        }
        if self.align_min != 0 && !self.align_min.is_power_of_two() {
            return Err(invalid("align_min must be a power of two"));
        }
        // SAFETY: F_GETFL takes no pointers; `fd` is owned here.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::from_io(&e, Op::Open).with_message("fcntl(F_GETFL)"));
        }
        if flags & libc::O_PATH != 0 {
            return Err(invalid("an O_PATH descriptor cannot read or write"));
        }
        let access = flags & libc::O_ACCMODE;
        if self.read && access == libc::O_WRONLY {
            return Err(invalid(
                "the descriptor is write-only and the options ask for reading",
            ));
        }
        if self.write && access == libc::O_RDONLY {
            return Err(invalid(
                "the descriptor is read-only and the options ask for writing",
            ));
        }
        if flags & libc::O_APPEND != 0 {
            return Err(invalid(
                "the descriptor has O_APPEND, which makes every positional write append",
            ));
        }
        let has_dsync = flags & libc::O_DSYNC == libc::O_DSYNC;
        if self.dsync && !has_dsync {
            return Err(invalid(
                "O_DSYNC cannot be added to an open descriptor: open it with O_DSYNC, or write with WriteFlags::DSYNC",
            ));
        }
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(&e, Op::Open).with_message("fstat"))?;
        let kind = meta.file_type();
        if kind.is_fifo() || kind.is_socket() {
            let what = if kind.is_fifo() { "a FIFO" } else { "a socket" };
            return Err(not_seekable(&path, what));
        }
        let has_direct = flags & libc::O_DIRECT != 0;
        if self.direct != has_direct {
            let wanted = flags ^ libc::O_DIRECT;
            // SAFETY: F_SETFL takes no pointers; the descriptor is open.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, wanted) } < 0 {
                let e = std::io::Error::last_os_error();
                let mut error =
                    Error::from_io(&e, Op::Open).with_message("fcntl(F_SETFL, O_DIRECT)");
                if e.raw_os_error() == Some(libc::EINVAL) {
                    error = Error::new(
                        ErrorKind::Unsupported,
                        Op::Open,
                        "the filesystem does not support O_DIRECT",
                    )
                    .with_errno(libc::EINVAL);
                }
                return Err(error.with_file(FileRef {
                    id: 0,
                    path: Some(Arc::from(path.as_path())),
                }));
            }
        }
        // What the file really is: O_DSYNC if it has it (a failed write then poisons it).
        let mut options = self.clone();
        options.dsync = has_dsync;
        let geometry = options.probe_opened(&file, &path)?;
        Ok((file, path, options, geometry))
    }
}

fn not_seekable(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        Op::Open,
        format!("{what}: positional I/O needs a regular file or a block device"),
    )
    .with_file(FileRef {
        id: 0,
        path: Some(Arc::from(path)),
    })
}

static FILE_IDS: AtomicU64 = AtomicU64::new(1);

/// A range in flight, for strict-mode overlap detection.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
    write: bool,
    token: u64,
}

struct FileInner {
    id: u64,
    engine_id: u64,
    std: std::fs::File,
    path: Arc<Path>,
    options: OpenOptions,
    geometry: Geometry,
    closed: AtomicBool,
    /// 0 while healthy; otherwise the errno of the sync failure that poisoned the file.
    sync_poison: AtomicI32,
    /// In-flight ranges, present only in strict mode.
    spans: Option<Mutex<Vec<Span>>>,
    tokens: AtomicU64,
    /// A backend's own index for the file (for example a registered-file slot).
    backend_index: u32,
    /// Facts a backend learns about the file as it goes (for example: AIO refuses it).
    backend_flags: AtomicU32,
    /// Told when the last handle goes, so the backend can let go of what it registered.
    dropped: Option<Arc<dyn FileDropped>>,
}

/// Told by a [`File`] when its last handle (including those held by requests in flight) is
/// dropped, just before its descriptor closes.
pub trait FileDropped: Send + Sync {
    /// The file with process-unique `id` and backend index `backend_index` is going away.
    fn dropped(&self, id: u64, backend_index: u32);
}

impl Drop for FileInner {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            dropped.dropped(self.id, self.backend_index);
        }
    }
}

/// An open file. Clones refer to the same open file; the descriptor closes when the engine
/// has closed it and the last clone (including those held by requests in flight) is dropped.
#[derive(Clone)]
pub struct File(Arc<FileInner>);

impl File {
    /// Wraps an opened file for engine `engine_id`; backends go through
    /// [`crate::raw::Common::file`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine_id: u64,
        std: std::fs::File,
        path: &Path,
        options: OpenOptions,
        geometry: Geometry,
        strict: bool,
        backend_index: u32,
        dropped: Option<Arc<dyn FileDropped>>,
    ) -> File {
        File(Arc::new(FileInner {
            id: FILE_IDS.fetch_add(1, Ordering::Relaxed),
            engine_id,
            std,
            path: Arc::from(path),
            options,
            geometry,
            closed: AtomicBool::new(false),
            sync_poison: AtomicI32::new(0),
            spans: strict.then(|| Mutex::new(Vec::new())),
            tokens: AtomicU64::new(1),
            backend_index,
            backend_flags: AtomicU32::new(0),
            dropped,
        }))
    }

    /// The file's number, unique in this process.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The engine that opened it.
    pub fn engine_id(&self) -> u64 {
        self.0.engine_id
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &OpenOptions {
        &self.0.options
    }

    /// Its geometry, probed at open.
    pub fn geometry(&self) -> &Geometry {
        &self.0.geometry
    }

    /// True when requests must meet the geometry's alignment: the file was opened with
    /// O_DIRECT or a minimum alignment.
    pub fn enforces_alignment(&self) -> bool {
        self.0.options.direct || self.0.options.align_min != 0
    }

    /// True when both handles are the same open file.
    pub fn same_file(&self, other: &File) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Marks the handle closed on behalf of the engine `engine_id`: every later request on it
    /// fails with [`ErrorKind::BadFile`]. Closing never syncs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::BadFile`] when another engine opened the file, or it was already closed.
    pub(crate) fn mark_closed(&self, engine_id: u64) -> Result<()> {
        if self.engine_id() != engine_id {
            return Err(self
                .error(ErrorKind::BadFile, Op::Close)
                .with_message("the file was opened by another engine"));
        }
        if self.0.closed.swap(true, Ordering::AcqRel) {
            return Err(self
                .error(ErrorKind::BadFile, Op::Close)
                .with_message("already closed"));
        }
        Ok(())
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// Identifies the file in errors.
    pub(crate) fn file_ref(&self) -> FileRef {
        FileRef {
            id: self.0.id,
            path: Some(Arc::clone(&self.0.path)),
        }
    }

    /// An error of `kind` for `op` on this file.
    pub(crate) fn error(&self, kind: ErrorKind, op: Op) -> Error {
        Error::new(kind, op, "").with_file(self.file_ref())
    }

    /// The errno of the sync failure that poisoned this file, if one did.
    pub fn poisoned(&self) -> Option<i32> {
        match self.0.sync_poison.load(Ordering::Acquire) {
            0 => None,
            errno => Some(errno),
        }
    }

    /// Records a sync failure (contract point 5): every later sync fails until reopened.
    /// The first failure's errno is kept.
    pub(crate) fn poison(&self, errno: i32) {
        let errno = if errno == 0 { libc::EIO } else { errno };
        let _ = self
            .0
            .sync_poison
            .compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Strict mode: registers `[offset, offset + len)` as in flight, or reports the overlap.
    /// Returns a token for [`File::release_span`], or 0 when strict mode is off.
    pub(crate) fn claim_span(&self, offset: u64, len: u64, write: bool) -> Result<u64> {
        let Some(spans) = &self.0.spans else {
            return Ok(0);
        };
        let end = offset.saturating_add(len);
        let mut spans = spans.lock().unwrap_or_else(PoisonError::into_inner);
        let clash = spans
            .iter()
            .find(|s| s.start < end && offset < s.end && (s.write || write));
        if let Some(other) = clash {
            return Err(self
                .error(ErrorKind::Overlap, if write { Op::Write } else { Op::Read })
                .with_range(offset, len)
                .with_message(format!(
                    "overlaps a {} of [{}, {}) still in flight",
                    if other.write { "write" } else { "read" },
                    other.start,
                    other.end
                )));
        }
        let token = self.0.tokens.fetch_add(1, Ordering::Relaxed);
        spans.push(Span {
            start: offset,
            end,
            write,
            token,
        });
        Ok(token)
    }

    /// Strict mode: releases a range claimed by [`File::claim_span`].
    pub(crate) fn release_span(&self, token: u64) {
        if token == 0 {
            return;
        }
        if let Some(spans) = &self.0.spans {
            let mut spans = spans.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(index) = spans.iter().position(|s| s.token == token) {
                spans.swap_remove(index);
            }
        }
    }
}

/// What backends (and test wrappers) need of a [`File`] beyond the user's view. Reached as
/// `engine_core::raw::FileRaw`.
pub trait FileRaw {
    /// The std file, for the syscall itself.
    fn std(&self) -> &std::fs::File;
    /// The raw descriptor.
    fn raw_fd(&self) -> RawFd;
    /// The backend's own index for this file (0 when it has none).
    fn backend_index(&self) -> u32;
    /// The flags the backend recorded (see [`FileRaw::set_backend_flag`]).
    fn backend_flags(&self) -> u32;
    /// Records a fact the backend learned about the file, as a bit.
    fn set_backend_flag(&self, flag: u32);
    /// An error of `kind` for `op` on this file, carrying its identity.
    fn error_of(&self, kind: ErrorKind, op: Op) -> Error;
    /// Identifies the file in errors.
    fn file_ref_of(&self) -> FileRef;
    /// A handle that does not keep the file open.
    fn downgrade(&self) -> WeakFile;
}

impl FileRaw for File {
    fn std(&self) -> &std::fs::File {
        &self.0.std
    }
    fn raw_fd(&self) -> RawFd {
        self.0.std.as_raw_fd()
    }
    fn backend_index(&self) -> u32 {
        self.0.backend_index
    }
    fn backend_flags(&self) -> u32 {
        self.0.backend_flags.load(Ordering::Acquire)
    }
    fn set_backend_flag(&self, flag: u32) {
        self.0.backend_flags.fetch_or(flag, Ordering::AcqRel);
    }
    fn error_of(&self, kind: ErrorKind, op: Op) -> Error {
        self.error(kind, op)
    }
    fn file_ref_of(&self) -> FileRef {
        self.file_ref()
    }
    fn downgrade(&self) -> WeakFile {
        WeakFile {
            id: self.0.id,
            inner: Arc::downgrade(&self.0),
        }
    }
}

/// A [`File`] handle that does not keep the file open: for backend tables that must notice
/// when a file is gone.
#[derive(Clone, Debug)]
pub struct WeakFile {
    id: u64,
    inner: Weak<FileInner>,
}

impl WeakFile {
    /// The file's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True while some handle of the file exists and it has not been closed.
    pub fn is_open(&self) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|inner| !inner.closed.load(Ordering::Acquire))
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.std.as_fd()
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("id", &self.0.id)
            .field("path", &self.0.path)
            .field("direct", &self.0.options.direct)
            .field("closed", &self.is_closed())
            .finish()
    }
}
