//! The executor thread: a glommio `LocalExecutor`, owned by the engine, that runs each job the
//! shared lifecycle hands it ([`Job`]) as glommio file operations, and delivers the result back
//! into the job's result list.
//!
//! ```text
//!   submitting thread                          executor thread (glommio LocalExecutor)
//!   Backend::open ── Files::open ──nudge──►    housekeeping: open a DmaFile/BufferedFile
//!   ThreadKernel::submit ─► Inbox ──wake──►    Inbox::serve: worker tasks
//!                                                read_at / write_at / fdatasync (copying)
//!   Driver / QueueDriver ◄── Done ◄─finish──     (anything else: the blocking syscall)
//! ```
//!
//! glommio's files own their descriptors and can only be made on the executor, from a path:
//! each engine file gets its own glommio file, opened through `/proc/self/fd/<fd>` of the
//! engine's descriptor when the engine opens or adopts it, and closed when the engine file's
//! last handle goes. The jobs point into request buffers that the request's slot owns until
//! the job's result has been reaped, so the executor never lets a task go before its operation
//! ends: it exits only after every worker has delivered its result.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

use engine_core::raw::hosted::{self, ExecutorThread, Inbox};
use engine_core::raw::{lock, Common, FileDropped, Job, Runner, Syscall};
use engine_core::{Error, ErrorKind, Op, Result};
use glommio::io::{BufferedFile, DmaFile};
use glommio::GlommioError;

/// A glommio file: direct (`DmaFile`, for the engine's O_DIRECT files) or buffered.
enum GFile {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

/// An open the executor is asked to make: glommio's file for the engine's descriptor `fd`,
/// in table slot `index - 1`.
struct Opening {
    index: u32,
    fd: RawFd,
    reply: mpsc::Sender<std::io::Result<()>>,
}

/// Which engine file has which glommio file: table slots handed out at open, the opens and
/// closes the executor has still to make. Kept in one lock so the executor takes them in the
/// order they were asked for (a slot closed and opened again is closed first).
#[derive(Default)]
struct Table {
    /// Slots handed out so far: backend indexes `1..=made` exist.
    made: u32,
    /// Indexes whose file was closed (or whose open failed), for the next opens.
    free: Vec<u32>,
    opening: Vec<Opening>,
    /// Indexes to close, each with whom to tell once it is closed.
    closing: Vec<(u32, mpsc::Sender<()>)>,
    /// Set by the executor as it exits, having closed every glommio file: nothing more is
    /// opened or closed, and nobody may wait for it.
    exited: bool,
}

/// The executor thread and its inbox; the [`Runner`] of the engine's kernels.
pub struct Host {
    executor: ExecutorThread,
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

/// The errno in a glommio error (EIO when it carries none).
fn errno_of<T>(error: &GlommioError<T>) -> i32 {
    match error {
        GlommioError::IoError(e) => e.raw_os_error(),
        GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    }
    .unwrap_or(libc::EIO)
}

impl Host {
    /// Starts the executor thread with a glommio `LocalExecutor` whose rings have
    /// `ring_depth` entries; copies are counted in `common`'s metrics.
    ///
    /// # Errors
    ///
    /// The OS error when the thread cannot be spawned or glommio cannot build its executor
    /// (glommio's own reason, a memlock limit below its minimum say, in the message).
    pub fn start(ring_depth: usize, common: Arc<Common>) -> Result<Arc<Host>> {
        let inbox = Arc::new(Inbox::new());
        let table = Arc::new(Mutex::new(Table::default()));
        let (built_tx, built_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let (served, served_table) = (Arc::clone(&inbox), Arc::clone(&table));
        let thread = std::thread::Builder::new()
            .name("engine-glommio".into())
            .spawn(move || {
                // glommio panics on some setup failures (an io_uring probe it cannot make):
                // those become the engine's setup error too.
                let built = std::panic::catch_unwind(|| {
                    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                        .name("engine-glommio")
                        .ring_depth(ring_depth)
                        .make()
                });
                let executor = match built {
                    Ok(Ok(executor)) => executor,
                    Ok(Err(e)) => return drop(built_tx.send(Err(e.to_string()))),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "glommio panicked".to_string());
                        return drop(built_tx.send(Err(message)));
                    }
                };
                let _ = built_tx.send(Ok(()));
                executor.run(serve(served, served_table, common));
            })
            .map_err(|e| {
                Error::from_io(&e, Op::Setup).with_message("spawning the glommio executor thread")
            })?;
        match built_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                let _ = thread.join();
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    Op::Setup,
                    format!("glommio cannot build its executor here: {message}"),
                ));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::new(
                    ErrorKind::Other,
                    Op::Setup,
                    "the glommio executor thread ended while building its executor",
                ));
            }
        }
        Ok(Arc::new(Host {
            executor: ExecutorThread::new(inbox, thread),
            table,
        }))
    }

    /// Opens glommio's file for the engine's open file `fd`, on the executor, and waits for
    /// it; the file's backend index (its table slot + 1).
    ///
    /// # Errors
    ///
    /// Shutdown when the executor is gone; the OS error glommio's open met.
    pub fn open(&self, fd: BorrowedFd<'_>) -> Result<u32> {
        let (reply, answer) = mpsc::channel();
        let index = {
            let mut table = lock(&self.table);
            if table.exited {
                return Err(Error::shutdown(Op::Open));
            }
            let index = match table.free.pop() {
                Some(index) => index,
                None => {
                    table.made += 1;
                    table.made
                }
            };
            table.opening.push(Opening {
                index,
                fd: fd.as_raw_fd(),
                reply,
            });
            index
        };
        self.executor.inbox().nudge();
        // The descriptor stays open while this waits: the caller holds it.
        match answer.recv() {
            Ok(Ok(())) => Ok(index),
            Ok(Err(e)) => {
                lock(&self.table).free.push(index);
                Err(Error::from_io(&e, Op::Open)
                    .with_message("opening the file for glommio (through /proc/self/fd)"))
            }
            // The executor dropped the request unanswered: it has exited.
            Err(_) => Err(Error::shutdown(Op::Open)),
        }
    }

    /// Lets go of the glommio file of backend index `index`: the executor closes it, and this
    /// waits for that (so the file's storage goes when the engine closes its own descriptor).
    /// The slot is free for the next open, which the executor makes after this close.
    fn close(&self, index: u32) {
        let (done, closed) = mpsc::channel();
        {
            let mut table = lock(&self.table);
            if table.exited {
                // The executor closed every glommio file as it exited.
                return;
            }
            table.closing.push((index, done));
            table.free.push(index);
        }
        self.executor.inbox().nudge();
        // The executor never drops an engine file itself; were it to, it must not wait for
        // itself. A closed executor drops the sender, which ends the wait.
        if !self.executor.is_current() {
            let _ = closed.recv();
        }
    }

    /// Stops taking jobs, lets the executor finish every task it has, and joins its thread
    /// (see [`ExecutorThread::shutdown`]). Idempotent.
    pub fn shutdown(&self) {
        self.executor.shutdown();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Runner for Host {
    fn enqueue(&self, jobs: &mut Vec<Job>) {
        self.executor.inbox().enqueue(jobs);
    }
}

/// The executor's glommio files, by table slot.
type Files = Rc<RefCell<Vec<Option<Rc<GFile>>>>>;

/// Devices (`st_dev`) on which the executor has settled glommio's poll-ring probe (see
/// [`settle_poll_probe`]).
type Settled = Rc<RefCell<std::collections::HashSet<u64>>>;

/// The executor's main future: serves the inbox until shutdown, opening and closing glommio
/// files between batches as the engine asks; at the end closes every file left.
async fn serve(inbox: Arc<Inbox>, table: Arc<Mutex<Table>>, common: Arc<Common>) {
    let files = Files::default();
    let settled = Settled::default();
    // The open and close tasks housekeeping spawned and that have not ended yet.
    let tasks = Rc::new(Tasks::default());
    let run = {
        let (files, common) = (Rc::clone(&files), Arc::clone(&common));
        move |job| run(job, Rc::clone(&files), Arc::clone(&common))
    };
    let housekeeping = {
        let (files, table, tasks) = (Rc::clone(&files), Arc::clone(&table), Rc::clone(&tasks));
        move || {
            let (closing, opening) = {
                let mut table = lock(&table);
                (
                    std::mem::take(&mut table.closing),
                    std::mem::take(&mut table.opening),
                )
            };
            for (index, done) in closing {
                let file = slot(index).and_then(|s| files.borrow_mut().get_mut(s)?.take());
                tasks.spawn(async move {
                    if let Some(file) = file {
                        close(file).await;
                    }
                    let _ = done.send(());
                });
            }
            for opening in opening {
                tasks.spawn(open(opening, Rc::clone(&files), Rc::clone(&settled)));
            }
        }
    };
    inbox
        .serve(
            |task| drop(glommio::spawn_local(task).detach()),
            run,
            housekeeping,
        )
        .await;
    tasks.all_ended().await;
    // What was asked for after the last batch: an open is answered by dropping its reply (the
    // engine is shutting down), a close is made below with every other file.
    let (opening, closing) = {
        let mut table = lock(&table);
        table.exited = true;
        (
            std::mem::take(&mut table.opening),
            std::mem::take(&mut table.closing),
        )
    };
    drop(opening);
    let left: Vec<Rc<GFile>> = files.borrow_mut().drain(..).flatten().collect();
    for file in left {
        close(file).await;
    }
    // Those waiting for a close return now, their file closed above.
    drop(closing);
}

/// Tasks the executor spawned and must see end before it exits (an exiting glommio executor
/// drops its tasks unfinished, and a dropped file is closed only by a later ring cycle).
#[derive(Default)]
struct Tasks {
    running: std::cell::Cell<usize>,
    /// The exiting executor's waker while it waits for the last one.
    last: std::cell::Cell<Option<std::task::Waker>>,
}

impl Tasks {
    fn spawn(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        self.running.set(self.running.get() + 1);
        let tasks = Rc::clone(self);
        drop(
            glommio::spawn_local(async move {
                task.await;
                tasks.running.set(tasks.running.get() - 1);
                if tasks.running.get() == 0 {
                    if let Some(waker) = tasks.last.take() {
                        waker.wake();
                    }
                }
            })
            .detach(),
        );
    }

    async fn all_ended(&self) {
        std::future::poll_fn(|cx| {
            if self.running.get() == 0 {
                return std::task::Poll::Ready(());
            }
            self.last.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await;
    }
}

/// The table slot of backend index `index` (1-based).
fn slot(index: u32) -> Option<usize> {
    usize::try_from(index.checked_sub(1)?).ok()
}

/// Opens glommio's file for `opening` through `/proc/self/fd`, direct when the engine's
/// descriptor is, and answers.
async fn open(opening: Opening, files: Files, settled: Settled) {
    let Some(slot) = slot(opening.index) else {
        let _ = opening
            .reply
            .send(Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        return;
    };
    let answer = match hosted::catch_panic(open_file(opening.fd, settled)).await {
        Some(Ok(file)) => {
            let mut files = files.borrow_mut();
            if files.len() <= slot {
                files.resize_with(slot + 1, || None);
            }
            files[slot] = Some(Rc::new(file));
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Err(std::io::Error::other("glommio panicked opening the file")),
    };
    let _ = opening.reply.send(answer);
}

/// glommio's file for the engine's descriptor `fd`, with its access mode and O_DIRECT.
async fn open_file(fd: RawFd, settled: Settled) -> std::io::Result<GFile> {
    // SAFETY: F_GETFL reads the flags of a descriptor the caller keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let access = flags & libc::O_ACCMODE;
    let mut options = glommio::io::OpenOptions::new();
    options
        .read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .append(flags & libc::O_APPEND != 0);
    let path = format!("/proc/self/fd/{fd}");
    let as_io = |e: GlommioError<()>| std::io::Error::from_raw_os_error(errno_of(&e));
    if flags & libc::O_DIRECT != 0 {
        settle_poll_probe(fd, &path, &settled).await;
        // O_DIRECT from the open itself: glommio sets it afterwards only off tmpfs, and takes
        // a block device's node (on devtmpfs) for a tmpfs file.
        options
            .custom_flags(libc::O_DIRECT)
            .dma_open(&path)
            .await
            .map(GFile::Direct)
            .map_err(as_io)
    } else {
        options
            .buffered_open(&path)
            .await
            .map(GFile::Buffered)
            .map_err(as_io)
    }
}

/// Settles, once per device and executor, glommio's choice of ring for the device's
/// `DmaFile`s, before the first of them is opened.
///
/// glommio decides whether a device can be polled (its IOPOLL ring) with one O_DIRECT read at
/// offset 0 of the first `DmaFile` opened on it, and keeps the answer for every later file of
/// the device. On an empty file that read ends at end-of-file before it reaches the device
/// and succeeds, so glommio takes any device for pollable, and every later read on a device
/// without poll queues fails with EOPNOTSUPP (seen here on ext4 over virtio; glommio issue
/// 605 reports the symptom). The first `DmaFile` of each device is therefore opened
/// write-only, on which that read fails at once (EBADF): glommio then keeps the device on its
/// interrupt-driven ring, as the uring backend runs by default, and logs an `error!` through
/// the `log` crate saying so. A file that cannot be opened write-only (read-only storage)
/// settles nothing, and glommio probes on the file itself.
async fn settle_poll_probe(fd: RawFd, path: &str, settled: &Settled) {
    // SAFETY: fstat writes one `stat` through the valid pointer, for a descriptor the caller
    // keeps open.
    let device = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut stat) == 0).then_some(stat.st_dev)
    };
    let Some(device) = device else {
        return;
    };
    if settled.borrow().contains(&device) {
        return;
    }
    let mut write_only = glommio::io::OpenOptions::new();
    write_only.write(true);
    if let Ok(file) = write_only.dma_open(path).await {
        drop(file.close().await);
        settled.borrow_mut().insert(device);
    }
}

/// Closes a glommio file through its ring (dropping one leaves glommio a close to make
/// later); a clone still held elsewhere is closed when it drops.
async fn close(file: Rc<GFile>) {
    match Rc::try_unwrap(file) {
        Ok(GFile::Direct(file)) => drop(file.close().await),
        Ok(GFile::Buffered(file)) => drop(file.close().await),
        Err(shared) => drop(shared),
    }
}

/// Runs one job to its result. Plain reads and writes are glommio's `read_at` and `write_at`,
/// which take only glommio's own buffers, so the bytes are copied (and counted); `sync_data`
/// is glommio's `fdatasync`. glommio has no fsync: `sync_all` runs as the blocking syscall on
/// this thread, as do vectored or flagged transfers and the space and metadata operations.
async fn run(job: Job, files: Files, common: Arc<Common>) {
    let call = *job.call();
    let native = match call.op() {
        Op::Read => call.buffer().is_some() && !call.is_empty(),
        Op::Write => call.buffer().is_some() && !call.is_empty() && call.rw_flags() == 0,
        Op::SyncData => true,
        _ => false,
    };
    let file = match native {
        true => slot(call.file_index()).and_then(|s| files.borrow().get(s).cloned().flatten()),
        false => None,
    };
    let Some(file) = file else {
        job.run();
        return;
    };
    hosted::finish_or_abort(job, native_op(call, &file, &common), "glommio").await;
}

/// One glommio operation for `call` on `file`; the bytes transferred or `-errno`.
async fn native_op(call: Syscall, file: &GFile, common: &Common) -> i64 {
    let errno = |e: GlommioError<()>| -i64::from(errno_of(&e));
    let len = call.len();
    match (call.op(), call.buffer()) {
        (Op::Read, Some(ptr)) => {
            let read = match file {
                GFile::Direct(f) => f.read_at(call.offset(), len).await,
                GFile::Buffered(f) => f.read_at(call.offset(), len).await,
            };
            let data = match read {
                Ok(data) => data,
                Err(e) => return errno(e),
            };
            let n = data.len().min(len);
            // SAFETY: `ptr` addresses `len` writable bytes that the request's slot owns until
            // this job's result is delivered (after this copy), and glommio's buffer is its
            // own allocation, so the two do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, n) };
            common.metrics().record_copy(n);
            n as i64
        }
        (Op::Write, Some(ptr)) => {
            // SAFETY: `ptr` addresses `len` initialized bytes that the request's slot owns
            // until this job's result is delivered, and nothing writes them meanwhile.
            let data = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
            common.metrics().record_copy(len);
            let written = match file {
                GFile::Direct(f) => {
                    let mut buffer = f.alloc_dma_buffer(len);
                    buffer.as_bytes_mut()[..len].copy_from_slice(data);
                    f.write_at(buffer, call.offset()).await
                }
                GFile::Buffered(f) => f.write_at(data.to_vec(), call.offset()).await,
            };
            let written = match written {
                Ok(n) => n,
                Err(e) => return errno(e),
            };
            if call.then_sync() && written == len {
                if let Err(e) = fdatasync(file).await {
                    return errno(e);
                }
            }
            written as i64
        }
        _ => fdatasync(file).await.map_or_else(errno, |()| 0),
    }
}

async fn fdatasync(file: &GFile) -> glommio::Result<(), ()> {
    match file {
        GFile::Direct(f) => f.fdatasync().await,
        GFile::Buffered(f) => f.fdatasync().await,
    }
}

/// Closes a file's glommio file when its last handle goes.
#[derive(Debug)]
pub struct CloseHook(pub Weak<Host>);

impl FileDropped for CloseHook {
    fn dropped(&self, _id: u64, backend_index: u32) {
        if let Some(host) = self.0.upgrade() {
            host.close(backend_index);
        }
    }
}
