//! Requests as jobs that run elsewhere: a [`Kernel`] ([`ThreadKernel`]) that turns each
//! submission into a [`Job`] and hands it to a [`Runner`], and the runner of blocking syscalls,
//! a bounded pool of worker threads ([`Pool`]). The sync backend is the pool; backends that
//! need a thread for what their kernel interface cannot do (AIO without fsync) use one too; and
//! a backend hosted on another runtime's executor (monoio) is a runner whose thread runs each
//! job as one of that runtime's operations.
//!
//! Three things keep the thread hops away from requests that do not need them:
//! - a buffered read is first tried on the submitting thread with `preadv2(RWF_NOWAIT)`; only
//!   a read that would block goes to the pool (a cached read costs what `pread` costs);
//! - a thread that waits for completions runs queued jobs itself before it sleeps (a job that
//!   blocks in the device only when it is the pool's one job: see [`Pool::help_once`]);
//! - while syscalls return in microseconds (a RAM-backed device, a CPU-bound copy), a new job
//!   wakes at most one sleeping worker and a worker that takes a job while more wait wakes the
//!   next, so the threads already awake serve the device without a wake-up per request; once
//!   syscalls block (a disk), every queued job gets a worker on its way at once, so the device
//!   sees the whole depth.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::error::{Error, Op, Result};
use crate::file::FileRaw;
use crate::geometry::Support;
use crate::raw::driver::lock;
use crate::raw::inflight::Io;
use crate::raw::kernel::{Kernel, Notify, Reaped, Wait};

/// The file flag recorded when a file refused `RWF_NOWAIT` (`EOPNOTSUPP`).
const FILE_NO_NOWAIT: u32 = 1 << 0;

/// One submission as a syscall's parameters, with the address of the request's buffer, which
/// stays owned by the request's slot until the result has been reaped. A [`Runner`] reads it
/// to decide how to run the job; [`Job::run`] runs it as a blocking syscall.
#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    op: Op,
    fd: RawFd,
    /// The file's backend index ([`crate::raw::FileRaw::backend_index`]).
    file_index: u32,
    /// The buffer (a read's or write's), the `iovec` array (a vectored one's), or the statx
    /// record (metadata).
    ptr: *mut u8,
    /// The transfer's length, or the range's (allocate).
    len: usize,
    /// The entries at `ptr` of a vectored read or write; 0 for the other operations.
    iovcnt: usize,
    /// The file offset, or the new length (set_len).
    offset: u64,
    /// `fallocate`'s mode bits.
    mode: i32,
    /// A write's `RWF_*` flags.
    rw_flags: i32,
    /// An `fdatasync` after a write that transferred everything ([`Kernel::links_sync`]).
    then_sync: bool,
}

// SAFETY: the pointer addresses a buffer owned by a request slot for as long as the syscall
// can run (see `Syscall::run`), and the syscalls themselves may run on any thread.
unsafe impl Send for Syscall {}

impl Syscall {
    fn of(io: &mut Io<'_>) -> Syscall {
        let (fd, len) = (io.file().raw_fd(), io.len());
        let file_index = io.file().backend_index();
        match io {
            Io::Read { offset, buf, .. } => Syscall {
                ptr: buf.as_mut_ptr(),
                len: buf.len(),
                offset: *offset,
                ..Syscall::bare(Op::Read, fd, file_index)
            },
            Io::Write {
                offset,
                buf,
                rw_flags,
                then_sync,
                ..
            } => Syscall {
                ptr: buf.as_ptr().cast_mut(),
                len: buf.len(),
                offset: *offset,
                rw_flags: *rw_flags,
                then_sync: *then_sync,
                ..Syscall::bare(Op::Write, fd, file_index)
            },
            Io::ReadVectored { offset, bufs, .. } => Syscall {
                len,
                ptr: bufs.as_mut_ptr().cast(),
                iovcnt: bufs.len(),
                offset: *offset,
                ..Syscall::bare(Op::Read, fd, file_index)
            },
            Io::WriteVectored {
                offset,
                bufs,
                rw_flags,
                then_sync,
                ..
            } => Syscall {
                len,
                ptr: bufs.as_ptr().cast_mut().cast(),
                iovcnt: bufs.len(),
                offset: *offset,
                rw_flags: *rw_flags,
                then_sync: *then_sync,
                ..Syscall::bare(Op::Write, fd, file_index)
            },
            Io::SyncData { .. } => Syscall::bare(Op::SyncData, fd, file_index),
            Io::SyncAll { .. } => Syscall::bare(Op::SyncAll, fd, file_index),
            Io::Allocate {
                offset, len, mode, ..
            } => Syscall {
                // The shared lifecycle bounds the range below 2^63.
                len: usize::try_from(*len).unwrap_or(usize::MAX),
                offset: *offset,
                mode: mode.bits(),
                ..Syscall::bare(Op::Allocate, fd, file_index)
            },
            Io::SetLen { len, .. } => Syscall {
                offset: *len,
                ..Syscall::bare(Op::SetLen, fd, file_index)
            },
            Io::Metadata { statx, .. } => Syscall {
                ptr: statx.cast(),
                ..Syscall::bare(Op::Metadata, fd, file_index)
            },
        }
    }

    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The descriptor, which the request keeps open until its result has been reaped.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The file's backend index ([`crate::raw::FileRaw::backend_index`]), 0 when the
    /// backend gave it none.
    pub fn file_index(&self) -> u32 {
        self.file_index
    }

    /// The transfer's length (a vectored one's total), or the range's (allocate).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a transfer of no bytes, and for operations that move none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file offset (a transfer's, an allocated range's), or the new length (set_len).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A write's `RWF_*` flags.
    pub fn rw_flags(&self) -> i32 {
        self.rw_flags
    }

    /// True when an `fdatasync` is to follow a write that transferred everything.
    pub fn then_sync(&self) -> bool {
        self.then_sync
    }

    /// True for a vectored read or write.
    pub fn is_vectored(&self) -> bool {
        self.iovcnt > 0
    }

    /// A plain read's or write's buffer: `len` bytes, writable for a read, owned by the
    /// request's slot until the job's result has been delivered and reaped. `None` for
    /// vectored transfers and the other operations.
    pub fn buffer(&self) -> Option<*mut u8> {
        (matches!(self.op, Op::Read | Op::Write) && self.iovcnt == 0).then_some(self.ptr)
    }

    /// A syscall of `op` on `fd` with nothing else set.
    fn bare(op: Op, fd: RawFd, file_index: u32) -> Syscall {
        Syscall {
            op,
            fd,
            file_index,
            ptr: std::ptr::null_mut(),
            len: 0,
            iovcnt: 0,
            offset: 0,
            mode: 0,
            rw_flags: 0,
            then_sync: false,
        }
    }

    /// Runs the syscall (`pread`/`pwrite`, or `preadv2`/`pwritev2` when there are `flags` or
    /// several buffers; `fdatasync`, `fsync`, `fallocate`, `ftruncate`, `statx`); returns the
    /// bytes transferred or `-errno`.
    ///
    /// # Safety
    ///
    /// For a read or write, `ptr` must be valid for `len` bytes (writable for a read) for the
    /// whole call, or, for a vectored one, be an array of `iovcnt` such `iovec`s; for metadata
    /// valid for one writable `statx`: the request slot owning the memory must not have been
    /// completed yet.
    unsafe fn run(&self, flags: i32) -> i64 {
        let flags = flags | self.rw_flags;
        let one = libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        };
        let (iov, iovcnt) = match self.iovcnt {
            0 => (&raw const one, 1),
            // At most Request::IOV_MAX entries: the lifecycle splits longer requests.
            n => (self.ptr.cast_const().cast(), n as libc::c_int),
        };
        let offset = self.offset as libc::off_t;
        let rc = match self.op {
            // Without flags, plain pread/pwrite: the kernel then has no iovec to import.
            // SAFETY: `len` bytes at `ptr`, valid for the call (the caller's contract); the
            // descriptor belongs to a file the request holds open.
            Op::Read if flags == 0 && self.iovcnt == 0 => unsafe {
                libc::pread(self.fd, self.ptr.cast(), self.len, offset)
            },
            // SAFETY: as above, read-only.
            Op::Write if flags == 0 && self.iovcnt == 0 => unsafe {
                libc::pwrite(self.fd, self.ptr.cast_const().cast(), self.len, offset)
            },
            // SAFETY: `iovcnt` iovecs at `iov`, each over memory valid for the call (the
            // caller's contract); the descriptor belongs to a file the request holds open.
            Op::Read => unsafe { libc::preadv2(self.fd, iov, iovcnt, offset, flags) },
            // SAFETY: as above, read-only.
            Op::Write => unsafe { libc::pwritev2(self.fd, iov, iovcnt, offset, flags) },
            // SAFETY: takes no pointers.
            Op::SyncData => unsafe { libc::fdatasync(self.fd) as isize },
            // SAFETY: takes no pointers; the lifecycle bounds offset and length below 2^63.
            Op::Allocate => unsafe {
                libc::fallocate(self.fd, self.mode, offset, self.len as libc::off_t) as isize
            },
            // SAFETY: takes no pointers.
            Op::SetLen => unsafe { libc::ftruncate(self.fd, offset) as isize },
            Op::Metadata => {
                // SAFETY: `ptr` addresses the request's statx record for the whole call (the
                // caller's contract).
                let statx = unsafe { &mut *self.ptr.cast::<libc::statx>() };
                return crate::metadata::statx_into(self.fd, statx);
            }
            // SAFETY: takes no pointers.
            _ => unsafe { libc::fsync(self.fd) as isize },
        };
        let last_errno = || {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        };
        if rc < 0 {
            return -i64::from(last_errno());
        }
        if self.then_sync && rc as usize == self.len {
            // The write is whole: its linked fdatasync, on the same thread, right after it.
            // SAFETY: takes no pointers.
            if unsafe { libc::fdatasync(self.fd) } < 0 {
                return -i64::from(last_errno());
            }
        }
        rc as i64
    }
}

/// Runs `io` as a blocking syscall on the calling thread, with `preadv2`/`pwritev2` `flags`;
/// returns the bytes transferred or `-errno` ([`Io::run_blocking`]).
pub(crate) fn run_blocking(io: &mut Io<'_>, flags: i32) -> i64 {
    let call = Syscall::of(io);
    // SAFETY: `io` borrows the request's buffer (or statx record) for this whole call.
    unsafe { call.run(flags) }
}

/// Where the results of one kernel's jobs go: a list its owner reaps, and a way to tell it.
pub struct Done {
    list: Mutex<DoneList>,
    ready: Condvar,
    /// Called after each result, for owners that reap on the delivering thread (the async
    /// engine) or wait elsewhere (an eventfd).
    notify: OnceLock<Notify>,
}

#[derive(Debug, Default)]
struct DoneList {
    results: Vec<Reaped>,
    /// Results delivered so far (to wake a waiter even when someone else reaped them).
    delivered: u64,
    /// The owner sleeps in [`Done::wait`].
    waiting: bool,
    /// [`Done::interrupt`] was called since the last wait.
    interrupted: bool,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("list", &*lock(&self.list))
            .field("notify", &self.notify.get().is_some())
            .finish()
    }
}

impl Done {
    /// An empty result list with room for `depth` results.
    pub fn new(depth: usize) -> Arc<Done> {
        Arc::new(Done {
            list: Mutex::new(DoneList {
                results: Vec::with_capacity(depth),
                ..DoneList::default()
            }),
            ready: Condvar::new(),
            notify: OnceLock::new(),
        })
    }

    /// Calls `notify` after each delivered result (set once).
    pub fn set_notify(&self, notify: Notify) {
        let _ = self.notify.set(notify);
    }

    fn push(&self, result: Reaped) {
        let mut list = lock(&self.list);
        list.results.push(result);
        list.delivered += 1;
        let waiting = list.waiting;
        drop(list);
        if waiting {
            self.ready.notify_one();
        }
        if let Some(notify) = self.notify.get() {
            notify();
        }
    }

    fn take(&self, out: &mut [Reaped]) -> usize {
        let mut list = lock(&self.list);
        let n = list.results.len().min(out.len());
        for (slot, result) in out.iter_mut().zip(list.results.drain(..n)) {
            *slot = result;
        }
        n
    }

    fn len(&self) -> usize {
        lock(&self.list).results.len()
    }

    /// Blocks until a result was delivered after `seen`, at least `min` results are
    /// waiting, or [`Done::interrupt`] was called.
    fn wait(&self, min: usize, seen: u64) {
        let mut list = lock(&self.list);
        while list.results.len() < min && list.delivered == seen && !list.interrupted {
            list.waiting = true;
            list = self
                .ready
                .wait(list)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            list.waiting = false;
        }
        list.interrupted = false;
    }

    fn delivered(&self) -> u64 {
        lock(&self.list).delivered
    }

    /// Makes a thread waiting for this list's results return.
    pub fn interrupt(&self) {
        let mut list = lock(&self.list);
        list.interrupted = true;
        let waiting = list.waiting;
        drop(list);
        if waiting {
            self.ready.notify_one();
        }
    }
}

/// One request's submission handed to a [`Runner`]: the syscall it stands for, and where its
/// result goes. Every job ends in exactly one result: [`Job::run`] runs the syscall on the
/// calling thread, [`Job::finish`] delivers a result the runner got some other way, and a job
/// dropped before either fails its request with `ECANCELED`, so a runner that loses a job
/// (its thread gone) cannot leave a request waiting forever. Drop a job only before its
/// memory was handed to anything that might still use it.
pub struct Job {
    slot: u32,
    call: Syscall,
    done: Arc<Done>,
    delivered: bool,
}

impl Job {
    /// The syscall this job stands for.
    pub fn call(&self) -> &Syscall {
        &self.call
    }

    /// Runs the syscall as a blocking call on this thread and delivers its result.
    pub fn run(mut self) {
        let call = self.call;
        // A panic in the syscall path must not lose the result: the request then fails, and
        // its buffer comes back with its completion like any other.
        let result = std::panic::catch_unwind(|| {
            // SAFETY: the job's slot owns the buffer until this result is reaped, which cannot
            // happen before it is delivered just below.
            unsafe { call.run(0) }
        })
        .unwrap_or(-i64::from(libc::ECANCELED));
        self.deliver(result);
    }

    /// Delivers `result`, the bytes transferred or `-errno`, as the job's outcome. From this
    /// call on the request may complete and its buffer be reused: nothing may touch the
    /// memory of [`Syscall::buffer`] any more.
    pub fn finish(mut self, result: i64) {
        self.deliver(result);
    }

    fn deliver(&mut self, result: i64) {
        self.delivered = true;
        self.done.push(Reaped {
            slot: self.slot,
            result,
        });
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.delivered {
            self.deliver(-i64::from(libc::ECANCELED));
        }
    }
}

/// Where a [`ThreadKernel`]'s jobs run: a pool of worker threads ([`Pool`]), or another
/// runtime's executor thread.
pub trait Runner: Send + Sync + std::fmt::Debug + 'static {
    /// Takes every job in `jobs` (leaving it empty) to run them, each to exactly one result
    /// (see [`Job`]). Must not block on the jobs themselves: it is called under the async
    /// driver's lock.
    fn enqueue(&self, jobs: &mut Vec<Job>);

    /// Runs one queued job on the calling thread, if the runner has one it can give away: a
    /// thread that waits for results helps instead of sleeping. The default gives none.
    fn help(&self) -> bool {
        false
    }
}

struct Jobs {
    queue: VecDeque<Job>,
    /// Set once: no job is accepted after it, and workers exit when the queue is empty.
    shutdown: bool,
    /// Workers asleep on the condition variable.
    idle: usize,
    /// Workers woken and not yet holding a job.
    waking: usize,
    /// A moving average of how long a job's syscall takes, in nanoseconds: above
    /// [`BLOCKING_NS`] the device blocks, and every queued job gets a worker at once.
    job_ns: u64,
}

impl Jobs {
    /// Whether a waiting thread should take a queued job, with `threads` workers: see
    /// [`Pool::help_once`]. Workers not asleep on the condition variable are running a job
    /// (a woken one counts as asleep until it takes one).
    fn may_help(&self, threads: usize) -> bool {
        let running = threads.saturating_sub(self.idle);
        self.job_ns <= BLOCKING_NS || (running == 0 && self.queue.len() <= 1)
    }
}

/// The average syscall time above which jobs are taken to block in the device (a disk's
/// latency) rather than run on the CPU (a RAM-backed device's copy, a few microseconds).
const BLOCKING_NS: u64 = 20_000;

/// A bounded pool of worker threads running blocking syscalls.
pub struct Pool {
    jobs: Mutex<Jobs>,
    work: Condvar,
    threads: AtomicUsize,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads.load(Ordering::Relaxed))
            .finish()
    }
}

impl Pool {
    /// Starts `threads` workers named `<name>-<i>`, with room queued for `depth` jobs.
    ///
    /// # Errors
    ///
    /// The OS error when a thread cannot be spawned (the workers already started are stopped).
    pub fn start(threads: usize, depth: usize, name: &str) -> Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            jobs: Mutex::new(Jobs {
                queue: VecDeque::with_capacity(depth),
                shutdown: false,
                idle: 0,
                waking: 0,
                // Taken to block until measured: the first jobs get their workers at once.
                job_ns: BLOCKING_NS * 2,
            }),
            work: Condvar::new(),
            threads: AtomicUsize::new(threads),
            handles: Mutex::new(Vec::with_capacity(threads)),
        });
        for index in 0..threads {
            let worker = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => lock(&pool.handles).push(handle),
                Err(e) => {
                    pool.shutdown();
                    return Err(Error::from_io(&e, Op::Setup)
                        .with_message(format!("spawning worker thread {index} of {threads}")));
                }
            }
        }
        Ok(pool)
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    fn enqueue_jobs(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut guard = lock(&self.jobs);
        if guard.shutdown {
            // The workers are gone or going: run the jobs here, so each still completes.
            drop(guard);
            for job in jobs.drain(..) {
                job.run();
            }
            return;
        }
        guard.queue.extend(jobs.drain(..));
        let wake = Pool::should_wake(&mut guard);
        drop(guard);
        if wake {
            // One worker; it wakes the next if it finds more queued.
            self.work.notify_one();
        }
    }

    /// Decides, under the lock, whether to wake a sleeping worker for the queued jobs: one
    /// per queued job not yet covered while jobs block in the device; otherwise only when none
    /// is already on its way (it takes the next job, and wakes another if more wait), as
    /// another wake-up would cost more than the job.
    fn should_wake(jobs: &mut Jobs) -> bool {
        let wanted = if jobs.job_ns > BLOCKING_NS {
            jobs.queue.len()
        } else {
            jobs.queue.len().min(1)
        };
        let wake = wanted > jobs.waking && jobs.idle > jobs.waking;
        if wake {
            jobs.waking += 1;
        }
        wake
    }

    /// Runs one queued job on the calling thread, if there is one it should take. While jobs
    /// run on the CPU, any. While they block in the device (a disk's write, a durable write's
    /// flush), only a lone job (nothing else queued or running): it saves the hand-off, and
    /// nothing can finish meanwhile. Beside other jobs, a blocking one already has a worker
    /// on its way (see [`Pool::should_wake`]); run here, it would hold the waiting thread in
    /// the device, where it can neither reap the jobs that finish meanwhile nor submit what
    /// their futures do next.
    fn help_once(&self) -> bool {
        let job = {
            let mut jobs = lock(&self.jobs);
            if !jobs.may_help(self.threads()) {
                return false;
            }
            jobs.queue.pop_front()
        };
        match job {
            Some(job) => {
                job.run();
                true
            }
            None => false,
        }
    }

    /// The next job for a worker, sleeping until there is one; `None` at shutdown. `ran_ns` is
    /// how long the worker's previous job took, if it ran one.
    fn next_job(&self, ran_ns: Option<u64>) -> Option<Job> {
        let mut guard = lock(&self.jobs);
        if let Some(ns) = ran_ns {
            // Bounded (a second counts as a second), so the sum cannot overflow.
            guard.job_ns = (guard.job_ns * 7 + ns.min(1_000_000_000)) / 8;
        }
        loop {
            if let Some(job) = guard.queue.pop_front() {
                let more = Pool::should_wake(&mut guard);
                drop(guard);
                if more {
                    self.work.notify_one();
                }
                return Some(job);
            }
            if guard.shutdown {
                return None;
            }
            guard.idle += 1;
            guard = self
                .work
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.idle -= 1;
            // Woken (or spuriously): no longer on its way, whatever it finds.
            guard.waking = guard.waking.saturating_sub(1);
        }
    }

    fn run(&self) {
        crate::raw::driver::reserve_wakes();
        let mut ran_ns = None;
        while let Some(job) = self.next_job(ran_ns) {
            let started = std::time::Instant::now();
            job.run();
            ran_ns = Some(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// Stops accepting jobs, lets the workers finish the queued ones and joins them.
    /// Idempotent.
    pub fn shutdown(&self) {
        lock(&self.jobs).shutdown = true;
        self.work.notify_all();
        let handles = std::mem::take(&mut *lock(&self.handles));
        let current = std::thread::current().id();
        for handle in handles {
            // A worker cannot join itself; that only happens when the last handle of the pool
            // is dropped from a completion it runs, and then the worker exits on its own.
            if handle.thread().id() != current {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Runner for Pool {
    fn enqueue(&self, jobs: &mut Vec<Job>) {
        self.enqueue_jobs(jobs);
    }

    fn help(&self) -> bool {
        self.help_once()
    }
}

/// A [`Kernel`] of jobs: each runs on the submitting thread (inline mode, or a read that
/// `RWF_NOWAIT` shows would not block) or on a [`Runner`], by default a [`Pool`] of blocking
/// syscalls.
#[derive(Debug)]
pub struct ThreadKernel<R: Runner = Pool> {
    pool: Option<Arc<R>>,
    done: Arc<Done>,
    /// Pushed and not yet handed to the pool.
    batch: Vec<Job>,
    /// Results of syscalls run at push.
    immediate: VecDeque<Reaped>,
    /// Pushed and not yet reaped.
    in_flight: usize,
    nowait: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("slot", &self.slot)
            .field("call", &self.call)
            .finish()
    }
}

impl<R: Runner> ThreadKernel<R> {
    /// A kernel over `pool` (or, with `None`, running every syscall on the submitting thread)
    /// for up to `depth` requests. With `nowait`, buffered reads are first tried on the
    /// submitting thread with `RWF_NOWAIT`.
    pub fn new(pool: Option<Arc<R>>, depth: usize, nowait: bool) -> ThreadKernel<R> {
        ThreadKernel {
            pool,
            done: Done::new(depth),
            batch: Vec::with_capacity(depth),
            immediate: VecDeque::with_capacity(depth),
            in_flight: 0,
            nowait,
        }
    }

    /// The [`Wait`] for this kernel in the async API: it helps the pool, or waits for results.
    pub fn waiter(&self) -> PoolWait<R> {
        PoolWait {
            pool: self.pool.clone(),
            done: Arc::clone(&self.done),
        }
    }

    /// Where this kernel's pool results go, for backends that wait on them elsewhere.
    pub fn done(&self) -> &Arc<Done> {
        &self.done
    }

    /// Runs `io` on the calling thread now; the result comes back through `reap`.
    pub fn run_now(&mut self, slot: u32, mut io: Io<'_>) {
        let call = Syscall::of(&mut io);
        // SAFETY: `io` borrows the request's buffer for this whole call.
        let result = unsafe { call.run(0) };
        self.immediate.push_back(Reaped { slot, result });
        self.in_flight += 1;
    }

    /// Tries a buffered read with `RWF_NOWAIT` on the calling thread; true when it completed
    /// (whole, or with an error other than would-block). An `O_DIRECT` read is never tried:
    /// `RWF_NOWAIT` does not stop it waiting for the device, so the calling thread would run
    /// every read to completion, one at a time.
    fn try_nowait(&mut self, slot: u32, io: &mut Io<'_>) -> bool {
        let (Io::Read { file, .. } | Io::ReadVectored { file, .. }) = io else {
            return false;
        };
        if file.options().is_direct()
            || file.geometry().nowait == Support::Unsupported
            || file.backend_flags() & FILE_NO_NOWAIT != 0
        {
            return false;
        }
        let call = Syscall::of(io);
        // SAFETY: `io` borrows the request's buffer for this whole call.
        let result = unsafe { call.run(libc::RWF_NOWAIT) };
        let complete = match result {
            // A short result may be a partly cached range rather than end of file: the pool's
            // blocking read decides.
            n if n >= 0 => n as usize == call.len,
            e if e == -i64::from(libc::EAGAIN) => false,
            e if e == -i64::from(libc::EOPNOTSUPP) => {
                io.file().set_backend_flag(FILE_NO_NOWAIT);
                false
            }
            _ => true,
        };
        if complete {
            self.immediate.push_back(Reaped { slot, result });
            self.in_flight += 1;
        }
        complete
    }

    fn available(&self) -> usize {
        self.immediate.len() + self.done.len()
    }
}

impl<R: Runner> Kernel for ThreadKernel<R> {
    fn links_sync(&self) -> bool {
        true
    }

    fn push(&mut self, slot: u32, mut io: Io<'_>) -> bool {
        let Some(_) = &self.pool else {
            self.run_now(slot, io);
            return true;
        };
        if self.nowait && self.try_nowait(slot, &mut io) {
            return true;
        }
        self.batch.push(Job {
            slot,
            call: Syscall::of(&mut io),
            done: Arc::clone(&self.done),
            delivered: false,
        });
        self.in_flight += 1;
        true
    }

    fn submit(&mut self) -> Result<()> {
        if let Some(pool) = &self.pool {
            pool.enqueue(&mut self.batch);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut [Reaped]) -> usize {
        let mut n = Reaped::drain(&mut self.immediate, out);
        n += self.done.take(&mut out[n..]);
        self.in_flight -= n;
        n
    }

    fn wait(&mut self, min: usize) -> Result<()> {
        let min = min.min(self.in_flight);
        // Each round runs a queued job or sleeps until a result arrives: bounded by the jobs
        // in flight.
        while self.available() < min {
            let seen = self.done.delivered();
            if self.pool.as_ref().is_some_and(|pool| pool.help()) {
                continue;
            }
            self.done.wait(min - self.immediate.len(), seen);
        }
        Ok(())
    }

    fn wake(&mut self) {
        self.done.interrupt();
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn notify_with(&mut self, notify: Notify) -> bool {
        // Inline syscalls complete at push, on the polling thread, so the async engine needs
        // no reaper either way.
        self.done.set_notify(notify);
        true
    }
}

/// The async API's [`Wait`] for a [`ThreadKernel`]: the waiting thread runs a queued job if
/// the runner gives one away (no hand-off), and otherwise sleeps until a result arrives.
#[derive(Debug)]
pub struct PoolWait<R: Runner = Pool> {
    pool: Option<Arc<R>>,
    done: Arc<Done>,
}

impl<R: Runner> Wait for PoolWait<R> {
    fn wait(&self) -> Result<()> {
        let seen = self.done.delivered();
        if self.pool.as_ref().is_some_and(|pool| pool.help()) {
            return Ok(());
        }
        // Results delivered before this wait and not reaped yet return it at once: the
        // workers that delivered them reap only for unattended slots.
        self.done.wait(1, seen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn sync_job(fd: RawFd, slot: u32, done: &Arc<Done>) -> Job {
        Job {
            slot,
            call: Syscall::bare(Op::SyncData, fd, 0),
            done: Arc::clone(done),
            delivered: false,
        }
    }

    #[test]
    fn a_blocking_job_is_taken_only_while_no_worker_runs_one() {
        let jobs = |idle, waking, queued, job_ns| {
            Jobs {
                queue: VecDeque::new(),
                shutdown: false,
                idle,
                waking,
                job_ns,
            }
            .with_queued(queued)
        };
        let blocking = BLOCKING_NS * 10;
        // Two workers, both asleep, one of them woken for the one job queued: take it.
        assert!(jobs(2, 1, 1, blocking).may_help(2));
        // One of two workers runs a job (the other is asleep, woken or not): leave it.
        assert!(!jobs(1, 0, 1, blocking).may_help(2));
        assert!(!jobs(1, 1, 1, blocking).may_help(2));
        // On the CPU, always.
        assert!(jobs(1, 1, 3, BLOCKING_NS / 10).may_help(2));
    }

    impl Jobs {
        /// These jobs with `n` placeholders queued (jobs that end in ECANCELED when dropped).
        fn with_queued(mut self, n: usize) -> Jobs {
            let done = Done::new(n.max(1));
            for slot in 0..n {
                self.queue.push_back(sync_job(-1, slot as u32, &done));
            }
            self
        }
    }

    #[test]
    fn a_waiting_thread_takes_a_blocking_job_only_when_it_is_alone() {
        let file = tempfile::tempfile().expect("temp file");
        let done = Done::new(4);
        // No workers, so nothing runs but what the test hands out.
        let pool = Pool::start(0, 4, "test-pool").expect("pool");
        lock(&pool.jobs).job_ns = BLOCKING_NS * 10;
        let mut jobs = vec![
            sync_job(file.as_raw_fd(), 0, &done),
            sync_job(file.as_raw_fd(), 1, &done),
        ];
        pool.enqueue_jobs(&mut jobs);
        assert!(
            !pool.help_once(),
            "took a blocking job with another queued beside it"
        );
        let job = lock(&pool.jobs).queue.pop_front().expect("queued");
        job.finish(0);
        assert!(pool.help_once(), "a lone blocking job was not taken");
        assert!(!pool.help_once(), "nothing is left to take");
        // Jobs that run on the CPU are taken whatever else is queued.
        lock(&pool.jobs).job_ns = BLOCKING_NS / 10;
        let mut jobs = vec![
            sync_job(file.as_raw_fd(), 2, &done),
            sync_job(file.as_raw_fd(), 3, &done),
        ];
        pool.enqueue_jobs(&mut jobs);
        assert!(pool.help_once() && pool.help_once());
        let mut results = [Reaped::default(); 4];
        let n = done.take(&mut results);
        let mut slots: Vec<(u32, i64)> = results[..n].iter().map(|r| (r.slot, r.result)).collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    }
}
