//! The executor thread: a monoio runtime, owned by the engine, that runs each job the shared
//! lifecycle hands it ([`Job`]) as a task doing monoio file operations, and delivers the
//! result back into the job's result list.
//!
//! ```text
//!   submitting thread                         executor thread (monoio runtime)
//!   ThreadKernel::submit ──► Inbox ──wake──►  serve: one task per job
//!                                               read_at / write_at / sync_data / sync_all
//!   Driver / QueueDriver ◄── Done ◄─finish──    (anything else: the blocking syscall)
//! ```
//!
//! The jobs point into request buffers that the request's slot owns until the job's result
//! has been reaped, so the executor never lets a task go before its operation ends: the
//! runtime is dropped only after every task it spawned has delivered its result.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};

use engine_core::raw::hosted::{self, ExecutorThread, Inbox};
use engine_core::raw::{lock, FileDropped, Job, Runner, Syscall};
use engine_core::{Error, Op, Result};

/// Which monoio driver the executor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring.
    Uring,
    /// The legacy driver (epoll), which runs file operations as blocking syscalls on the
    /// executor thread; monoio picks it when io_uring is unavailable.
    Legacy,
}

impl DriverKind {
    /// A word for reports.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Legacy => "legacy (epoll)",
        }
    }
}

/// Which monoio driver to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriverChoice {
    /// monoio's choice: io_uring when the kernel has what monoio needs, else legacy.
    #[default]
    Auto,
    /// The io_uring driver; the engine fails to start without it.
    Uring,
    /// The legacy (epoll) driver.
    Legacy,
}

/// The executor thread and its inbox; the [`Runner`] of the engine's kernels.
#[derive(Debug)]
pub struct Host {
    executor: ExecutorThread,
    /// The files' descriptor slots.
    pub slots: Arc<Slots>,
    driver: DriverKind,
}

impl Host {
    /// Starts the executor thread with a monoio runtime of `entries` ring entries and the
    /// driver `choice` asks for.
    ///
    /// # Errors
    ///
    /// The OS error when the thread cannot be spawned or the runtime cannot be built.
    pub fn start(entries: u32, choice: DriverChoice) -> Result<Arc<Host>> {
        let inbox = Arc::new(Inbox::new());
        let slots = Arc::new(Slots::new().map_err(|e| {
            Error::from_io(&e, Op::Setup)
                .with_message("opening /dev/null for free descriptor slots")
        })?);
        let served_slots = Arc::clone(&slots);
        let (built_tx, built_rx) = std::sync::mpsc::channel::<std::io::Result<DriverKind>>();
        let served = Arc::clone(&inbox);
        let thread = std::thread::Builder::new()
            .name("engine-monoio".into())
            .spawn(move || {
                let uring = || {
                    // Completions that kernel workers post (zram, a buffered miss) wait for the
                    // executor's next kernel entry instead of interrupting it with an IPI each,
                    // and only the executor thread touches the ring (single issuer, deferred
                    // task work), as on the uring backend's queue rings. A kernel without some
                    // of these flags gets the ring it can make.
                    let setups: [fn(&mut io_uring::Builder); 3] = [
                        |b| {
                            b.setup_coop_taskrun()
                                .setup_taskrun_flag()
                                .setup_single_issuer()
                                .setup_defer_taskrun();
                        },
                        |b| {
                            b.setup_coop_taskrun().setup_taskrun_flag();
                        },
                        |_| {},
                    ];
                    let mut built = Err(std::io::Error::from_raw_os_error(libc::EINVAL));
                    for setup in setups {
                        let mut flags = io_uring::IoUring::builder();
                        setup(&mut flags);
                        built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                            .with_entries(entries)
                            .uring_builder(flags)
                            .build();
                        if built.is_ok() {
                            break;
                        }
                    }
                    built.map(monoio::FusionRuntime::Uring)
                };
                let runtime = match choice {
                    DriverChoice::Auto if monoio::utils::detect_uring() => uring(),
                    DriverChoice::Auto => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .with_entries(entries)
                        .build()
                        .map(monoio::FusionRuntime::Legacy),
                    DriverChoice::Uring => uring(),
                    DriverChoice::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .with_entries(entries)
                        .build()
                        .map(monoio::FusionRuntime::Legacy),
                };
                match runtime {
                    Err(e) => drop(built_tx.send(Err(e))),
                    Ok(monoio::FusionRuntime::Uring(mut runtime)) => {
                        let _ = built_tx.send(Ok(DriverKind::Uring));
                        runtime.block_on(serve(served, served_slots));
                    }
                    Ok(monoio::FusionRuntime::Legacy(mut runtime)) => {
                        let _ = built_tx.send(Ok(DriverKind::Legacy));
                        runtime.block_on(serve(served, served_slots));
                    }
                }
            })
            .map_err(|e| {
                Error::from_io(&e, Op::Setup).with_message("spawning the monoio executor thread")
            })?;
        let built = built_rx.recv();
        let driver = match built {
            Ok(Ok(driver)) => driver,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::from_io(&e, Op::Setup).with_message("building a monoio runtime"));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::new(
                    engine_core::ErrorKind::Other,
                    Op::Setup,
                    "the monoio executor thread ended while building its runtime",
                ));
            }
        };
        Ok(Arc::new(Host {
            executor: ExecutorThread::new(inbox, thread),
            slots,
            driver,
        }))
    }

    /// The driver monoio chose.
    pub fn driver(&self) -> DriverKind {
        self.driver
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

/// The executor's monoio files, one per descriptor slot, made on the slot's first job (see
/// [`Slots`]).
type Files = Rc<RefCell<Vec<Option<Rc<monoio::fs::File>>>>>;

/// The executor's main future: serves the inbox until shutdown, then hands the slots'
/// descriptors to the monoio files that own them.
async fn serve(inbox: Arc<Inbox>, slots: Arc<Slots>) {
    let files = Files::default();
    let run = {
        let (files, slots) = (Rc::clone(&files), Arc::clone(&slots));
        move |job| run(job, Rc::clone(&files), Arc::clone(&slots))
    };
    inbox
        .serve(|task| drop(monoio::spawn(task)), run, || {})
        .await;
    // The monoio files close their slots' descriptors; the table must not close them again.
    slots.release_wrapped();
    files.borrow_mut().clear();
}

/// Runs one job to its result. Plain reads and writes and both syncs are monoio's own
/// operations; vectored or flagged transfers (monoio has no `preadv2`/`pwritev2`) and the
/// space and metadata operations run as their blocking syscall on this thread.
async fn run(job: Job, files: Files, slots: Arc<Slots>) {
    let call = *job.call();
    let native = match call.op() {
        Op::Read => call.buffer().is_some(),
        Op::Write => call.buffer().is_some() && call.rw_flags() == 0,
        Op::SyncData | Op::SyncAll => true,
        _ => false,
    };
    let file = match native {
        true => file_of(call.file_index(), &files, &slots),
        false => None,
    };
    let Some(file) = file else {
        job.run();
        return;
    };
    hosted::finish_or_abort(job, native_op(call, &file), "monoio").await;
}

/// The monoio file of descriptor slot `index` (a file's backend index, 1-based), made on the
/// slot's first use; `None` for a file without a slot.
fn file_of(index: u32, files: &Files, slots: &Slots) -> Option<Rc<monoio::fs::File>> {
    let slot = usize::try_from(index.checked_sub(1)?).ok()?;
    let mut files = files.borrow_mut();
    if let Some(Some(file)) = files.get(slot) {
        return Some(Rc::clone(file));
    }
    let fd = slots.wrap(slot)?;
    // SAFETY: the slot's descriptor is open for as long as the executor runs (the table
    // closes slots only after it has exited), and from here on this monoio file is the only
    // owner that closes it (`Slots::release_wrapped` hands it over at exit).
    let std = unsafe { std::fs::File::from_raw_fd(fd) };
    let file = Rc::new(monoio::fs::File::from_std(std).ok()?);
    if files.len() <= slot {
        files.resize(slot + 1, None);
    }
    files[slot] = Some(Rc::clone(&file));
    Some(file)
}

/// One monoio operation for `call` on `file`; the bytes transferred or `-errno`.
async fn native_op(call: Syscall, file: &monoio::fs::File) -> i64 {
    let errno = |e: std::io::Error| -i64::from(e.raw_os_error().unwrap_or(libc::EIO));
    match (call.op(), call.buffer()) {
        (Op::Read, Some(ptr)) => {
            let buf = RawBufMut {
                ptr,
                len: call.len(),
            };
            match file.read_at(buf, call.offset()).await.0 {
                Ok(n) => n as i64,
                Err(e) => errno(e),
            }
        }
        (Op::Write, Some(ptr)) => {
            let buf = RawBuf {
                ptr,
                len: call.len(),
            };
            let written = match file.write_at(buf, call.offset()).await.0 {
                Ok(n) => n,
                Err(e) => return errno(e),
            };
            if call.then_sync() && written == call.len() {
                if let Err(e) = file.sync_data().await {
                    return errno(e);
                }
            }
            written as i64
        }
        (Op::SyncData, _) => file.sync_data().await.map_or_else(errno, |()| 0),
        _ => file.sync_all().await.map_or_else(errno, |()| 0),
    }
}

/// Descriptor slots: one private descriptor per open file of the engine, for monoio's `File`,
/// which closes what it holds and so cannot hold the engine's own descriptor.
///
/// A file gets a slot at open ([`Slots::claim`], its backend index is the slot + 1): a
/// duplicate of its descriptor, or a free slot's descriptor pointed at it with `dup3`. When
/// the file's last handle goes ([`Slots::release`], before the engine closes its own
/// descriptor), the slot's descriptor is pointed at `/dev/null`, so the file's storage goes
/// when the engine closes it, and the slot is free for the next file. No request of the file
/// is in flight at either moment (every request holds a handle), so monoio never sees a slot
/// change under an operation. Slot descriptors are opened once and reused: a steady workload
/// opens and closes nothing per request.
#[derive(Debug)]
pub struct Slots {
    table: Mutex<SlotTable>,
    /// What a free slot points at.
    null: OwnedFd,
}

#[derive(Debug, Default)]
struct SlotTable {
    /// Each slot's descriptor; `None` once a monoio file on the executor owns it.
    fds: Vec<SlotFd>,
    free: Vec<usize>,
}

#[derive(Debug)]
enum SlotFd {
    /// The table owns it: no monoio file was made for the slot yet.
    Owned(OwnedFd),
    /// The executor's monoio file owns it (the number, for `dup3`).
    Wrapped(RawFd),
    /// Handed over at executor exit; closed by the monoio file.
    Gone,
}

impl SlotFd {
    fn raw(&self) -> Option<RawFd> {
        match self {
            SlotFd::Owned(fd) => Some(fd.as_raw_fd()),
            SlotFd::Wrapped(fd) => Some(*fd),
            SlotFd::Gone => None,
        }
    }
}

/// `-errno` of the last failed syscall.
fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Slots {
    fn new() -> std::io::Result<Slots> {
        let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
        Ok(Slots {
            table: Mutex::new(SlotTable::default()),
            null: OwnedFd::from(null),
        })
    }

    /// A slot for the open file `fd`; its backend index (slot + 1).
    ///
    /// # Errors
    ///
    /// The errno of `dup3` or `fcntl(F_DUPFD_CLOEXEC)` (`EMFILE` when the process has no
    /// descriptor left).
    pub fn claim(&self, fd: BorrowedFd<'_>) -> std::result::Result<u32, i32> {
        let mut table = lock(&self.table);
        if let Some(slot) = table.free.pop() {
            let Some(target) = table.fds[slot].raw() else {
                return Err(libc::EBADF);
            };
            // SAFETY: both descriptors are open (the caller's, and the slot's, which the table
            // or the executor's monoio file keeps open); no operation of monoio is on the free
            // slot.
            if unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) } < 0 {
                let errno = last_errno();
                table.free.push(slot);
                return Err(errno);
            }
            return u32::try_from(slot + 1).map_err(|_| libc::EMFILE);
        }
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
        table.fds.push(SlotFd::Owned(dup));
        u32::try_from(table.fds.len()).map_err(|_| libc::EMFILE)
    }

    /// Lets go of the file in slot `index - 1`: its descriptor now points at `/dev/null`, and
    /// the slot is free.
    pub fn release(&self, index: u32) {
        let Some(slot) = index.checked_sub(1).and_then(|s| usize::try_from(s).ok()) else {
            return;
        };
        let mut table = lock(&self.table);
        let Some(target) = table.fds.get(slot).and_then(SlotFd::raw) else {
            return;
        };
        // SAFETY: both descriptors are open; no request of the file is in flight (its last
        // handle is going), so no monoio operation uses the slot.
        if unsafe { libc::dup3(self.null.as_raw_fd(), target, libc::O_CLOEXEC) } < 0 {
            // The slot still holds the file (and its storage) open; it is not reused.
            return;
        }
        table.free.push(slot);
    }

    /// The descriptor of `slot`, now owned by a monoio file the executor makes for it.
    fn wrap(&self, slot: usize) -> Option<RawFd> {
        let mut table = lock(&self.table);
        let entry = table.fds.get_mut(slot)?;
        match std::mem::replace(entry, SlotFd::Gone) {
            SlotFd::Owned(fd) => {
                let raw = fd.into_raw_fd();
                *entry = SlotFd::Wrapped(raw);
                Some(raw)
            }
            other => {
                *entry = other;
                None
            }
        }
    }

    /// At executor exit: the monoio files close the descriptors they own.
    fn release_wrapped(&self) {
        let mut table = lock(&self.table);
        for entry in &mut table.fds {
            if let SlotFd::Wrapped(_) = entry {
                *entry = SlotFd::Gone;
            }
        }
    }
}

/// Frees a file's descriptor slot when its last handle goes.
#[derive(Debug)]
pub struct SlotHook(pub Weak<Host>);

impl FileDropped for SlotHook {
    fn dropped(&self, _id: u64, backend_index: u32) {
        if let Some(host) = self.0.upgrade() {
            host.slots.release(backend_index);
        }
    }
}

/// A request buffer monoio reads into: `len` bytes at `ptr`, owned by the request's slot.
struct RawBufMut {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` addresses `len` writable bytes owned by the request's slot until the job's
// result is delivered, which happens only after monoio has handed the buffer back (the task
// awaits the operation to its end). The bytes are initialized (request buffers are), so
// `set_init` has nothing to record.
unsafe impl monoio::buf::IoBufMut for RawBufMut {
    fn write_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    fn bytes_total(&mut self) -> usize {
        self.len
    }

    unsafe fn set_init(&mut self, _pos: usize) {}
}

/// A request buffer monoio writes from, as [`RawBufMut`].
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: as for `RawBufMut`; monoio only reads these `len` initialized bytes.
unsafe impl monoio::buf::IoBuf for RawBuf {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}
