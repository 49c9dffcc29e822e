//! What Linux AIO adds to the shared request lifecycle: how a submission becomes an iocb
//! ([`iocb`]), and how a context is submitted to (`io_submit`, keeping what it cannot take
//! yet), reaped (the mapped completion ring, else `io_getevents`) and waited on (an eventfd
//! for the async engine, `io_getevents` for a queue). What AIO cannot do (fsync before Linux
//! 4.18, files it refuses) runs on the shared thread kernel instead.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use engine_core::raw::{FileRaw, Io, Kernel, Pool, Reaped, ThreadKernel, Wait};
use engine_core::{EngineConfig, Error, ErrorKind, Op, Result};

use crate::abi::{
    io_getevents, io_submit, IoEvent, Iocb, IOCB_CMD_FDSYNC, IOCB_CMD_FSYNC, IOCB_CMD_PREAD,
    IOCB_CMD_PREADV, IOCB_CMD_PWRITE, IOCB_CMD_PWRITEV, IOCB_FLAG_RESFD,
};
use crate::context::Context;

/// The file flag recorded when `io_submit` refused a file outright (`EINVAL` for a request
/// that passed validation, as for procfs files): its requests run on the thread kernel.
const FILE_AIO_REFUSED: u32 = 1 << 8;

/// An eventfd: the async engine's iocbs signal it (`IOCB_FLAG_RESFD`), and the waiting
/// thread sleeps reading it.
pub(crate) struct EventFd(std::fs::File);

impl EventFd {
    pub(crate) fn new() -> Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::from_io(&e, Op::Setup).with_message("eventfd for AIO completions"));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd(std::fs::File::from(fd)))
    }

    fn raw(&self) -> u32 {
        self.0.as_raw_fd() as u32
    }

    /// Adds one to the counter, waking a reader.
    pub(crate) fn signal(&self) {
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// Blocks until the counter is non-zero, then clears it.
    fn wait(&self) -> std::io::Result<()> {
        let mut counter = [0u8; 8];
        match (&self.0).read(&mut counter) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Builds the iocb of one submission. `resfd` is the eventfd to signal, if any. `None` for
/// the operations AIO has no command for (allocate, set_len, metadata): they run on the
/// thread fallback.
fn iocb(io: &mut Io<'_>, slot: u32, resfd: Option<&EventFd>) -> Option<Iocb> {
    let (opcode, buf, len, offset) = match io {
        Io::Read { offset, buf, .. } => {
            (IOCB_CMD_PREAD, buf.as_mut_ptr() as u64, buf.len(), *offset)
        }
        Io::Write { offset, buf, .. } => (IOCB_CMD_PWRITE, buf.as_ptr() as u64, buf.len(), *offset),
        // A vectored command's buffer is the iovec array, and its length the entry count.
        Io::ReadVectored { offset, bufs, .. } => {
            let iov = bufs.as_mut_ptr() as u64;
            (IOCB_CMD_PREADV, iov, bufs.len(), *offset)
        }
        Io::WriteVectored { offset, bufs, .. } => {
            (IOCB_CMD_PWRITEV, bufs.as_ptr() as u64, bufs.len(), *offset)
        }
        Io::SyncData { .. } => (IOCB_CMD_FDSYNC, 0, 0, 0),
        Io::SyncAll { .. } => (IOCB_CMD_FSYNC, 0, 0, 0),
        Io::Allocate { .. } | Io::SetLen { .. } | Io::Metadata { .. } => return None,
    };
    let file = io.file();
    let write = matches!(opcode, IOCB_CMD_PWRITE | IOCB_CMD_PWRITEV);
    let dsync = write && file.options().is_dsync();
    let rw_flags = match &*io {
        Io::Write { rw_flags, .. } | Io::WriteVectored { rw_flags, .. } => *rw_flags,
        _ => 0,
    };
    Some(Iocb {
        aio_data: u64::from(slot),
        aio_rw_flags: rw_flags | if dsync { libc::RWF_DSYNC } else { 0 },
        aio_lio_opcode: opcode,
        aio_fildes: file.raw_fd() as u32,
        aio_buf: buf,
        aio_nbytes: len as u64,
        aio_offset: offset as i64,
        aio_flags: if resfd.is_some() { IOCB_FLAG_RESFD } else { 0 },
        aio_resfd: resfd.map_or(0, EventFd::raw),
        ..Iocb::default()
    })
}

/// One AIO context, with the requests it could not take yet and the fallback for what it
/// cannot do. The async engine's kernel signals an eventfd per completion; a queue's waits with
/// `io_getevents`.
pub struct AioKernel {
    ctx: Context,
    eventfd: Option<Arc<EventFd>>,
    /// Pushed, not yet accepted by `io_submit`, oldest first, each with its file (for marking
    /// one AIO refuses). The file pointer borrows from the request's slot, which holds the
    /// request until its result is reaped.
    pending: VecDeque<(Iocb, *const engine_core::File)>,
    /// Scratch for `io_submit`'s pointer array.
    pointers: Vec<*mut Iocb>,
    /// Events read by `io_getevents` and not reaped yet.
    events: Vec<IoEvent>,
    events_ready: VecDeque<IoEvent>,
    /// Results decided at submission (requests `io_submit` refused).
    immediate: VecDeque<Reaped>,
    /// What AIO cannot do runs here.
    fallback: ThreadKernel,
    /// Syncs go to the fallback (no AIO fsync in this kernel, or forced by a test switch).
    thread_syncs: bool,
    /// A queue's kernel (its fallback runs on the queue's thread): a sync pushed while
    /// nothing else is in flight runs there at once (see [`AioKernel::push`]).
    queue_idle_syncs: bool,
    /// Accepted by `io_submit` and not reaped.
    in_kernel: usize,
}

// SAFETY: the raw pointers in `pending` and `pointers` address iocbs owned by this kernel and
// files owned by request slots of the driver that owns this kernel; moving the kernel to
// another thread moves that ownership with it.
unsafe impl Send for AioKernel {}

impl AioKernel {
    /// A kernel over a new context of `depth` requests. With `eventfd`, every completion
    /// signals it (the async engine); `pool` is where the fallback runs (`None`: on the
    /// submitting thread, as a queue does).
    pub(crate) fn new(
        depth: usize,
        config: &EngineConfig,
        eventfd: Option<Arc<EventFd>>,
        pool: Option<Arc<Pool>>,
        thread_syncs: bool,
    ) -> Result<AioKernel> {
        let wanted = u32::try_from(depth).unwrap_or(u32::MAX);
        let entries = engine_core::raw::submission_entries(config, wanted) as usize;
        let ctx = Context::new(entries, config)?;
        let queue_idle_syncs = pool.is_none();
        let fallback = ThreadKernel::new(pool, depth, false);
        if let Some(eventfd) = &eventfd {
            // A fallback result wakes the thread waiting on the eventfd like an AIO one.
            let eventfd = Arc::clone(eventfd);
            fallback
                .done()
                .set_notify(Arc::new(move || eventfd.signal()));
        }
        let batch = depth.clamp(1, 256);
        Ok(AioKernel {
            ctx,
            eventfd,
            pending: VecDeque::with_capacity(depth),
            pointers: Vec::with_capacity(depth),
            events: vec![IoEvent::default(); batch],
            events_ready: VecDeque::with_capacity(batch),
            immediate: VecDeque::with_capacity(depth),
            fallback,
            thread_syncs,
            queue_idle_syncs,
            in_kernel: 0,
        })
    }

    /// `io_submit` of what is pending, keeping what the context cannot take yet; a request
    /// it refuses outright completes with the errno (or, for a file AIO refuses, is retried on
    /// the fallback).
    fn flush(&mut self) {
        // Each round accepts at least one iocb, refuses one, or stops.
        while !self.pending.is_empty() {
            self.pointers.clear();
            for (cb, _) in self.pending.iter_mut() {
                self.pointers.push(cb as *mut Iocb);
            }
            // SAFETY: the pointers address iocbs in `pending`, untouched during the call; each
            // iocb's buffer belongs to a request its slot holds until its event is reaped.
            match unsafe { io_submit(self.ctx.id, &mut self.pointers) } {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.in_kernel += n;
                }
                Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EINTR => {}
                    // The context is full: the rest goes in as completions free room.
                    libc::EAGAIN => break,
                    errno => {
                        let Some((cb, file)) = self.pending.pop_front() else {
                            break;
                        };
                        let slot = cb.aio_data as u32;
                        // SAFETY: the file belongs to the request in `slot`, which is not
                        // complete (its result is reported just below).
                        let file = unsafe { &*file };
                        let result = if errno == libc::EINVAL && !file.options().is_direct() {
                            // A validated buffered request refused outright: AIO cannot do
                            // this file (procfs, for one). Retried (as for EAGAIN), it goes to
                            // the thread fallback.
                            file.set_backend_flag(FILE_AIO_REFUSED);
                            -i64::from(libc::EAGAIN)
                        } else {
                            -i64::from(errno)
                        };
                        self.immediate.push_back(Reaped { slot, result });
                    }
                },
            }
        }
    }
}

impl Kernel for AioKernel {
    fn inline_idle_syncs(&self) -> bool {
        // As a queue's idle sync (see `push`), for the async API's `block_on` threads.
        true
    }

    fn push(&mut self, slot: u32, mut io: Io<'_>) -> bool {
        let is_sync = matches!(io, Io::SyncData { .. } | Io::SyncAll { .. });
        // The kernel runs an AIO fsync on a kworker, a wake-up there and another back. A
        // queue's sync with nothing else in flight (a log's write, then its sync) runs on the
        // queue's own thread instead, as fio's libaio engine runs every sync: the thread has
        // nothing to do meanwhile. With requests in flight the sync stays asynchronous, so it
        // never holds up their completions.
        let idle_sync = is_sync && self.queue_idle_syncs && self.in_flight() == 0;
        if (is_sync && (self.thread_syncs || idle_sync))
            || io.file().backend_flags() & FILE_AIO_REFUSED != 0
        {
            return self.fallback.push(slot, io);
        }
        let Some(cb) = iocb(&mut io, slot, self.eventfd.as_deref()) else {
            return self.fallback.push(slot, io);
        };
        let file: *const engine_core::File = io.file();
        self.pending.push_back((cb, file));
        true
    }

    fn submit(&mut self) -> Result<()> {
        self.flush();
        self.fallback.submit()
    }

    fn reap(&mut self, out: &mut [Reaped]) -> usize {
        let mut n = Reaped::drain(&mut self.immediate, out);
        if self.in_kernel > 0 && n < out.len() && self.events_ready.is_empty() {
            // What the mapped ring already holds (no syscall); io_getevents when its layout
            // is not the one known here.
            let count = match self.ctx.reap_user(&mut self.events) {
                Some(count) => count,
                None => io_getevents(self.ctx.id, 0, &mut self.events, true).unwrap_or(0),
            };
            self.events_ready
                .extend(self.events[..count].iter().copied());
        }
        while n < out.len() {
            let Some(event) = self.events_ready.pop_front() else {
                break;
            };
            self.in_kernel -= 1;
            out[n] = Reaped {
                slot: event.data as u32,
                result: event.res,
            };
            n += 1;
        }
        if n > 0 && !self.pending.is_empty() {
            // What a full context refused goes in as the events just reaped make room: the
            // driver pushes nothing more until these complete, so nobody else would.
            self.flush();
        }
        n + self.fallback.reap(&mut out[n..])
    }

    fn wait(&mut self, min: usize) -> Result<()> {
        if !self.pending.is_empty() {
            // Room may have appeared since the context refused these.
            self.flush();
        }
        let available = self.immediate.len() + self.events_ready.len();
        let min = min.min(self.in_flight()).saturating_sub(available);
        if min == 0 {
            return Ok(());
        }
        // Events already read are still counted in `in_kernel` until reaped.
        let waitable = self.in_kernel - self.events_ready.len();
        if waitable == 0 {
            if !self.pending.is_empty() && self.fallback.in_flight() == 0 {
                // Nothing in the context, and it takes none of these: waiting would spin.
                return Err(Error::new(
                    ErrorKind::Other,
                    Op::Wait,
                    format!(
                        "the AIO context refuses {} requests (EAGAIN) with nothing in it",
                        self.pending.len()
                    ),
                ));
            }
            return self.fallback.wait(min);
        }
        let want = min.min(waitable);
        loop {
            match io_getevents(self.ctx.id, want, &mut self.events, false) {
                Ok(count) => {
                    self.events_ready
                        .extend(self.events[..count].iter().copied());
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(Error::from_io(&e, Op::Wait).with_message("io_getevents")),
            }
        }
    }

    fn wake(&mut self) {
        if let Some(eventfd) = &self.eventfd {
            eventfd.signal();
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.in_kernel + self.immediate.len() + self.fallback.in_flight()
    }

    fn kernel_ids(&self) -> Vec<u64> {
        let mut ids = vec![self.ctx.id];
        ids.extend(self.eventfd.as_ref().map(|e| u64::from(e.raw())));
        ids
    }
}

/// The async engine's [`Wait`]: sleeps on the eventfd every completion signals.
pub(crate) struct AioWait(pub(crate) Arc<EventFd>);

impl Wait for AioWait {
    fn wait(&self) -> Result<()> {
        self.0
            .wait()
            .map_err(|e| Error::from_io(&e, Op::Wait).with_message("reading the AIO eventfd"))
    }
}
