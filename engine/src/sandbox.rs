//! The steady-state system calls of an engine (always), and with the `sandbox` feature a
//! seccomp allowlist for an engine that is set up: the backend's steady-state system calls
//! ([`SteadyState`]), each call that takes a descriptor pinned to the files given (or to the
//! engine's own rings, AIO contexts and eventfds), plus the calls the process itself names.
//! Any other call kills the process (or, for tests, raises `SIGSYS`).
//!
//! Set up first, then enter the sandbox: open or adopt every file, make every queue and run
//! a request on each from its thread, and run one request of each kind through each API
//! (see [`engine_core::raw::sandbox`]). On io_uring use the restricted ring
//! (`EngineConfig::restricted`, `ENGINE_RESTRICTED=1`): seccomp never sees the operations a
//! ring runs in the kernel, so only the ring's own restrictions bound them.
//!
//! ```no_run
//! use engine::sandbox::Sandbox;
//! use engine::{Engine, EngineConfig, OpenOptions};
//!
//! let config = EngineConfig { restricted: true, ..EngineConfig::default() };
//! let engine = Engine::with_backend("uring", config)?;
//! let options = OpenOptions::new().read(true).write(true).create(true);
//! let file = engine.open("/var/lib/app/data".as_ref(), &options)?;
//! // ... a warm-up request of each kind ...
//! Sandbox::new(&engine)?
//!     .file(&file)
//!     .allow_process_basics()
//!     .build()?
//!     .apply()?;
//! // From here on: reads, writes and syncs of `file`, and nothing else.
//! # Ok::<(), engine::Error>(())
//! ```

pub use engine_core::raw::sandbox::{syscall_name, Pin, SteadyState, Syscall};

#[cfg(feature = "sandbox")]
pub use filter::{Filter, Sandbox, Violation};

#[cfg(feature = "sandbox")]
mod filter {
    use std::collections::BTreeMap;
    use std::os::fd::{AsFd, AsRawFd};

    use super::{Pin, SteadyState};
    use engine_core::{Backend, Error, ErrorKind, File, Op, Queue, Result};
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    /// What the filter does to a call it does not allow.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Violation {
        /// Kills the process (`SECCOMP_RET_KILL_PROCESS`): the default.
        KillProcess,
        /// Raises `SIGSYS` in the calling thread (`SECCOMP_RET_TRAP`), whose `si_syscall` names
        /// the call: for tests that report it.
        Trap,
        /// Fails the call with this errno (`SECCOMP_RET_ERRNO`).
        Errno(u32),
    }

    /// The calls of the process itself that [`Sandbox::allow_process_basics`] adds: its
    /// allocator, thread-local and signal bookkeeping, and its exit.
    const PROCESS_BASICS: [(&str, i64); 12] = [
        ("brk", libc::SYS_brk),
        ("mmap", libc::SYS_mmap),
        ("munmap", libc::SYS_munmap),
        ("mremap", libc::SYS_mremap),
        ("madvise", libc::SYS_madvise),
        ("mprotect", libc::SYS_mprotect),
        ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
        ("rt_sigreturn", libc::SYS_rt_sigreturn),
        // A call interrupted by a stop (SIGSTOP, a debugger) resumes through it.
        ("restart_syscall", libc::SYS_restart_syscall),
        ("sigaltstack", libc::SYS_sigaltstack),
        ("exit", libc::SYS_exit),
        ("exit_group", libc::SYS_exit_group),
    ];

    /// The builder of a seccomp filter for one engine; see the module documentation.
    #[derive(Clone, Debug)]
    pub struct Sandbox {
        state: SteadyState,
        files: Vec<u64>,
        /// The process's own calls: the number and what its first argument may be (`None`:
        /// anything).
        own: Vec<(i64, Option<Vec<u64>>)>,
        violation: Violation,
    }

    impl Sandbox {
        /// A sandbox for `engine`'s steady state as it is now.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Unsupported`] for a backend that publishes no steady-state list.
        pub fn new(engine: &impl Backend) -> Result<Sandbox> {
            Ok(Sandbox::from_state(engine.steady_state()?))
        }

        /// A sandbox for a steady state given as is (for example, one with a call removed).
        pub fn from_state(state: SteadyState) -> Sandbox {
            Sandbox {
                state,
                files: Vec::new(),
                own: Vec::new(),
                violation: Violation::KillProcess,
            }
        }

        /// The steady state the filter allows.
        pub fn state(&self) -> &SteadyState {
            &self.state
        }

        /// Lets the engine's calls on files touch `file`.
        pub fn file(mut self, file: &File) -> Sandbox {
            let fd = file.as_fd().as_raw_fd() as u64;
            if !self.files.contains(&fd) {
                self.files.push(fd);
            }
            self
        }

        /// Lets the engine's calls on its own kernel objects touch `queue`'s (a queue made
        /// after [`Sandbox::new`] took the list).
        pub fn queue(mut self, queue: &impl Queue) -> Sandbox {
            self.state = self.state.with_own(&queue.kernel_ids());
            self
        }

        /// Allows the process's own call `nr`, with any arguments.
        pub fn allow(mut self, nr: i64) -> Sandbox {
            self.own.push((nr, None));
            self
        }

        /// Allows the process's own call `nr` on descriptor `fd` only (its first argument).
        pub fn allow_on(mut self, nr: i64, fd: impl AsRawFd) -> Sandbox {
            self.own.push((nr, Some(vec![fd.as_raw_fd() as u64])));
            self
        }

        /// Allows what any process needs to keep running: its allocator (`brk`, `mmap`,
        /// `munmap`, `mremap`, `madvise`, `mprotect`), signal masks and returns, the resumption
        /// of a call a stop interrupted (`restart_syscall`), and its exit.
        /// The engine itself needs none of them once warm; a process whose allocator needs no
        /// more memory could do without.
        pub fn allow_process_basics(mut self) -> Sandbox {
            for (_, nr) in PROCESS_BASICS {
                self.own.push((nr, None));
            }
            self
        }

        /// What the filter does to any other call (default [`Violation::KillProcess`]).
        pub fn on_violation(mut self, violation: Violation) -> Sandbox {
            self.violation = violation;
            self
        }

        /// Compiles the filter.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Unsupported`] on an architecture seccompiler does not know;
        /// [`ErrorKind::InvalidInput`] if the rules do not compile.
        pub fn build(&self) -> Result<Filter> {
            let invalid = |what: String| Error::new(ErrorKind::InvalidInput, Op::Setup, what);
            let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| {
                Error::new(
                    ErrorKind::Unsupported,
                    Op::Setup,
                    format!("seccomp filters on {}: {e}", std::env::consts::ARCH),
                )
            })?;
            // Each call's allowed first arguments; `None` allows any.
            let mut allowed: BTreeMap<i64, Option<Vec<u64>>> = BTreeMap::new();
            let mut add = |nr: i64, values: Option<Vec<u64>>| {
                let entry = allowed.entry(nr).or_insert_with(|| Some(Vec::new()));
                match (entry.as_mut(), values) {
                    (Some(known), Some(values)) => {
                        for value in values {
                            if !known.contains(&value) {
                                known.push(value);
                            }
                        }
                    }
                    (_, None) => *entry = None,
                    (None, Some(_)) => {}
                }
            };
            for call in &self.state.syscalls {
                match &call.pin {
                    Pin::Any => add(call.nr, None),
                    Pin::Files => add(call.nr, Some(self.files.clone())),
                    Pin::Own(values) => add(call.nr, Some(values.clone())),
                }
            }
            for (nr, values) in &self.own {
                add(*nr, values.clone());
            }
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
            for (nr, values) in allowed {
                let Some(values) = values else {
                    rules.insert(nr, Vec::new());
                    continue;
                };
                // A call pinned to no value at all (calls on files, with no file given) is
                // not allowed.
                let mut alternatives = Vec::new();
                for value in values {
                    // Descriptors compare as C ints; AIO context ids are addresses.
                    let width = match u32::try_from(value) {
                        Ok(_) => SeccompCmpArgLen::Dword,
                        Err(_) => SeccompCmpArgLen::Qword,
                    };
                    let condition = SeccompCondition::new(0, width, SeccompCmpOp::Eq, value)
                        .map_err(|e| invalid(format!("system call {nr}: {e}")))?;
                    let rule = SeccompRule::new(vec![condition])
                        .map_err(|e| invalid(format!("system call {nr}: {e}")))?;
                    alternatives.push(rule);
                }
                if !alternatives.is_empty() {
                    rules.insert(nr, alternatives);
                }
            }
            let mismatch = match self.violation {
                Violation::KillProcess => SeccompAction::KillProcess,
                Violation::Trap => SeccompAction::Trap,
                Violation::Errno(errno) => SeccompAction::Errno(errno),
            };
            let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
                .map_err(|e| invalid(format!("seccomp filter: {e}")))?;
            let program: BpfProgram = filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| invalid(format!("seccomp filter: {e}")))?;
            Ok(Filter { program })
        }
    }

    /// A compiled seccomp filter.
    #[derive(Clone, Debug)]
    pub struct Filter {
        program: BpfProgram,
    }

    impl Filter {
        /// The number of BPF instructions.
        pub fn len(&self) -> usize {
            self.program.len()
        }

        /// True for a filter of no instructions (never the case for one [`Sandbox::build`]
        /// made).
        pub fn is_empty(&self) -> bool {
            self.program.is_empty()
        }

        /// Installs the filter on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`,
        /// after `PR_SET_NO_NEW_PRIVS`). It cannot be removed.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Other`] with the kernel's reason (no seccomp in this kernel, or a
        /// thread whose own filter stands in the way of TSYNC).
        pub fn apply(&self) -> Result<()> {
            seccompiler::apply_filter_all_threads(&self.program).map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    Op::Setup,
                    format!("installing the seccomp filter: {e}"),
                )
            })
        }
    }
}
