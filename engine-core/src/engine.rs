//! The engine trait every backend implements, its object-safe twin for plugins, and the
//! extension trait with the conveniences written once for all backends.

use std::future::Future;
use std::path::Path;

use crate::buf::AlignedBuf;
use crate::error::{ErrorKind, Result};
use crate::executor::join_all;
use crate::file::{File, OpenOptions};
use crate::metrics::MetricsSnapshot;
use crate::pool::PagePool;
use crate::queue::Queue;
use crate::request::{Completion, OpKind, Request};

/// What a backend can do and how, stated honestly so that callers and tests can gate on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's registry name.
    pub backend: &'static str,
    /// Requests in flight at most through the async API.
    pub queue_depth: usize,
    /// Worker threads the backend runs (0 when it runs none).
    pub threads: usize,
    /// True when every request in flight occupies a worker thread, so queue depth beyond
    /// `threads` only queues.
    pub op_occupies_thread: bool,
    /// True when submitting can block the caller's thread (for example buffered Linux AIO).
    pub submit_may_block: bool,
    /// True when O_DIRECT files are supported.
    pub direct_io: bool,
    /// True when O_DSYNC files are supported.
    pub dsync: bool,
    /// True when the backend honours [`crate::EngineConfig::fault_hook`].
    pub fault_hook: bool,
    /// True when the backend implements strict mode.
    pub strict_mode: bool,
    /// Whether buffers are registered with the kernel, and if not, why.
    pub registered_buffers: Option<String>,
    /// Anything else a user should know, in sentences.
    pub notes: Vec<String>,
}

/// A storage I/O engine: positional reads and writes, syncs, and a per-thread queue.
///
/// Implementations keep the ten-point contract in the crate documentation; the `conformance`
/// crate checks it. Buffers go in by value and come back in the [`Completion`]. Futures are
/// woken by the engine itself, so they complete under any executor, including
/// [`crate::block_on`].
pub trait Engine: Send + Sync {
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
    /// As [`OpenOptions::open_std`], and [`ErrorKind::Shutdown`] after shutdown.
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File>;

    /// Closes a file handle: later requests on it fail with [`ErrorKind::BadFile`]. Requests in
    /// flight finish normally. Closing never syncs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::BadFile`] when the handle is already closed or belongs to another engine.
    fn close(&self, file: &File) -> Result<()>;

    /// Submits one request and resolves to its completion. Never fails to hand the buffer
    /// back; errors are in [`Completion::result`].
    fn submit(&self, request: Request) -> impl Future<Output = Completion> + Send + '_;

    /// Creates a per-thread queue of the engine's queue depth.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Shutdown`] after shutdown; backend setup errors.
    fn queue(&self) -> Result<Self::Queue>;

    /// A copy of the counters.
    fn metrics(&self) -> MetricsSnapshot;

    /// The page pool the backend registered with the kernel, if any: buffers allocated from
    /// it take the fastest path (io_uring fixed buffers). Any other buffer works too.
    fn pool(&self) -> Option<&PagePool> {
        None
    }

    /// Stops accepting requests, completes or cancels everything in flight and joins the
    /// backend's threads. Later requests fail with [`ErrorKind::Shutdown`]. Idempotent;
    /// dropping the engine does it too.
    fn shutdown(&self);
}

/// Conveniences over any [`Engine`], written once.
pub trait EngineExt: Engine {
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

    /// `fsync`: as [`EngineExt::sync_data`], plus all metadata.
    fn sync_all(&self, file: &File) -> impl Future<Output = Result<()>> + Send + '_ {
        let request = Request::sync_all(file, 0);
        async move { self.submit(request).await.result.map(drop) }
    }

    /// Fills the whole buffer from `offset`, resubmitting the remainder of short reads.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::UnexpectedEof`] when end of file comes first; its message gives the bytes
    /// read, and the buffer's length is that count.
    fn read_exact_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        let file = file.clone();
        async move { transfer_all(self, OpKind::Read, file, offset, buf).await }
    }

    /// Writes the whole buffer at `offset`, resubmitting the remainder of short writes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WriteZero`] when a write makes no progress; the OS error otherwise.
    fn write_all_at(
        &self,
        file: &File,
        offset: u64,
        buf: AlignedBuf,
    ) -> impl Future<Output = (Result<()>, AlignedBuf)> + Send + '_ {
        let file = file.clone();
        async move { transfer_all(self, OpKind::Write, file, offset, buf).await }
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

impl<E: Engine + ?Sized> EngineExt for E {}

fn split(completion: Completion) -> (Result<usize>, AlignedBuf) {
    let buf = completion.buf.unwrap_or_else(|| AlignedBuf::empty(1));
    (completion.result, buf)
}

/// The short-transfer loop: resubmits `buf[done..]` at `offset + done` until all is done.
async fn transfer_all<E: Engine + ?Sized>(
    engine: &E,
    kind: OpKind,
    file: File,
    offset: u64,
    buf: AlignedBuf,
) -> (Result<()>, AlignedBuf) {
    let total = buf.len();
    let mut done = 0usize;
    let mut buf = buf;
    // Each round makes progress or stops, so the loop is bounded by `total` rounds.
    while done < total {
        let request = Request {
            kind,
            file: file.clone(),
            offset: offset.saturating_add(done as u64),
            buf: Some(buf),
            buf_start: done,
            user_data: 0,
        };
        let completion = engine.submit(request).await;
        let (result, returned) = split(completion);
        buf = returned;
        match result {
            Ok(0) => {
                let (error_kind, what) = match kind {
                    OpKind::Read => (ErrorKind::UnexpectedEof, "end of file"),
                    _ => (ErrorKind::WriteZero, "a write of zero bytes"),
                };
                let error = file
                    .error(error_kind, kind.op())
                    .with_range(offset, total as u64)
                    .with_message(format!("{what} after {done} of {total} bytes"));
                if kind == OpKind::Read {
                    buf.truncate(done);
                }
                return (Err(error), buf);
            }
            Ok(n) => {
                done += n;
                if kind == OpKind::Read && done < total {
                    // The read set the length to `done`; restore it to resubmit the rest.
                    if let Err(e) = buf.resize(total) {
                        return (Err(e), buf);
                    }
                }
            }
            Err(error) => return (Err(error), buf),
        }
    }
    (Ok(()), buf)
}

/// The object-safe form of [`Engine`], for third-party plugins held as trait objects.
/// Every [`Engine`] is one.
#[async_trait::async_trait]
pub trait DynEngine: Send + Sync {
    /// See [`Engine::name`].
    fn name(&self) -> &'static str;
    /// See [`Engine::capabilities`].
    fn capabilities(&self) -> &Capabilities;
    /// See [`Engine::open`].
    ///
    /// # Errors
    ///
    /// As [`Engine::open`].
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File>;
    /// See [`Engine::close`].
    ///
    /// # Errors
    ///
    /// As [`Engine::close`].
    fn close(&self, file: &File) -> Result<()>;
    /// See [`Engine::submit`]; allocates one box per request.
    async fn submit(&self, request: Request) -> Completion;
    /// See [`Engine::queue`].
    ///
    /// # Errors
    ///
    /// As [`Engine::queue`].
    fn queue(&self) -> Result<Box<dyn Queue + Send>>;
    /// See [`Engine::metrics`].
    fn metrics(&self) -> MetricsSnapshot;
    /// See [`Engine::pool`].
    fn pool(&self) -> Option<&PagePool>;
    /// See [`Engine::shutdown`].
    fn shutdown(&self);
}

#[async_trait::async_trait]
impl<E: Engine> DynEngine for E {
    fn name(&self) -> &'static str {
        Engine::name(self)
    }
    fn capabilities(&self) -> &Capabilities {
        Engine::capabilities(self)
    }
    fn open(&self, path: &Path, options: &OpenOptions) -> Result<File> {
        Engine::open(self, path, options)
    }
    fn close(&self, file: &File) -> Result<()> {
        Engine::close(self, file)
    }
    async fn submit(&self, request: Request) -> Completion {
        Engine::submit(self, request).await
    }
    fn queue(&self) -> Result<Box<dyn Queue + Send>> {
        Ok(Box::new(Engine::queue(self)?))
    }
    fn metrics(&self) -> MetricsSnapshot {
        Engine::metrics(self)
    }
    fn pool(&self) -> Option<&PagePool> {
        Engine::pool(self)
    }
    fn shutdown(&self) {
        Engine::shutdown(self)
    }
}

/// A boxed plugin engine is an [`Engine`] too, so the same code (and the conformance suite)
/// drives built-in and third-party backends.
impl Engine for Box<dyn DynEngine> {
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
}
