//! The kernel's AIO interface, spoken directly: `struct iocb` and `struct io_event` as in
//! `linux/aio_abi.h`, and thin wrappers of `io_setup(2)`, `io_destroy(2)`, `io_submit(2)` and
//! `io_getevents(2)` through `syscall(2)`. No C library beyond the syscall entry is needed.

use std::io;

/// `IOCB_CMD_PREAD`.
pub(crate) const IOCB_CMD_PREAD: u16 = 0;
/// `IOCB_CMD_PWRITE`.
pub(crate) const IOCB_CMD_PWRITE: u16 = 1;
/// `IOCB_CMD_FSYNC` (Linux 4.18).
pub(crate) const IOCB_CMD_FSYNC: u16 = 2;
/// `IOCB_CMD_FDSYNC` (Linux 4.18).
pub(crate) const IOCB_CMD_FDSYNC: u16 = 3;
/// `IOCB_CMD_PREADV`: `aio_buf` is an iovec array of `aio_nbytes` entries.
pub(crate) const IOCB_CMD_PREADV: u16 = 7;
/// `IOCB_CMD_PWRITEV`, as `IOCB_CMD_PREADV`.
pub(crate) const IOCB_CMD_PWRITEV: u16 = 8;
/// `IOCB_FLAG_RESFD`: signal the eventfd in `aio_resfd` on completion.
pub(crate) const IOCB_FLAG_RESFD: u32 = 1;

/// `aio_context_t`.
pub(crate) type ContextId = libc::c_ulong;

/// `struct iocb` from `linux/aio_abi.h`, for a little-endian machine (where `aio_key` comes
/// before `aio_rw_flags`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Iocb {
    pub(crate) aio_data: u64,
    pub(crate) aio_key: u32,
    pub(crate) aio_rw_flags: i32,
    pub(crate) aio_lio_opcode: u16,
    pub(crate) aio_reqprio: i16,
    pub(crate) aio_fildes: u32,
    pub(crate) aio_buf: u64,
    pub(crate) aio_nbytes: u64,
    pub(crate) aio_offset: i64,
    pub(crate) aio_reserved2: u64,
    pub(crate) aio_flags: u32,
    pub(crate) aio_resfd: u32,
}

// The layout `linux/aio_abi.h` gives, checked on every build.
const _: () = assert!(std::mem::size_of::<Iocb>() == 64);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_buf) == 24);
const _: () = assert!(std::mem::offset_of!(Iocb, aio_resfd) == 60);
const _: () = assert!(std::mem::size_of::<IoEvent>() == 32);

#[cfg(not(target_endian = "little"))]
compile_error!(
    "struct iocb swaps aio_key and aio_rw_flags on big-endian machines; add that layout"
);

/// `struct io_event` from `linux/aio_abi.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IoEvent {
    pub(crate) data: u64,
    pub(crate) obj: u64,
    pub(crate) res: i64,
    pub(crate) res2: i64,
}

fn check(rc: libc::c_long) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// `io_setup(2)`: creates a context able to hold `nr_events` requests.
pub(crate) fn io_setup(nr_events: u32) -> io::Result<ContextId> {
    let mut ctx: ContextId = 0;
    // SAFETY: io_setup writes the new context id through the pointer, which points at `ctx`,
    // which must be zero on entry.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_setup,
            nr_events as libc::c_long,
            &mut ctx as *mut ContextId,
        )
    };
    check(rc).map(|_| ctx)
}

/// `io_destroy(2)`: cancels what it can, waits for the rest, and frees the context.
pub(crate) fn io_destroy(ctx: ContextId) -> io::Result<()> {
    // SAFETY: io_destroy takes the context id by value and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    check(rc).map(drop)
}

/// `io_submit(2)`: submits the iocbs; returns how many the kernel accepted, from the front.
///
/// # Safety
///
/// Every pointer must point at a valid `Iocb` whose buffer (for reads and writes) stays valid,
/// and unused by anything else, until the request's event is reaped. The iocbs themselves
/// are read during the call only.
pub(crate) unsafe fn io_submit(ctx: ContextId, iocbs: &mut [*mut Iocb]) -> io::Result<usize> {
    // SAFETY: the caller guarantees the iocbs and their buffers; the array pointer and length
    // describe `iocbs`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_submit,
            ctx,
            iocbs.len() as libc::c_long,
            iocbs.as_mut_ptr(),
        )
    };
    check(rc)
}

/// `io_getevents(2)`: reaps between `min_nr` and `events.len()` events, waiting for `min_nr`
/// unless `nonblocking`.
pub(crate) fn io_getevents(
    ctx: ContextId,
    min_nr: usize,
    events: &mut [IoEvent],
    nonblocking: bool,
) -> io::Result<usize> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let timeout: *const libc::timespec = if nonblocking { &zero } else { std::ptr::null() };
    // SAFETY: the kernel writes at most `events.len()` events into `events`, and reads the
    // timeout, which lives until the call returns (or is null: wait without limit).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            min_nr as libc::c_long,
            events.len() as libc::c_long,
            events.as_mut_ptr(),
            timeout,
        )
    };
    check(rc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_linux_aio_abi_h() {
        assert_eq!(size_of::<Iocb>(), 64);
        assert_eq!(offset_of!(Iocb, aio_data), 0);
        assert_eq!(offset_of!(Iocb, aio_key), 8);
        assert_eq!(offset_of!(Iocb, aio_rw_flags), 12);
        assert_eq!(offset_of!(Iocb, aio_lio_opcode), 16);
        assert_eq!(offset_of!(Iocb, aio_reqprio), 18);
        assert_eq!(offset_of!(Iocb, aio_fildes), 20);
        assert_eq!(offset_of!(Iocb, aio_buf), 24);
        assert_eq!(offset_of!(Iocb, aio_nbytes), 32);
        assert_eq!(offset_of!(Iocb, aio_offset), 40);
        assert_eq!(offset_of!(Iocb, aio_reserved2), 48);
        assert_eq!(offset_of!(Iocb, aio_flags), 56);
        assert_eq!(offset_of!(Iocb, aio_resfd), 60);
        assert_eq!(size_of::<IoEvent>(), 32);
        assert_eq!(offset_of!(IoEvent, data), 0);
        assert_eq!(offset_of!(IoEvent, obj), 8);
        assert_eq!(offset_of!(IoEvent, res), 16);
        assert_eq!(offset_of!(IoEvent, res2), 24);
    }

    #[test]
    fn a_context_round_trips_a_read() {
        let ctx = io_setup(4).expect("io_setup: this test needs Linux AIO (fs.aio-max-nr room)");
        let file = tempfile::tempfile().expect("tempfile");
        std::os::unix::fs::FileExt::write_all_at(&file, b"aio!", 0).expect("write");
        let mut buf = [0u8; 4];
        let mut iocb = Iocb {
            aio_data: 42,
            aio_lio_opcode: IOCB_CMD_PREAD,
            aio_fildes: std::os::fd::AsRawFd::as_raw_fd(&file) as u32,
            aio_buf: buf.as_mut_ptr() as u64,
            aio_nbytes: 4,
            ..Iocb::default()
        };
        let mut ptrs = [&mut iocb as *mut Iocb];
        // SAFETY: `iocb` and `buf` outlive the wait below, which reaps the event.
        assert_eq!(unsafe { io_submit(ctx, &mut ptrs) }.expect("submit"), 1);
        let mut events = [IoEvent::default(); 4];
        assert_eq!(
            io_getevents(ctx, 1, &mut events, false).expect("getevents"),
            1
        );
        assert_eq!((events[0].data, events[0].res), (42, 4));
        assert_eq!(&buf, b"aio!");
        io_destroy(ctx).expect("destroy");
    }
}
