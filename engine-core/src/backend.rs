//! The trait every backend implements ([`Backend`]), its object-safe twin for plugins
//! ([`DynBackend`]), and the conveniences written once for all backends ([`BackendExt`]).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::buf::AlignedBuf;
use crate::error::Result;
use crate::executor::join_all;
use crate::file::{File, OpenOptions};
use crate::metadata::{AllocateMode, Metadata};
use crate::metrics::MetricsSnapshot;
use crate::pool::PagePool;
use crate::queue::Queue;
use crate::raw::sandbox::SteadyState;
use crate::request::{Completion, Request, WriteFlags};

/// What a backend can do and how, stated honestly so that callers and tests can gate on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's registry name.
    pub backend: &'static str,
    /// Requests in flight at most through the async API.
    pub queue_depth_max: usize,
    /// Worker threads the backend runs (0 when it runs none).
    pub threads: usize,
    /// True when every request that reaches the worker pool occupies a thread while it runs,
    /// so queue depth beyond `threads` only queues.
    pub op_occupies_thread: bool,
    /// True when submitting can block the caller's thread (for example buffered Linux AIO,
    /// or a backend running requests inline).
    pub submit_may_block: bool,
    /// True when O_DIRECT files are supported.
    pub direct_io: bool,
    /// True when O_DSYNC files are supported.
    pub dsync: bool,
    /// True when the backend passes every request through the shared lifecycle, so the
    /// `testing` feature's fault hook reaches it.
    pub fault_hook: bool,
    /// True when the backend implements strict mode.
    pub strict_mode: bool,
    /// True when buffers from [`Backend::pool`] are registered with the kernel.
    pub registered_buffers: bool,
    /// True when files are registered with the kernel.
    pub registered_files: bool,
    /// True when the kernel polls for submissions (io_uring SQPOLL).
    pub sqpoll: bool,
    /// True when completions are polled (io_uring IOPOLL).
    pub iopoll: bool,
    /// True when the kernel interface is restricted to reads, writes and syncs on registered
    /// files (io_uring `REGISTER_RESTRICTIONS`).
    pub restricted: bool,
    /// Anything else a user should know, in sentences (including why something is off).
    pub notes: Vec<String>,
}

/// A storage I/O engine: positional reads and writes, syncs, and a per-thread queue.
///
/// Implementations keep the ten-point contract in the crate documentation; the `conformance`
/// crate checks it. Buffers go in by value and come back in the [`Completion`]. Futures are
/// woken by the engine itself, so they complete under any executor, and fastest under
/// [`crate::block_on`], which lends its thread to the engine while it waits.
pub trait Backend: Send + Sync {
    /// The per-thread queue type.
    type Queue: Queue + Send + 'static;

    /// The backend's registry name.
    fn name(&self) -> &'static str;

    /// What the backend can do.
    fn capabilities(&self) -> &Capabilities;

    /// Opens a file; its geometry is probed and validation uses it from then on.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Shutdown`] after shutdown; [`crate::ErrorKind::InvalidInput`] for
    /// contradictory options; [`crate::ErrorKind::Unsupported`] for O_DIRECT on a filesystem
    /// without it and for files that cannot seek (FIFOs, sockets, terminals); the OS error
    /// otherwise.
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File>;

    /// Takes over a descriptor opened elsewhere (before entering a sandbox, or a block device
    /// opened with `O_EXCL`), as [`Backend::open`] would have opened it: its geometry is
    /// probed, `O_DIRECT` is switched to match `options`, and the engine owns it from then
    /// on (it closes when the last handle goes). `options` says how it will be used (`read`,
    /// `write`, `direct`, `dsync`, `align_min`); `create`, `create_new`, `truncate` and
    /// `mode` act at open and are refused. `O_DIRECT` is switched with `fcntl(F_SETFL)`, which
    /// acts on the open file description: duplicates of the descriptor held elsewhere see the
    /// change too.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Shutdown`] after shutdown; [`crate::ErrorKind::InvalidInput`] when
    /// the options ask for an access the descriptor lacks, for `O_DSYNC` it was not opened
    /// with, or for open-time options, and for `O_PATH` and `O_APPEND` descriptors;
    /// [`crate::ErrorKind::Unsupported`] for O_DIRECT on a filesystem without it and for
    /// files that cannot seek; [`crate::ErrorKind::BadFile`] for a closed descriptor. The
    /// descriptor is closed on every error.
    fn adopt(&self, fd: OwnedFd, options: &OpenOptions) -> Result<File>;

    /// Closes a file handle: later requests on it fail with [`crate::ErrorKind::BadFile`].
    /// Requests in flight finish normally. Closing never syncs.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::BadFile`] when the handle is already closed or belongs to another
    /// engine.
    fn close(&self, file: &File) -> Result<()>;

    /// Submits one request and resolves to its completion, which carries the buffer back.
    /// Errors are in [`Completion::result`]. Dropping the future does not cancel the request:
    /// it runs to completion and its buffer is freed then.
    ///
    /// The one case a buffer does not come back: the engine's completion path died while the
    /// kernel held it. It is then leaked, never freed, and the completion carries an empty
    /// buffer.
    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_;

    /// Creates a per-thread queue of the engine's queue depth.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Shutdown`] after shutdown; backend setup errors.
    fn queue(&self) -> Result<Self::Queue>;

    /// A copy of the counters.
    fn metrics(&self) -> MetricsSnapshot;

    /// The page pool the backend registered with the kernel, if any: buffers allocated from
    /// it take the fastest path (io_uring fixed buffers). Any other buffer works too.
    fn pool(&self) -> Option<&PagePool> {
        None
    }

    /// Stops accepting requests, completes everything in flight and joins the backend's
    /// threads. Later requests fail with [`crate::ErrorKind::Shutdown`]. Idempotent; dropping
    /// the engine does it too.
    fn shutdown(&self);

    /// The system calls the engine makes once set up ([`crate::raw::sandbox`]), with its own
    /// descriptors (rings, AIO contexts, eventfds) filled in as they are now.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Unsupported`] for a backend that publishes no list (the default).
    fn steady_state(&self) -> Result<SteadyState> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            crate::Op::Setup,
            format!(
                "the {} backend publishes no steady-state system call list",
                self.name()
            ),
        ))
    }
}

/// Conveniences over any [`Backend`], written once.
pub trait BackendExt: Backend {
    /// Reads up to `buf.len()` bytes at `offset`; returns the count (0 at or past end of file)
    /// and the buffer, whose length becomes the count.
    fn read_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<usize>, AlignedBuf)> + Send + '_ {
        let request = Request::read(file, offset, buf, 0);
        async move { split(self.submit(request).await) }
    }

    /// Writes `buf` at `offset`; returns the count, which may be short, and the buffer.
    fn write_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<usize>, AlignedBuf)> + Send + '_ {
        let request = Request::write(file, offset, buf, 0);
        async move { split(self.submit(request).await) }
    }

    /// `fdatasync`: makes every write that completed before this call durable.
    fn sync_data(&self, file: &File) -> impl Future<Output = Result<()>> + Send + '_ {
        let request = Request::sync_data(file, 0);
        async move { self.submit(request).await.result.map(drop) }
    }

    /// `fsync`: as [`BackendExt::sync_data`], plus all metadata.
    fn sync_all(&self, file: &File) -> impl Future<Output = Result<()>> + Send + '_ {
        let request = Request::sync_all(file, 0);
        async move { self.submit(request).await.result.map(drop) }
    }

    /// Fills the whole buffer from `offset`, resuming short reads inside the engine.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::UnexpectedEof`] when end of file comes first;
    /// [`crate::Error::transferred`] gives the bytes read, and the buffer's length is that
    /// count.
    fn read_exact_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        let request = Request::read_exact(file, offset, buf, 0);
        async move {
            let (result, buf) = split(self.submit(request).await);
            (result.map(drop), buf)
        }
    }

    /// Writes the whole buffer at `offset`, resuming short writes inside the engine.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::WriteZero`] when a write makes no progress; the OS error otherwise
    /// ([`crate::Error::transferred`] gives the bytes written before it).
    fn write_all_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        let request = Request::write_all(file, offset, buf, 0);
        async move {
            let (result, buf) = split(self.submit(request).await);
            (result.map(drop), buf)
        }
    }

    /// Writes the whole buffer at `offset` with `flags`: durable at completion
    /// ([`WriteFlags::DSYNC`]), followed by an `fdatasync` ([`WriteFlags::SYNC_DATA_AFTER`]),
    /// untorn ([`WriteFlags::ATOMIC`]), or a combination.
    ///
    /// # Errors
    ///
    /// As [`BackendExt::write_all_at`]; for the flags' own rules, see [`WriteFlags`]. A
    /// failure of a durable write poisons the file ([`crate::ErrorKind::Poisoned`] on later
    /// syncs).
    fn write_all_at_with(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
        flags: WriteFlags,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        let request = Request::write_all(file, offset, buf, 0).with_flags(flags);
        async move {
            let (result, buf) = split(self.submit(request).await);
            (result.map(drop), buf)
        }
    }

    /// Writes the whole buffer at `offset` untorn (`RWF_ATOMIC`): after a crash the range
    /// holds all of it or none of it. Not durable by itself: sync afterwards, or use
    /// [`BackendExt::write_all_at_with`] with `ATOMIC | DSYNC`.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Unsupported`] on a file without `O_DIRECT` or without atomic-write
    /// limits in its [`crate::Geometry`] (most filesystems before Linux 6.16), and for a length
    /// above `atomic_write_unit_max`; [`crate::ErrorKind::Misaligned`] for a length that is not
    /// a power of two of at least `atomic_write_unit_min`, or an offset that is not a
    /// multiple of the length. The limits are in the message. All are checked before
    /// submission.
    fn write_atomic_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        self.write_all_at_with(file, offset, buf, WriteFlags::ATOMIC)
    }

    /// Fills every buffer of `bufs`, in order, from `offset` (`preadv`): one read over their
    /// concatenation, resumed after short reads inside the engine and split into submissions
    /// of at most [`Request::IOV_MAX`] buffers. The buffers come back in order.
    ///
    /// Under `O_DIRECT` each buffer's address and length must be aligned on its own, as the
    /// kernel checks each `iovec`.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::UnexpectedEof`] when end of file comes first, with the bytes read
    /// in [`crate::Error::transferred`] and each buffer's length set to what it received;
    /// [`crate::ErrorKind::Misaligned`] naming the first misaligned buffer; the OS error
    /// otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo<E: engine_core::Backend>(engine: &E, file: &engine_core::File) -> engine_core::Result<()> {
    /// use engine_core::{AlignedBuf, BackendExt};
    ///
    /// engine_core::block_on(async {
    ///     // A record's 512-byte header and its 4 KiB body, side by side at offset 0.
    ///     let header = AlignedBuf::from_slice(&[1; 512], 512)?;
    ///     let body = AlignedBuf::from_slice(&[2; 4096], 512)?;
    ///     let (written, _) = engine.write_vectored_at(file, 0, vec![header, body]).await;
    ///     written?;
    ///     let bufs = vec![AlignedBuf::zeroed(512, 512)?, AlignedBuf::zeroed(4096, 512)?];
    ///     let (read, bufs) = engine.read_vectored_at(file, 0, bufs).await;
    ///     read?;
    ///     assert_eq!((bufs[0][0], bufs[1][4095]), (1, 2));
    ///     Ok(())
    /// })
    /// # }
    /// ```
    fn read_vectored_at(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
    ) -> impl Future<Output = (Result<()>, Vec<AlignedBuf>)> + Send + '_ {
        let request = Request::read_vectored(file, offset, bufs, 0);
        async move {
            let completion = self.submit(request).await;
            (completion.result.map(drop), completion.bufs)
        }
    }

    /// Writes every buffer of `bufs`, in order, from `offset` (`pwritev2`), resuming short
    /// writes inside the engine and splitting as [`BackendExt::read_vectored_at`] does. For
    /// per-write flags, submit [`Request::write_vectored`] with [`Request::with_flags`].
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::WriteZero`] when a write makes no progress;
    /// [`crate::ErrorKind::Misaligned`] as for reads; the OS error otherwise
    /// ([`crate::Error::transferred`] gives the bytes written before it).
    fn write_vectored_at(
        &self,
        file: &File,
        offset: u64,
        bufs: Vec<AlignedBuf>,
    ) -> impl Future<Output = (Result<()>, Vec<AlignedBuf>)> + Send + '_ {
        let request = Request::write_vectored(file, offset, bufs, 0);
        async move {
            let completion = self.submit(request).await;
            (completion.result.map(drop), completion.bufs)
        }
    }

    /// `fallocate` of `[offset, offset + len)` in `mode`: preallocates, punches a hole or
    /// zeroes a range (see [`AllocateMode`] for what each does and where each works). Like a
    /// write, its effect is durable after a sync ([`BackendExt::sync_all`] when it changes
    /// the length).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidInput`] for a zero length; [`crate::ErrorKind::OutOfRange`]
    /// when the range ends past 2^63 - 1; [`crate::ErrorKind::ReadOnly`] on a file not open
    /// for writing; [`crate::ErrorKind::Misaligned`] for a punch or zeroing off the logical
    /// block on a block device or an `O_DIRECT` file; [`crate::ErrorKind::Unsupported`] where
    /// the filesystem or device lacks the mode; the OS error otherwise (`ENOSPC`:
    /// [`crate::ErrorKind::NoSpace`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo<E: engine_core::Backend>(engine: &E, file: &engine_core::File) -> engine_core::Result<()> {
    /// use engine_core::{AllocateMode, BackendExt};
    ///
    /// engine_core::block_on(async {
    ///     // Reserve 1 MiB for appends without changing the length, then check.
    ///     engine.allocate(file, 0, 1 << 20, AllocateMode::KeepSize).await?;
    ///     let metadata = engine.metadata(file).await?;
    ///     assert!(metadata.blocks() * 512 >= 1 << 20);
    ///     Ok(())
    /// })
    /// # }
    /// ```
    fn allocate(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        mode: AllocateMode,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let request = Request::allocate(file, offset, len, mode, 0);
        async move { self.submit(request).await.result.map(drop) }
    }

    /// `ftruncate`: sets the file's length, cutting it or extending it with zeros. Durable
    /// after [`BackendExt::sync_all`] (a length is metadata).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::OutOfRange`] past 2^63 - 1; [`crate::ErrorKind::ReadOnly`] on a
    /// file not open for writing; [`crate::ErrorKind::Unsupported`] on a block device; the OS
    /// error otherwise.
    fn set_len(&self, file: &File, len: u64) -> impl Future<Output = Result<()>> + Send + '_ {
        let request = Request::set_len(file, len, 0);
        async move { self.submit(request).await.result.map(drop) }
    }

    /// `statx`: the file's length (a block device's capacity), allocated blocks, kind and
    /// times.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::BadFile`] on a closed or foreign file; the OS error otherwise.
    fn metadata(&self, file: &File) -> impl Future<Output = Result<Metadata>> + Send + '_ {
        let request = Request::metadata(file, 0);
        async move {
            let completion = self.submit(request).await;
            completion.result?;
            completion.metadata.ok_or_else(|| {
                crate::Error::new(
                    crate::ErrorKind::Io,
                    crate::Op::Metadata,
                    "the engine completed a metadata request without its record",
                )
            })
        }
    }

    /// `fsync` of the directory at `path`, through the engine: what makes the creation,
    /// removal or rename of a file in it durable (a file's own sync covers its data and inode,
    /// not its name). Opens the directory, syncs it and closes it; the open runs on the calling
    /// thread, like [`Backend::open`].
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidInput`] (`ENOTDIR`) when `path` is not a directory; as
    /// [`Backend::open`] and [`BackendExt::sync_all`] otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn demo<E: engine_core::Backend>(engine: &E) -> engine_core::Result<()> {
    /// use engine_core::{BackendExt, OpenOptions};
    ///
    /// let dir = tempfile::tempdir().expect("tempdir");
    /// let options = OpenOptions::new().read(true).write(true).create_new(true);
    /// let file = engine.open(&dir.path().join("log"), &options)?;
    /// engine_core::block_on(async {
    ///     engine.sync_all(&file).await?; // the file's data and inode
    ///     engine.sync_dir(dir.path()).await // its name in the directory
    /// })
    /// # }
    /// ```
    fn sync_dir(&self, path: &Path) -> impl Future<Output = Result<()>> + Send + '_ {
        let opened = open_dir(self, path);
        async move {
            let dir = opened?;
            let synced = self.sync_all(&dir).await;
            let closed = self.close(&dir);
            synced.and(closed)
        }
    }

    /// Submits every request at once and returns one completion per request, in order.
    fn submit_batch(
        &self,
        requests: Vec<Request>,
    ) -> impl Future<Output = Vec<Completion>> + Send + '_ {
        let futures: Vec<_> = requests.into_iter().map(|r| self.submit(r)).collect();
        join_all(futures)
    }
}

impl<E: Backend + ?Sized> BackendExt for E {}

/// Opens the directory at `path` for [`BackendExt::sync_dir`], refusing anything else.
fn open_dir<E: Backend + ?Sized>(engine: &E, path: &Path) -> Result<File> {
    let file_ref = || crate::error::FileRef {
        id: 0,
        path: Some(std::sync::Arc::from(path)),
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| crate::Error::from_io(&e, crate::Op::Open).with_file(file_ref()))?;
    if !meta.is_dir() {
        return Err(crate::Error::new(
            crate::ErrorKind::InvalidInput,
            crate::Op::SyncAll,
            "sync_dir needs a directory",
        )
        .with_errno(libc::ENOTDIR)
        .with_file(file_ref()));
    }
    engine.open(path, &OpenOptions::new().read(true))
}

/// A read's or write's result and buffer. The completion of a read or write always carries a
/// buffer; an empty one stands in only for a buffer leaked by a dead completion path.
fn split(completion: Completion) -> (Result<usize>, AlignedBuf) {
    let buf = completion.buf.unwrap_or_else(|| AlignedBuf::empty(1));
    (completion.result, buf)
}

/// The object-safe form of [`Backend`], for third-party plugins held as trait objects.
/// Every [`Backend`] is one.
#[async_trait::async_trait]
pub trait DynBackend: Send + Sync {
    /// See [`Backend::name`].
    fn name(&self) -> &'static str;
    /// See [`Backend::capabilities`].
    fn capabilities(&self) -> &Capabilities;
    /// See [`Backend::open`].
    ///
    /// # Errors
    ///
    /// As [`Backend::open`].
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File>;
    /// See [`Backend::adopt`].
    ///
    /// # Errors
    ///
    /// As [`Backend::adopt`].
    fn adopt(&self, fd: OwnedFd, options: &OpenOptions) -> Result<File>;
    /// See [`Backend::close`].
    ///
    /// # Errors
    ///
    /// As [`Backend::close`].
    fn close(&self, file: &File) -> Result<()>;
    /// See [`Backend::submit`]; allocates one box per request.
    async fn submit(&self, request: Request) -> Completion;
    /// See [`Backend::queue`].
    ///
    /// # Errors
    ///
    /// As [`Backend::queue`].
    fn queue(&self) -> Result<Box<dyn Queue + Send>>;
    /// See [`Backend::metrics`].
    fn metrics(&self) -> MetricsSnapshot;
    /// See [`Backend::pool`].
    fn pool(&self) -> Option<&PagePool>;
    /// See [`Backend::shutdown`].
    fn shutdown(&self);
    /// See [`Backend::steady_state`].
    ///
    /// # Errors
    ///
    /// As [`Backend::steady_state`].
    fn steady_state(&self) -> Result<SteadyState>;
}

#[async_trait::async_trait]
impl<E: Backend> DynBackend for E {
    fn name(&self) -> &'static str {
        Backend::name(self)
    }
    fn capabilities(&self) -> &Capabilities {
        Backend::capabilities(self)
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        Backend::open(self, path, options)
    }
    fn adopt(&self, fd: OwnedFd, options: &OpenOptions) -> Result<File> {
        Backend::adopt(self, fd, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        Backend::close(self, file)
    }
    async fn submit(&self, request: Request) -> Completion {
        Backend::submit(self, request).await
    }
    fn queue(&self) -> Result<Box<dyn Queue + Send>> {
        Ok(Box::new(Backend::queue(self)?))
    }
    fn metrics(&self) -> MetricsSnapshot {
        Backend::metrics(self)
    }
    fn pool(&self) -> Option<&PagePool> {
        Backend::pool(self)
    }
    fn shutdown(&self) {
        Backend::shutdown(self)
    }
    fn steady_state(&self) -> Result<SteadyState> {
        Backend::steady_state(self)
    }
}

/// A boxed plugin engine is a [`Backend`] too, so the same code (and the conformance suite)
/// drives built-in and third-party backends.
impl Backend for Box<dyn DynBackend> {
    type Queue = Box<dyn Queue + Send>;

    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn capabilities(&self) -> &Capabilities {
        (**self).capabilities()
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        (**self).open(path, options)
    }
    fn adopt(&self, fd: OwnedFd, options: &OpenOptions) -> Result<File> {
        (**self).adopt(fd, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        (**self).close(file)
    }
    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_ {
        (**self).submit(request)
    }
    fn queue(&self) -> Result<Self::Queue> {
        (**self).queue()
    }
    fn metrics(&self) -> MetricsSnapshot {
        (**self).metrics()
    }
    fn pool(&self) -> Option<&PagePool> {
        (**self).pool()
    }
    fn shutdown(&self) {
        (**self).shutdown()
    }
    fn steady_state(&self) -> Result<SteadyState> {
        (**self).steady_state()
    }
}
