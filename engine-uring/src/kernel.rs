//! What io_uring adds to the shared request lifecycle: how a submission becomes an SQE
//! ([`encode`]), and how the engine's shared ring ([`SharedKernel`], [`SharedWait`]) and each
//! queue's own ring ([`QueueKernel`]) are submitted to, reaped and waited on.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;

use engine_core::raw::{lock, FileDropped, FileRaw, Io, Kernel, Reaped, Wait, WeakFile};
use engine_core::{Error, ErrorKind, Op, Result};
use io_uring::{opcode, squeue, types};

use crate::ring::{errno, Opcodes, Ring, Use, FILES_MAX};

/// `IORING_ENTER_GETEVENTS` from `linux/io_uring.h`: wait for (and, for polled rings, poll)
/// completions; the io-uring crate does not re-export it.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The user data of the NOP that wakes a thread waiting in the engine's ring.
pub(crate) const WAKE: u64 = u64::MAX;

/// The most times a refused `io_uring_enter` (EINTR, EAGAIN, EBUSY) is retried at once; the
/// entries stay in the ring for the next enter, so giving up loses nothing.
const ENTER_RETRIES_MAX: u32 = 64;

/// The engine's ring and what every user of it shares: the driver's kernel (under its lock),
/// the waiting thread (without it), and the files (registered in its table).
pub(crate) struct Shared {
    pub(crate) ring: Ring,
    /// Free registered-file slots.
    file_slots: Mutex<Vec<u32>>,
    /// Bumped whenever a registered file goes away, so queues drop their registrations of it.
    files_epoch: AtomicU64,
    /// Entries the driver's last submission left in the submission queue (the kernel refused
    /// the call, or stopped short at an entry it failed): the waiter submits them first.
    left_queued: AtomicU32,
    iopoll: bool,
}

impl Shared {
    pub(crate) fn new(ring: Ring, iopoll: bool) -> Shared {
        let file_slots = if ring.fixed_files {
            (0..FILES_MAX).rev().collect()
        } else {
            Vec::new()
        };
        Shared {
            ring,
            file_slots: Mutex::new(file_slots),
            files_epoch: AtomicU64::new(0),
            left_queued: AtomicU32::new(0),
            iopoll,
        }
    }

    /// Registers `fd` in a free slot of the engine's file table; returns the file's backend
    /// index (slot + 1), or 0 when it is not registered.
    pub(crate) fn register(&self, fd: std::os::fd::RawFd) -> u32 {
        if !self.ring.fixed_files {
            return 0;
        }
        let Some(slot) = lock(&self.file_slots).pop() else {
            return 0;
        };
        match self.ring.register_fd(slot, fd) {
            Ok(()) => slot + 1,
            Err(e) => {
                tracing::warn!(error = %e, slot, "registering a file failed");
                lock(&self.file_slots).push(slot);
                0
            }
        }
    }
}

/// Lets go of a file's registered slot when its last handle goes (not at `close`: requests
/// admitted before the close may still carry the slot, and its number must not be reused
/// while they do).
pub(crate) struct FileHook(pub(crate) Weak<Shared>);

impl FileDropped for FileHook {
    fn dropped(&self, _id: u64, backend_index: u32) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        if backend_index == 0 {
            return;
        }
        let slot = backend_index - 1;
        shared.ring.unregister_file(slot);
        lock(&shared.file_slots).push(slot);
        shared.files_epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where the SQE's file and buffer come from.
#[derive(Clone, Copy)]
struct Fixed {
    /// The registered file slot, if the file is registered in this ring.
    file: Option<u32>,
    /// The registered pool's id in this ring, if any.
    pool: Option<u64>,
}

/// The user-data bit of a write whose fdatasync is linked after it; the sync carries the
/// plain slot.
const LINKED_WRITE: u64 = 1 << 32;

/// Builds the SQE of one submission, and for a write with `then_sync` the fdatasync linked
/// after it (`IOSQE_IO_LINK`: it runs only once the whole write succeeded).
fn encode(io: Io<'_>, fixed: Fixed, user_data: u64) -> (squeue::Entry, Option<squeue::Entry>) {
    let raw_fd = io.file().raw_fd();
    let then_sync = io.then_sync();
    macro_rules! with_fd {
        ($op:ident, $($arg:expr),*) => {
            match fixed.file {
                Some(slot) => opcode::$op::new(types::Fixed(slot), $($arg),*),
                None => opcode::$op::new(types::Fd(raw_fd), $($arg),*),
            }
        };
    }
    let sqe = match io {
        Io::Read {
            offset, buf, pool, ..
        } => {
            // The shared lifecycle caps a submission at the file's io_bytes_max, below u32::MAX.
            debug_assert!(u32::try_from(buf.len()).is_ok(), "length {}", buf.len());
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            if pool.is_some() && pool == fixed.pool {
                with_fd!(ReadFixed, buf.as_mut_ptr(), len, 0)
                    .offset(offset)
                    .build()
            } else {
                with_fd!(Read, buf.as_mut_ptr(), len).offset(offset).build()
            }
        }
        Io::Write {
            offset,
            buf,
            pool,
            rw_flags,
            ..
        } => {
            debug_assert!(u32::try_from(buf.len()).is_ok(), "length {}", buf.len());
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            if pool.is_some() && pool == fixed.pool {
                with_fd!(WriteFixed, buf.as_ptr(), len, 0)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            } else {
                with_fd!(Write, buf.as_ptr(), len)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
        }
        Io::ReadVectored { offset, bufs, .. } => {
            // At most Request::IOV_MAX entries: the shared lifecycle splits longer requests.
            let len = u32::try_from(bufs.len()).unwrap_or(u32::MAX);
            with_fd!(Readv, bufs.as_mut_ptr().cast::<libc::iovec>(), len)
                .offset(offset)
                .build()
        }
        Io::WriteVectored {
            offset,
            bufs,
            rw_flags,
            ..
        } => {
            let len = u32::try_from(bufs.len()).unwrap_or(u32::MAX);
            with_fd!(Writev, bufs.as_ptr().cast::<libc::iovec>(), len)
                .offset(offset)
                .rw_flags(rw_flags)
                .build()
        }
        Io::SyncData { .. } => with_fd!(Fsync,).flags(types::FsyncFlags::DATASYNC).build(),
        Io::SyncAll { .. } => with_fd!(Fsync,).build(),
        Io::Allocate {
            offset, len, mode, ..
        } => with_fd!(Fallocate, len)
            .offset(offset)
            .mode(mode.bits())
            .build(),
        Io::SetLen { len, .. } => with_fd!(Ftruncate, len).build(),
        Io::Metadata { statx, .. } => {
            // statx names its file by a plain descriptor and a path, never a registered slot.
            let sqe = opcode::Statx::new(types::Fd(raw_fd), c"".as_ptr(), statx.cast())
                .flags(libc::AT_EMPTY_PATH)
                .mask(Io::METADATA_MASK)
                .build();
            return (sqe.user_data(user_data), None);
        }
    };
    let file_flag = if fixed.file.is_some() {
        squeue::Flags::FIXED_FILE
    } else {
        squeue::Flags::empty()
    };
    if !then_sync {
        return (sqe.flags(file_flag).user_data(user_data), None);
    }
    let sync = with_fd!(Fsync,)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .flags(file_flag)
        .user_data(user_data);
    let write = sqe
        .flags(file_flag | squeue::Flags::IO_LINK)
        .user_data(user_data | LINKED_WRITE);
    (write, Some(sync))
}

/// The length of a write whose fdatasync is linked after it, if `io` is one.
fn linked_len(io: &Io<'_>) -> Option<u32> {
    // The shared lifecycle caps a submission at the file's io_bytes_max, below u32::MAX.
    io.then_sync()
        .then(|| u32::try_from(io.len()).unwrap_or(u32::MAX))
}

/// The NOP that wakes a waiting thread; it carries FIXED_FILE so restricted rings accept it.
fn wake_entry() -> squeue::Entry {
    opcode::Nop::new()
        .build()
        .flags(squeue::Flags::FIXED_FILE)
        .user_data(WAKE)
}

/// `io_uring_enter` to submit, retrying the transient refusals a bounded number of times.
fn enter_submit(ring: &io_uring::IoUring) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if matches!(errno(&e), libc::EINTR | libc::EAGAIN | libc::EBUSY) => {
                // EBUSY/EAGAIN: completions must be reaped first; the entries stay queued.
                tries += 1;
                if tries >= ENTER_RETRIES_MAX || errno(&e) != libc::EINTR {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn submit_error(e: &std::io::Error) -> Error {
    Error::from_io(e, Op::Submit).with_message("io_uring_enter")
}

/// An IOPOLL ring cannot run syncs (fsync cannot be polled): they complete at once with this
/// errno, typed as unsupported, through the usual settle path.
const IOPOLL_SYNC_ERRNO: i32 = libc::EOPNOTSUPP;

/// What both ring kernels count: results decided without the ring, and requests in flight.
struct Tally {
    /// Results decided without the ring (syncs on an IOPOLL ring).
    immediate: Vec<Reaped>,
    /// Pushed and not yet reaped.
    in_flight: usize,
    /// Pushed into the ring and not yet submitted.
    unsubmitted: usize,
    /// Writes with an fdatasync linked after them, until both completions are in.
    links: Vec<Link>,
}

/// A linked write and fdatasync in flight: the pair completes as one request.
#[derive(Clone, Copy, Debug)]
struct Link {
    slot: u32,
    len: u32,
    write: Option<i32>,
    sync: Option<i32>,
}

impl Link {
    /// The pair's one result: the write's when it failed or was short (its sync was then
    /// cancelled), the sync's errno when the sync failed, else the bytes written.
    fn result(&self) -> Option<i64> {
        let (write, sync) = (self.write?, self.sync?);
        Some(if write < 0 || write as u32 != self.len {
            i64::from(write)
        } else if sync < 0 {
            i64::from(sync)
        } else {
            i64::from(write)
        })
    }
}

impl Tally {
    fn new(depth: usize) -> Tally {
        Tally {
            immediate: Vec::with_capacity(depth),
            in_flight: 0,
            unsubmitted: 0,
            links: Vec::with_capacity(depth),
        }
    }

    /// Decides what the ring cannot run: a sync on a polled ring completes at once with
    /// [`IOPOLL_SYNC_ERRNO`]; a file-management operation whose opcode the ring lacks runs as
    /// a blocking syscall on the calling thread, with the same semantics. True when it did
    /// either (the result is then reaped like any other).
    fn settle_without_ring(
        &mut self,
        iopoll: bool,
        ops: Opcodes,
        slot: u32,
        io: &mut Io<'_>,
    ) -> bool {
        let in_ring = match io {
            Io::Read { .. }
            | Io::Write { .. }
            | Io::ReadVectored { .. }
            | Io::WriteVectored { .. } => true,
            Io::SyncData { .. } | Io::SyncAll { .. } => {
                if iopoll {
                    self.immediate.push(Reaped {
                        slot,
                        result: -i64::from(IOPOLL_SYNC_ERRNO),
                    });
                    self.in_flight += 1;
                    return true;
                }
                true
            }
            Io::Allocate { .. } => ops.fallocate,
            Io::SetLen { .. } => ops.ftruncate,
            Io::Metadata { .. } => ops.statx,
        };
        if in_ring {
            return false;
        }
        let result = io.run_blocking();
        self.immediate.push(Reaped { slot, result });
        self.in_flight += 1;
        true
    }

    /// Counts a pushed request: one entry, or a linked write (of `link` bytes) and sync.
    fn pushed(&mut self, slot: u32, link: Option<u32>) {
        self.in_flight += 1;
        self.unsubmitted += 1;
        if let Some(len) = link {
            self.links.push(Link {
                slot,
                len,
                write: None,
                sync: None,
            });
        }
    }

    /// Takes one CQE of a linked pair; returns the pair's result once both are in.
    fn linked(&mut self, user_data: u64, result: i32) -> Option<Reaped> {
        let slot = user_data as u32;
        let index = self.links.iter().position(|l| l.slot == slot)?;
        let link = &mut self.links[index];
        if user_data & LINKED_WRITE != 0 {
            link.write = Some(result);
        } else {
            link.sync = Some(result);
        }
        let result = link.result()?;
        self.links.swap_remove(index);
        Some(Reaped { slot, result })
    }

    /// Moves the immediate results, then the completions `cqes` yields (wake-ups skipped), into
    /// `out`; returns how many.
    fn reap(
        &mut self,
        cqes: impl Iterator<Item = io_uring::cqueue::Entry>,
        out: &mut [Reaped],
    ) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(result) = self.immediate.pop() else {
                break;
            };
            out[n] = result;
            n += 1;
        }
        if n < out.len() {
            for cqe in cqes {
                let user_data = cqe.user_data();
                if user_data == WAKE {
                    continue;
                }
                let slot = user_data as u32;
                // A pair's CQE: the tagged write, or a sync whose slot has a pair pending.
                let known = !self.links.is_empty() && self.links.iter().any(|l| l.slot == slot);
                debug_assert!(
                    user_data & LINKED_WRITE == 0 || known,
                    "a linked CQE of slot {slot} without its pair"
                );
                out[n] = if known {
                    match self.linked(user_data, cqe.result()) {
                        Some(pair) => pair,
                        // The other half of the pair is still to come.
                        None => continue,
                    }
                } else {
                    Reaped {
                        slot: user_data as u32,
                        result: i64::from(cqe.result()),
                    }
                };
                n += 1;
                if n == out.len() {
                    break;
                }
            }
        }
        debug_assert!(
            n <= self.in_flight,
            "reaped {n} of {} in flight",
            self.in_flight
        );
        self.in_flight -= n;
        n
    }
}

/// Polls for completions: on an IOPOLL ring they appear only when someone polls, and deferred
/// task work runs only inside an enter.
fn poll_completions(ring: &io_uring::IoUring) {
    // SAFETY: no argument pointer is passed.
    let _ = unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
    };
}

/// The async engine's kernel: the engine's shared ring, used under the driver's lock.
pub(crate) struct SharedKernel {
    shared: Arc<Shared>,
    tally: Tally,
    /// A wake-up NOP that did not fit the submission queue yet.
    wake_pending: bool,
}

impl SharedKernel {
    pub(crate) fn new(shared: Arc<Shared>, depth: usize) -> SharedKernel {
        SharedKernel {
            shared,
            tally: Tally::new(depth),
            wake_pending: false,
        }
    }

    /// Pushes `entries` together, or none of them when they do not all fit.
    fn push_entries(&mut self, entries: &[squeue::Entry]) -> bool {
        // SAFETY: as in `push_entry`.
        let mut sq = unsafe { self.shared.ring.ring.submission_shared() };
        // SAFETY: as in `push_entry`.
        let pushed = unsafe { sq.push_multiple(entries) }.is_ok();
        sq.sync();
        pushed
    }

    /// Counts, after a submission, the entries the kernel did not take, for the next
    /// submission and for the waiter.
    fn note_queued(&mut self) {
        // SAFETY: as in `push_entry`: this kernel is used under the driver's lock.
        let queued = unsafe { self.shared.ring.ring.submission_shared() }.len();
        self.tally.unsubmitted = queued;
        let queued = u32::try_from(queued).unwrap_or(u32::MAX);
        self.shared.left_queued.store(queued, Ordering::Release);
    }

    fn push_entry(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: the submission queue is only touched by this kernel, which the driver uses
        // under its lock, so this is the only live handle to it. The entry's buffers (and a
        // vectored entry's iovec array) and file belong to a request its slot holds until the
        // CQE is reaped.
        let mut sq = unsafe { self.shared.ring.ring.submission_shared() };
        // SAFETY: as above.
        let pushed = unsafe { sq.push(sqe) }.is_ok();
        sq.sync();
        pushed
    }
}

impl Kernel for SharedKernel {
    fn push(&mut self, slot: u32, mut io: Io<'_>) -> bool {
        let (iopoll, ops) = (self.shared.iopoll, self.shared.ring.ops);
        if self.tally.settle_without_ring(iopoll, ops, slot, &mut io) {
            return true;
        }
        let index = io.file().backend_index();
        let fixed = Fixed {
            file: (index > 0 && self.shared.ring.fixed_files).then(|| index - 1),
            pool: self.shared.ring.fixed_pool,
        };
        let link = linked_len(&io);
        let (sqe, sync) = encode(io, fixed, u64::from(slot));
        let pushed = match sync {
            None => self.push_entry(&sqe),
            Some(sync) => self.push_entries(&[sqe, sync]),
        };
        if !pushed {
            return false;
        }
        self.tally.pushed(slot, link);
        true
    }

    fn links_sync(&self) -> bool {
        self.shared.ring.links
    }

    fn submit(&mut self) -> Result<()> {
        if self.wake_pending && self.push_entry(&wake_entry()) {
            self.wake_pending = false;
            self.tally.unsubmitted += 1;
        }
        if self.tally.unsubmitted == 0 {
            return Ok(());
        }
        enter_submit(&self.shared.ring.ring).map_err(|e| submit_error(&e))?;
        // What the kernel did not take stays queued: a refused call (EAGAIN, EBUSY), or one
        // that stopped short (at an entry it failed, the ring having no SUBMIT_ALL). The
        // waiter submits those entries too, so nobody waits on a kernel that never saw them.
        self.note_queued();
        Ok(())
    }

    fn reap(&mut self, out: &mut [Reaped]) -> usize {
        let waiting = self.tally.in_flight > self.tally.immediate.len();
        // Completions left as task work (TASKRUN_FLAG says so) are posted only when the
        // submitting thread enters the kernel: a thread that polls without ever sleeping (a
        // future that keeps waking itself) would otherwise never see them.
        // SAFETY: the submission queue is only touched by this kernel, under the driver's lock.
        let taskrun = waiting && unsafe { self.shared.ring.ring.submission_shared() }.taskrun();
        if waiting && (self.shared.iopoll || taskrun) {
            poll_completions(&self.shared.ring.ring);
        }
        // SAFETY: the completion queue is only read by this kernel, under the driver's lock.
        let cq = unsafe { self.shared.ring.ring.completion_shared() };
        self.tally.reap(cq, out)
    }

    fn wait(&mut self, min: usize) -> Result<()> {
        let want = min.min(self.tally.in_flight);
        match self.shared.ring.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    errno(&e),
                    libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::from_io(&e, Op::Wait).with_message("io_uring_enter")),
        }
    }

    fn wake(&mut self) {
        if self.push_entry(&wake_entry()) {
            self.tally.unsubmitted += 1;
            if let Err(e) = enter_submit(&self.shared.ring.ring) {
                tracing::warn!(error = %e, "submitting a wake-up failed");
            } else {
                self.note_queued();
            }
        } else {
            // The queue is full, so entries are waiting to be submitted: the next submit
            // pushes the NOP.
            self.wake_pending = true;
        }
    }

    fn in_flight(&self) -> usize {
        self.tally.in_flight
    }

    fn kernel_ids(&self) -> Vec<u64> {
        vec![ring_fd(&self.shared.ring)]
    }
}

/// The async engine's [`Wait`]: `io_uring_enter(GETEVENTS)` on the shared ring, without the
/// driver's lock. It also runs the waiting thread's own task work, which is where io_uring
/// completes the requests that thread submitted.
pub(crate) struct SharedWait(pub(crate) Arc<Shared>);

impl Wait for SharedWait {
    fn wait(&self) -> Result<()> {
        // Entries a refused or short submission left queued reach the kernel here, where a
        // wait alone would sleep on requests it never saw. Exactly those: the kernel skips the
        // wait when it submits fewer entries than asked.
        let left = self.0.left_queued.load(Ordering::Acquire);
        // SAFETY: no argument pointer is passed; the kernel reads only entries published by
        // the tail, which pushers move (under the driver's lock) after writing each entry.
        let entered = unsafe {
            self.0.ring.ring.submitter().enter::<libc::sigset_t>(
                left,
                1,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        if let (Ok(submitted), true) = (&entered, left > 0) {
            // Unless a submission since counted afresh.
            let submitted = u32::try_from(*submitted).unwrap_or(0).min(left);
            let _ = self.0.left_queued.compare_exchange(
                left,
                left - submitted,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        match entered {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    errno(&e),
                    libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::from_io(&e, Op::Wait).with_message("io_uring_enter")),
        }
    }
}

/// A queue's kernel: a ring of its own, submitted and reaped by the one thread that owns the
/// queue (SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them).
pub struct QueueKernel {
    shared: Arc<Shared>,
    config: engine_core::EngineConfig,
    ring: Ring,
    /// The thread the ring is bound to, once it is.
    owner: Option<ThreadId>,
    /// What this ring registered in each file slot.
    files: Vec<Option<WeakFile>>,
    /// The engine's file epoch when the registrations were last checked.
    files_epoch: u64,
    tally: Tally,
    /// Submissions that used the registered pool (READ_FIXED / WRITE_FIXED).
    fixed_submissions: u64,
}

impl QueueKernel {
    pub(crate) fn new(
        shared: Arc<Shared>,
        depth: usize,
        config: &engine_core::EngineConfig,
    ) -> Result<QueueKernel> {
        let ring = queue_ring(&shared, depth, config)?;
        let files = if ring.fixed_files {
            vec![None; FILES_MAX as usize]
        } else {
            Vec::new()
        };
        Ok(QueueKernel {
            files_epoch: shared.files_epoch.load(Ordering::Acquire),
            config: config.clone(),
            shared,
            ring,
            owner: None,
            files,
            tally: Tally::new(depth),
            fixed_submissions: 0,
        })
    }

    /// Submissions so far that used the engine's registered pool (READ_FIXED / WRITE_FIXED),
    /// because their buffer came from [`engine_core::Backend::pool`].
    pub fn fixed_submissions(&self) -> u64 {
        self.fixed_submissions
    }

    /// The ring flags the kernel accepted for this queue.
    pub fn flags(&self) -> &[&'static str] {
        &self.ring.flags
    }

    /// Binds the ring to the calling thread on first use. A SINGLE_ISSUER ring refuses every
    /// other thread: a queue moved with nothing in flight gets a new ring, one moved with
    /// requests in flight is an error (move it back to finish them).
    fn on_owner_thread(&mut self) -> Result<()> {
        let current = current_thread();
        match self.owner {
            Some(owner) if owner == current => return Ok(()),
            Some(_) if !self.ring.flags.contains(&"SINGLE_ISSUER") => {}
            Some(_) if self.tally.in_flight > 0 => {
                let in_flight = self.tally.in_flight;
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    Op::Submit,
                    format!(
                        "this io_uring queue is bound to the thread that first used it, which \
                         still has {in_flight} requests in flight in it; use the queue from that \
                         thread, or move it only when nothing is in flight"
                    ),
                ));
            }
            Some(_) => {
                // Nothing in flight: a new ring for the new thread.
                let depth = self.tally.immediate.capacity();
                self.ring = queue_ring(&self.shared, depth, &self.config)?;
                self.files.iter_mut().for_each(|f| *f = None);
            }
            None => {}
        }
        self.ring
            .enable()
            .map_err(|e| Error::from_io(&e, Op::Submit).with_message("enabling the ring"))?;
        self.owner = Some(current);
        Ok(())
    }

    /// The fixed-file slot of `file` in this ring, registering it on first use.
    fn fixed_file(&mut self, io: &Io<'_>) -> Option<u32> {
        let file = io.file();
        let index = file.backend_index();
        if index == 0 {
            return None;
        }
        let slot = index - 1;
        let registered = self.files.get_mut(slot as usize)?;
        if registered.as_ref().map(WeakFile::id) != Some(file.id()) {
            self.ring.register_fd(slot, file.raw_fd()).ok()?;
            *registered = Some(file.downgrade());
        }
        Some(slot)
    }

    /// Drops this ring's registrations of files that were closed or dropped (checked when the
    /// engine's file epoch moved), so their descriptors do not stay open through this ring.
    fn sweep_files(&mut self) {
        let epoch = self.shared.files_epoch.load(Ordering::Acquire);
        if epoch == self.files_epoch {
            return;
        }
        self.files_epoch = epoch;
        for (slot, registered) in self.files.iter_mut().enumerate() {
            if registered.as_ref().is_some_and(|f| !f.is_open()) {
                self.ring.unregister_file(slot as u32);
                *registered = None;
            }
        }
    }

    fn enter(&mut self, want: usize) -> Result<()> {
        self.on_owner_thread()?;
        let mut tries = 0;
        loop {
            match self.ring.ring.submit_and_wait(want) {
                Ok(_) => {
                    // Entries after one the kernel failed at submission stay queued.
                    self.tally.unsubmitted = self.ring.ring.submission().len();
                    return Ok(());
                }
                Err(e) if errno(&e) == libc::EINTR && tries < ENTER_RETRIES_MAX => tries += 1,
                // Completions wait to be reaped first; the entries stay queued.
                Err(e) if matches!(errno(&e), libc::EBUSY | libc::EAGAIN | libc::EINTR) => {
                    return Ok(())
                }
                Err(e) => {
                    let op = if want > 0 { Op::Wait } else { Op::Submit };
                    return Err(Error::from_io(&e, op).with_message("io_uring_enter"));
                }
            }
        }
    }
}

/// The calling thread's id, without the reference count `std::thread::current()` costs.
fn current_thread() -> ThreadId {
    thread_local! {
        static ID: ThreadId = std::thread::current().id();
    }
    ID.with(|id| *id)
}

/// A queue's own ring: flags for one thread, the engine's pool registered too.
fn queue_ring(shared: &Shared, depth: usize, config: &engine_core::EngineConfig) -> Result<Ring> {
    // Twice the depth: under SQPOLL the kernel moves the SQ head only after a batch, so
    // entries of completed requests can still occupy the ring.
    let wanted = (2 * depth).next_power_of_two() as u32;
    let entries = engine_core::raw::submission_entries(config, wanted);
    let (ring, _) = Ring::new(entries, config, Use::PerThread, shared.ring.pool())?;
    Ok(ring)
}

impl Kernel for QueueKernel {
    fn push(&mut self, slot: u32, mut io: Io<'_>) -> bool {
        // A SINGLE_ISSUER ring moved to another thread must not take entries it can never
        // submit: with nothing in flight it is replaced now; otherwise the request stays
        // staged and `submit` says why.
        if self.owner.is_some_and(|owner| owner != current_thread())
            && self.on_owner_thread().is_err()
        {
            return false;
        }
        let (iopoll, ops) = (self.shared.iopoll, self.ring.ops);
        if self.tally.settle_without_ring(iopoll, ops, slot, &mut io) {
            return true;
        }
        let fixed = Fixed {
            file: self.fixed_file(&io),
            pool: self.ring.fixed_pool,
        };
        let uses_pool = matches!(
            &io,
            Io::Read { pool: Some(p), .. } | Io::Write { pool: Some(p), .. } if Some(*p) == fixed.pool
        );
        let link = linked_len(&io);
        let (sqe, sync) = encode(io, fixed, u64::from(slot));
        let mut sq = self.ring.ring.submission();
        let pushed = match sync {
            // SAFETY: the entries' buffers (and a vectored entry's iovec array) and file belong
            // to a request its slot holds until the CQEs are reaped.
            None => unsafe { sq.push(&sqe) },
            // SAFETY: as above.
            Some(sync) => unsafe { sq.push_multiple(&[sqe, sync]) },
        };
        if pushed.is_err() {
            return false;
        }
        self.tally.pushed(slot, link);
        self.fixed_submissions += u64::from(uses_pool);
        true
    }

    fn links_sync(&self) -> bool {
        self.ring.links
    }

    fn submit(&mut self) -> Result<()> {
        self.sweep_files();
        if self.tally.unsubmitted == 0 {
            return Ok(());
        }
        self.enter(0)
    }

    fn reap(&mut self, out: &mut [Reaped]) -> usize {
        self.sweep_files();
        let owner = self.owner == Some(current_thread());
        // Deferred task work (and polled completions) run only inside an enter: enter when the
        // kernel says some is waiting, on the owning thread (the only one allowed to).
        let waiting = self.tally.in_flight > self.tally.immediate.len();
        if owner && waiting && (self.shared.iopoll || self.ring.ring.submission().taskrun()) {
            poll_completions(&self.ring.ring);
        }
        self.tally.reap(self.ring.ring.completion(), out)
    }

    fn wait(&mut self, min: usize) -> Result<()> {
        let want = min.min(self.tally.in_flight - self.tally.immediate.len());
        if want == 0 {
            return Ok(());
        }
        self.enter(want)
    }

    fn wake(&mut self) {}

    fn in_flight(&self) -> usize {
        self.tally.in_flight
    }

    fn kernel_ids(&self) -> Vec<u64> {
        vec![ring_fd(&self.ring)]
    }
}

/// A ring's descriptor, as a sandbox pins it.
fn ring_fd(ring: &Ring) -> u64 {
    std::os::fd::AsRawFd::as_raw_fd(&ring.ring) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_kernel() -> (Arc<Shared>, SharedKernel) {
        let config = engine_core::EngineConfig::default();
        let (ring, _) = match Ring::new(8, &config, crate::ring::Use::Shared, None) {
            Ok(ring) => ring,
            Err(e) => panic!("this test needs io_uring, which this machine refuses: {e}"),
        };
        let shared = Arc::new(Shared::new(ring, false));
        let kernel = SharedKernel::new(Arc::clone(&shared), 8);
        (shared, kernel)
    }

    fn completions(shared: &Shared) -> Vec<(u64, i32)> {
        // SAFETY: the only handle to the completion queue in these tests.
        unsafe { shared.ring.ring.completion_shared() }
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect()
    }

    #[test]
    fn the_waiter_sleeps_until_a_completion_when_nothing_is_left_queued() {
        let (shared, mut kernel) = shared_kernel();
        let after = types::Timespec::new().nsec(20_000_000);
        let timeout = opcode::Timeout::new(&after).build().user_data(7);
        assert!(kernel.push_entry(&timeout));
        kernel.tally.pushed(7, None);
        kernel.submit().expect("submit");
        let started = std::time::Instant::now();
        SharedWait(Arc::clone(&shared)).wait().expect("wait");
        // A waiter that returned at once (a spin in every park) would find nothing yet.
        let seen = completions(&shared);
        assert_eq!(
            seen,
            vec![(7, -libc::ETIME)],
            "after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn entries_a_submission_stops_short_of_stay_queued_and_the_waiter_submits_them() {
        let (shared, mut kernel) = shared_kernel();
        // An entry the kernel fails at submission (an SQE flag it does not know), then a
        // good one: without SUBMIT_ALL the kernel stops after the first.
        let bad = opcode::Nop::new()
            .build()
            .flags(squeue::Flags::from_bits_retain(1 << 7))
            .user_data(1);
        let good = opcode::Nop::new().build().user_data(2);
        assert!(kernel.push_entry(&bad) && kernel.push_entry(&good));
        kernel.tally.pushed(1, None);
        kernel.tally.pushed(2, None);
        kernel.submit().expect("submit");
        assert_eq!(
            kernel.tally.unsubmitted, 1,
            "the good entry is still queued"
        );
        SharedWait(Arc::clone(&shared)).wait().expect("wait");
        let seen = completions(&shared);
        assert!(
            seen.contains(&(1, -libc::EINVAL)),
            "the bad entry failed: {seen:?}"
        );
        assert!(
            seen.contains(&(2, 0)),
            "the waiter submitted the good one: {seen:?}"
        );
    }

    /// Feeds the two CQEs of a linked write and fdatasync, in either order, and returns what
    /// the pair reports.
    fn pair(write: i32, sync: i32, sync_first: bool) -> (Option<Reaped>, Option<Reaped>) {
        let mut tally = Tally::new(4);
        tally.pushed(3, Some(4096));
        let (write_ud, sync_ud) = (3 | LINKED_WRITE, 3);
        if sync_first {
            (tally.linked(sync_ud, sync), tally.linked(write_ud, write))
        } else {
            (tally.linked(write_ud, write), tally.linked(sync_ud, sync))
        }
    }

    #[test]
    fn a_linked_write_and_sync_complete_as_one_request_with_one_result() {
        let ecanceled = -libc::ECANCELED;
        let cases = [
            (4096, 0, 4096, "both done: the bytes written"),
            (
                4096,
                -libc::EIO,
                -i64::from(libc::EIO),
                "the sync failed: its errno",
            ),
            (
                1024,
                ecanceled,
                1024,
                "a short write: its count, the sync was cancelled",
            ),
            (
                -libc::ENOSPC,
                ecanceled,
                -i64::from(libc::ENOSPC),
                "the write failed",
            ),
        ];
        for (write, sync, expected, what) in cases {
            for sync_first in [false, true] {
                let (first, second) = pair(write, sync, sync_first);
                assert_eq!(first, None, "{what}: nothing before both halves are in");
                assert_eq!(
                    second,
                    Some(Reaped {
                        slot: 3,
                        result: expected
                    }),
                    "{what}"
                );
            }
        }
        let mut tally = Tally::new(4);
        tally.pushed(1, None);
        assert_eq!(tally.linked(1, 0), None, "a plain request is no pair");
    }
}
