//! What the async engine's ring and every queue's ring share: setup with flag fallbacks,
//! registration of the page pool and of files, and restrictions.

use std::io;

use engine_core::{EngineConfig, Error, ErrorKind, Op, PagePool, PoolConfig};
use io_uring::{opcode, register, squeue, IoUring};

/// Files a ring can register; requests on others use their plain descriptor.
pub(crate) const FILES_MAX: u32 = 1024;

/// The largest registered pool: one fixed buffer may span at most 1 GiB.
pub(crate) const REGISTER_BYTES_MAX: usize = 1 << 30;

/// A built ring and what it ended up with.
pub(crate) struct Ring {
    /// Declared first so it is dropped first: the kernel lets go of the registered pool
    /// memory before `pool` can free it.
    pub(crate) ring: IoUring,
    /// The flags the kernel accepted, for the report.
    pub(crate) flags: Vec<&'static str>,
    /// The id of the registered pool, when registration worked.
    pub(crate) fixed_pool: Option<u64>,
    /// True when files are registered (the sparse table was accepted).
    pub(crate) fixed_files: bool,
    /// True when the ring was created disabled and still needs enabling.
    pub(crate) disabled: bool,
    /// The file-management opcodes this ring runs; the others run on the submitting thread.
    pub(crate) ops: Opcodes,
    /// What hardening (restricted mode) did or could not do, for the selection report.
    pub(crate) hardening: Vec<String>,
    /// True when a write's fdatasync can be linked after it (`IOSQE_IO_LINK`): not on a
    /// polled ring (no fsync there) nor a restricted one (it allows no SQE flag but
    /// FIXED_FILE).
    pub(crate) links: bool,
    pool: Option<PagePool>,
}

/// Which file-management opcodes a ring takes, found by the kernel's opcode probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Opcodes {
    /// `IORING_OP_FALLOCATE` (Linux 5.6).
    pub(crate) fallocate: bool,
    /// `IORING_OP_FTRUNCATE` (Linux 6.9).
    pub(crate) ftruncate: bool,
    /// `IORING_OP_STATX` (Linux 5.6); never on a restricted ring, which requires registered
    /// files and statx takes a plain descriptor.
    pub(crate) statx: bool,
}

impl Opcodes {
    /// Probes `ring`; nothing is assumed when the probe fails. An IOPOLL ring runs reads and
    /// writes only.
    fn probe(ring: &IoUring, config: &EngineConfig) -> Opcodes {
        let mut probe = io_uring::Probe::new();
        if config.iopoll || ring.submitter().register_probe(&mut probe).is_err() {
            return Opcodes::default();
        }
        Opcodes {
            fallocate: probe.is_supported(opcode::Fallocate::CODE),
            ftruncate: probe.is_supported(opcode::Ftruncate::CODE),
            statx: probe.is_supported(opcode::Statx::CODE) && !config.restricted,
        }
    }
}

/// How a ring is used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Shared by submitting threads, reaped by the engine's own thread.
    Shared,
    /// One thread submits and reaps (a queue): SINGLE_ISSUER and DEFER_TASKRUN where the
    /// kernel has them, bound to the thread that first submits.
    PerThread,
}

/// The errno of an `io::Error`, EIO when it has none.
pub(crate) fn errno(error: &io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EIO)
}

/// The submission entries a ring needs for the configuration's queue depth.
fn depth_entries(config: &EngineConfig) -> u32 {
    u32::try_from(config.queue_depth.next_power_of_two()).unwrap_or(u32::MAX / 2)
}

/// Creates a ring of `entries` for `usage`, trying the best flags first and falling back when
/// the kernel refuses them with EINVAL.
pub(crate) fn build(
    entries: u32,
    config: &EngineConfig,
    usage: Use,
) -> io::Result<(IoUring, Vec<&'static str>, bool)> {
    // Each attempt: the flag names, and whether the ring starts disabled.
    let mut attempts: Vec<(Vec<&'static str>, bool)> = Vec::new();
    if usage == Use::PerThread && config.sqpoll_idle_ms.is_none() {
        attempts.push((vec!["SINGLE_ISSUER", "DEFER_TASKRUN", "TASKRUN_FLAG"], true));
    }
    attempts.push((vec!["COOP_TASKRUN", "TASKRUN_FLAG"], false));
    attempts.push((Vec::new(), false));
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for (mut names, mut disabled) in attempts {
        let mut builder = IoUring::builder();
        builder
            // Room for a completion of every request in flight, even when the submission
            // queue is smaller than the depth.
            .setup_cqsize(entries.max(depth_entries(config)).saturating_mul(2))
            .setup_clamp();
        for name in &names {
            match *name {
                "SINGLE_ISSUER" => builder.setup_single_issuer(),
                "DEFER_TASKRUN" => builder.setup_defer_taskrun(),
                "COOP_TASKRUN" => builder.setup_coop_taskrun(),
                _ => builder.setup_taskrun_flag(),
            };
        }
        if let Some(idle) = config.sqpoll_idle_ms {
            builder.setup_sqpoll(idle);
            names.push("SQPOLL");
        }
        if config.iopoll {
            builder.setup_iopoll();
            names.push("IOPOLL");
        }
        if config.restricted {
            disabled = true;
        }
        if disabled {
            builder.setup_r_disabled();
            names.push("R_DISABLED");
        }
        match builder.build(entries) {
            Ok(ring) => return Ok((ring, names, disabled)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

impl Ring {
    /// Builds and prepares a ring: file table, pool registration, restrictions.
    pub(crate) fn new(
        entries: u32,
        config: &EngineConfig,
        usage: Use,
        pool: Option<&PagePool>,
    ) -> Result<(Ring, Option<String>), Error> {
        let (ring, flags, disabled) = build(entries, config, usage).map_err(|e| {
            Error::from_io(&e, Op::Setup)
                .with_message(format!("io_uring_setup with {entries} entries"))
        })?;
        let fixed_files = ring.submitter().register_files_sparse(FILES_MAX).is_ok();
        let mut why_unregistered = None;
        let mut fixed_pool = None;
        if let Some(pool) = pool {
            match register_pool(&ring, pool) {
                Ok(()) => fixed_pool = Some(pool.id()),
                Err(e) => why_unregistered = Some(e),
            }
        }
        let mut hardening = Vec::new();
        if config.restricted {
            if !fixed_files {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    Op::Setup,
                    "restricted mode needs registered files, which this kernel refused",
                ));
            }
            hardening = limit_workers(&ring, config);
            restrict(&ring).map_err(|e| {
                Error::from_io(&e, Op::Setup)
                    .with_message("io_uring_register(REGISTER_RESTRICTIONS)")
            })?;
        }
        let ops = Opcodes::probe(&ring, config);
        let ring = Ring {
            ring,
            flags,
            fixed_pool,
            fixed_files,
            disabled,
            ops,
            links: !config.iopoll && !config.restricted,
            hardening,
            pool: pool.cloned(),
        };
        Ok((ring, why_unregistered))
    }

    /// Enables a ring created disabled; for SINGLE_ISSUER rings this binds it to the calling
    /// thread.
    pub(crate) fn enable(&mut self) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
    }

    /// The page pool registered in this ring, if any.
    pub(crate) fn pool(&self) -> Option<&PagePool> {
        self.pool.as_ref()
    }

    /// Registers descriptor `fd` at `slot`.
    pub(crate) fn register_fd(&self, slot: u32, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[fd])
            .map(drop)
    }

    /// Clears registered slot `slot`.
    pub(crate) fn unregister_file(&self, slot: u32) {
        // -1 empties the slot; requests in flight keep their own reference to the file.
        let _ = self.ring.submitter().register_files_update(slot, &[-1]);
    }
}

/// Creates the contiguous page pool a backend registers, sized by the configuration.
pub(crate) fn pool_for(config: &EngineConfig) -> Result<Option<PagePool>, Error> {
    if config.register_buffers_bytes == 0 {
        return Ok(None);
    }
    if config.register_buffers_bytes > REGISTER_BYTES_MAX {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            Op::Setup,
            format!(
                "a registered pool of {} bytes is above the kernel's 1 GiB per fixed buffer",
                config.register_buffers_bytes
            ),
        ));
    }
    let limit = config.register_buffers_bytes.next_multiple_of(4096);
    let pool = PagePool::new(PoolConfig {
        align: 4096,
        class_size_min: 4096,
        class_size_max: limit.next_power_of_two().clamp(4096, 64 << 20),
        limit_bytes: limit,
        contiguous: true,
    })?;
    Ok(Some(pool))
}

/// Registers a contiguous pool's region as fixed buffer 0.
fn register_pool(ring: &IoUring, pool: &PagePool) -> Result<(), String> {
    let Some((base, len)) = pool.region() else {
        return Err("the pool is not contiguous".into());
    };
    let iovec = libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    };
    // SAFETY: the region stays allocated while the ring holds the pool (`Ring::pool`), and
    // the ring is dropped, unregistering it, before that pool handle.
    match unsafe { ring.submitter().register_buffers(&[iovec]) } {
        Ok(()) => Ok(()),
        Err(e) => {
            let memlock = engine_core::registry::uring::memlock_limit()
                .map_or("unknown".into(), |b| format!("{b} bytes"));
            Err(format!(
                "registering the {len}-byte pool failed ({e}); RLIMIT_MEMLOCK is {memlock}: \
                 raise it (ulimit -l, LimitMEMLOCK=) or set ENGINE_REGISTER_BUFFERS=0"
            ))
        }
    }
}

/// `IORING_REGISTER_FILES_UPDATE` and `IORING_REGISTER_FILES_UPDATE2` from
/// `linux/io_uring.h`; the io-uring crate does not re-export them.
const IORING_REGISTER_FILES_UPDATE: u8 = 6;
const IORING_REGISTER_FILES_UPDATE2: u8 = 14;

/// The most unbounded io-wq kernel workers a restricted ring starts (those of requests that
/// may block without end: sockets, pipes): the queue depth, at most 64. Bounded workers
/// (regular files and block devices, the engine's requests) keep the kernel's own limit,
/// four per CPU and at most the ring's size: raising it to the depth cost 15% of the IOPS
/// of 4k reads at depth 32 on zram here, which punts every read to a worker.
fn unbounded_workers_max(config: &EngineConfig) -> u32 {
    config.queue_depth.clamp(1, 64) as u32
}

/// Restricted mode's limit on io_uring's kernel worker threads
/// (`IORING_REGISTER_IOWQ_MAX_WORKERS`, Linux 5.15), and the RLIMIT_NPROC preflight: the
/// workers count against the user's process limit, and a sandbox that lowers it below what
/// they need sees requests fail (ECANCELED from a poll arm, EAGAIN). Returns the notes for
/// the selection report; a kernel that refuses the limit leaves the workers unbounded, which
/// the notes say.
fn limit_workers(ring: &IoUring, config: &EngineConfig) -> Vec<String> {
    let submitter = ring.submitter();
    let mut notes = Vec::new();
    // 0 leaves a limit as it is; the call answers the limits as they were, so a second call
    // of zeros reads them back.
    let mut limits = [0, unbounded_workers_max(config)];
    let set = submitter
        .register_iowq_max_workers(&mut limits)
        .and_then(|()| {
            limits = [0, 0];
            submitter.register_iowq_max_workers(&mut limits)
        });
    let [bounded, unbounded] = limits;
    match set {
        Ok(()) => notes.push(format!(
            "io-wq kernel workers limited to {bounded} bounded (the kernel's own limit) and \
             {unbounded} unbounded (IORING_REGISTER_IOWQ_MAX_WORKERS)"
        )),
        Err(e) => notes.push(format!(
            "the kernel refused IORING_REGISTER_IOWQ_MAX_WORKERS ({e}; Linux 5.15 has it): \
             io_uring's unbounded kernel workers are not limited"
        )),
    }
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives here.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) } == 0;
    // Both kinds of workers, and the engine's own reaper thread beside them.
    let needed = u64::from(bounded) + u64::from(unbounded.max(unbounded_workers_max(config))) + 1;
    if known && nproc.rlim_cur != libc::RLIM_INFINITY && nproc.rlim_cur < needed {
        notes.push(format!(
            "RLIMIT_NPROC is {}: io_uring's kernel workers count against it, and requests \
             that need a worker fail (ECANCELED, EAGAIN) once it is reached; raise it to at \
             least {needed} (ulimit -u, or the sandbox's rlimit) or lower the queue depth",
            nproc.rlim_cur
        ));
    }
    notes
}

/// Restricted mode: only reads and writes (plain, fixed and vectored), fsyncs, fallocate,
/// ftruncate and the wake-up NOP, only on registered files, and only file-table updates as
/// registrations.
fn restrict(ring: &IoUring) -> io::Result<()> {
    let mut restrictions = [
        register::Restriction::sqe_op(opcode::Read::CODE),
        register::Restriction::sqe_op(opcode::Write::CODE),
        register::Restriction::sqe_op(opcode::ReadFixed::CODE),
        register::Restriction::sqe_op(opcode::WriteFixed::CODE),
        register::Restriction::sqe_op(opcode::Readv::CODE),
        register::Restriction::sqe_op(opcode::Writev::CODE),
        register::Restriction::sqe_op(opcode::Fsync::CODE),
        register::Restriction::sqe_op(opcode::Fallocate::CODE),
        register::Restriction::sqe_op(opcode::Ftruncate::CODE),
        register::Restriction::sqe_op(opcode::Nop::CODE),
        register::Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
        register::Restriction::register_op(IORING_REGISTER_FILES_UPDATE),
        register::Restriction::register_op(IORING_REGISTER_FILES_UPDATE2),
    ];
    ring.submitter().register_restrictions(&mut restrictions)
}
