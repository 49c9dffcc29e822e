//! An AIO context (RAII, with user-space reaping of its completion ring) and the one-time
//! probe of native AIO fsync.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use engine_core::{EngineConfig, Error, ErrorKind, Op};

use crate::abi::{
    io_destroy, io_getevents, io_setup, io_submit, ContextId, IoEvent, Iocb, IOCB_CMD_FDSYNC,
};

/// An AIO context, destroyed on drop (`io_destroy` waits for requests still in flight).
pub(crate) struct Context {
    pub(crate) id: ContextId,
}

impl Context {
    /// `io_setup` for `depth` requests, with the probe's diagnosis when it fails (also when
    /// the configuration's test switches simulate a failure).
    pub(crate) fn new(depth: usize, config: &EngineConfig) -> Result<Context, Error> {
        if let Some(errno) = engine_core::raw::simulated_setup_errno(config, crate::NAME) {
            let diagnosis = crate::probe::diagnose(errno);
            return Err(setup_error(errno, diagnosis.to_string()));
        }
        let nr = u32::try_from(depth).unwrap_or(u32::MAX);
        match io_setup(nr) {
            Ok(id) => Ok(Context { id }),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                Err(setup_error(
                    errno,
                    crate::probe::diagnose(errno).to_string(),
                ))
            }
        }
    }
}

/// A setup error whose kind lets `auto` fall back: EAGAIN (`aio-max-nr` exhausted) means
/// "cannot run here", not "broken".
fn setup_error(errno: i32, diagnosis: String) -> Error {
    let error = Error::from_errno(errno, Op::Setup).with_message(diagnosis);
    if errno == libc::EAGAIN {
        Error::new(
            ErrorKind::Unsupported,
            Op::Setup,
            error.message().to_string(),
        )
        .with_errno(errno)
    } else {
        error
    }
}

/// `AIO_RING_MAGIC` from `fs/aio.c`: the context id is the address of the completion ring the
/// kernel maps into the process, which starts with this header.
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

/// The header of `struct aio_ring` (`fs/aio.c`): id, nr, head, tail, magic, compat_features,
/// incompat_features, header_length; the events follow.
const RING_NR: usize = 1;
const RING_HEAD: usize = 2;
const RING_TAIL: usize = 3;
const RING_MAGIC: usize = 4;
const RING_INCOMPAT: usize = 6;
const RING_HEADER_BYTES: usize = 32;

impl Context {
    /// Reaps ready events from the completion ring the kernel maps into this process, without
    /// a syscall (what libaio and fio call user-space reaping). Returns `None` when the ring
    /// layout is not the one this code knows, so the caller uses `io_getevents` instead.
    ///
    /// Takes `&mut self`: only one thread may consume a context's events at a time, and
    /// `io_getevents` on the same context must not run meanwhile.
    pub(crate) fn reap_user(&mut self, events: &mut [IoEvent]) -> Option<usize> {
        let base = self.id as usize as *const u8;
        if base.is_null() {
            return None;
        }
        // SAFETY: the context id is the address of the kernel's `struct aio_ring` mapping,
        // which stays mapped until `io_destroy` (our drop); its header is eight u32 fields at
        // 4-byte alignment, read and written atomically as the kernel does.
        let word = |i: usize| unsafe { &*(base.add(i * 4) as *const std::sync::atomic::AtomicU32) };
        if word(RING_MAGIC).load(Ordering::Relaxed) != AIO_RING_MAGIC
            || word(RING_INCOMPAT).load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let nr = word(RING_NR).load(Ordering::Relaxed) as usize;
        if nr == 0 {
            return None;
        }
        let mut head = word(RING_HEAD).load(Ordering::Relaxed) as usize % nr;
        // Acquire: the kernel fills events before it publishes the tail.
        let tail = word(RING_TAIL).load(Ordering::Acquire) as usize % nr;
        let mut count = 0;
        while head != tail && count < events.len() {
            // SAFETY: `head < nr`, and the ring holds `nr` events after the header; the event
            // at `head` was published by the tail loaded above.
            events[count] = unsafe {
                std::ptr::read_volatile((base.add(RING_HEADER_BYTES) as *const IoEvent).add(head))
            };
            head = (head + 1) % nr;
            count += 1;
        }
        if count > 0 {
            // Release: the events are copied out before the kernel may reuse their slots.
            word(RING_HEAD).store(head as u32, Ordering::Release);
        }
        Some(count)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Err(e) = io_destroy(self.id) {
            tracing::error!(error = %e, "io_destroy failed");
        }
    }
}

/// Whether `IOCB_CMD_FSYNC`/`FDSYNC` work here: probed once per process on a temporary file.
pub(crate) fn native_fsync() -> bool {
    static PROBED: OnceLock<bool> = OnceLock::new();
    *PROBED.get_or_init(|| probe_fsync().unwrap_or(false))
}

fn probe_fsync() -> io::Result<bool> {
    let file = tempfile_in_tmp()?;
    let ctx = Context::new(1, &EngineConfig::default())
        .map_err(|_| io::Error::from_raw_os_error(libc::EAGAIN))?;
    let mut iocb = Iocb {
        aio_lio_opcode: IOCB_CMD_FDSYNC,
        aio_fildes: std::os::fd::AsRawFd::as_raw_fd(&file) as u32,
        ..Iocb::default()
    };
    let mut ptrs = [&mut iocb as *mut Iocb];
    // SAFETY: the iocb has no buffer, and the event is reaped below before it goes away.
    match unsafe { io_submit(ctx.id, &mut ptrs) } {
        Ok(1) => {
            let mut events = [IoEvent::default(); 1];
            io_getevents(ctx.id, 1, &mut events, false)?;
            Ok(events[0].res == 0)
        }
        Ok(_) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

fn tempfile_in_tmp() -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
}
