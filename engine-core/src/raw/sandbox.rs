//! What an engine asks of the kernel once it is set up: the steady-state system calls of each
//! backend, for users who run it under a seccomp allowlist (as Firedancer's tiles do).
//!
//! The steady state begins when every file the process will use is opened (or adopted),
//! every queue it will use is made and has run a request on its thread, and one request of
//! each kind has run through each API: the engine's threads and pools then exist, and no
//! request opens, maps or spawns anything. From then on a backend makes only the calls in
//! its [`SteadyState`]. The facade's `engine::sandbox` turns that list into a seccomp filter
//! in which every call that takes a descriptor is pinned to the files (or the engine's own
//! rings, contexts and eventfds) it may touch.
//!
//! Not in any list: closing a file (`close`, and on io_uring the file-table update), dropping
//! the engine (thread joins, `munmap`), making a queue, and what the process itself needs
//! beyond the engine (its allocator's `brk`/`mmap`/`munmap`/`madvise`/`mprotect`, its own
//! output, `exit_group`). The sandbox helper adds the last kind when asked.

use std::fmt;

/// What a system call's first argument must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Anything: the call takes no descriptor (`futex`), or only within the process.
    Any,
    /// One of the files the sandbox is built for (`pread64(fd, ...)`).
    Files,
    /// One of these values: the engine's own descriptors or AIO contexts (`io_uring_enter`
    /// on its rings, `io_submit` on its contexts).
    Own(Vec<u64>),
}

/// One system call of a backend's steady state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// The call's name, as in `man 2`.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: i64,
    /// What its first argument may be.
    pub pin: Pin,
    /// Why the backend makes it.
    pub why: &'static str,
}

impl Syscall {
    /// A call `name` (number `nr`) whose first argument is pinned by `pin`.
    pub fn new(name: &'static str, nr: i64, pin: Pin, why: &'static str) -> Syscall {
        Syscall { name, nr, pin, why }
    }
}

/// A backend's steady-state system calls, with what they are pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteadyState {
    /// The backend.
    pub backend: &'static str,
    /// The calls, each once.
    pub syscalls: Vec<Syscall>,
    /// What the user must know to run it in a sandbox (for example: make the queues before).
    pub notes: Vec<String>,
}

impl SteadyState {
    /// A list for `backend`: the calls every backend makes ([`SteadyState::common`]), then
    /// `syscalls`.
    pub fn new(backend: &'static str, syscalls: Vec<Syscall>) -> SteadyState {
        let mut all = SteadyState::common();
        for call in syscalls {
            if let Some(same) = all.iter_mut().find(|c| c.nr == call.nr) {
                *same = call;
            } else {
                all.push(call);
            }
        }
        SteadyState {
            backend,
            syscalls: all,
            notes: Vec::new(),
        }
    }

    /// The calls of every backend: `futex` (a waiter parks and is woken across threads) and
    /// `sched_yield` and `nanosleep`/`clock_nanosleep` (the retry backoff of EAGAIN).
    pub fn common() -> Vec<Syscall> {
        vec![
            Syscall::new(
                "futex",
                libc::SYS_futex,
                Pin::Any,
                "waiters park and are woken across threads",
            ),
            Syscall::new(
                "sched_yield",
                libc::SYS_sched_yield,
                Pin::Any,
                "a spinning waiter yields",
            ),
            Syscall::new(
                "nanosleep",
                libc::SYS_nanosleep,
                Pin::Any,
                "the backoff between retries of EAGAIN",
            ),
            Syscall::new(
                "clock_nanosleep",
                libc::SYS_clock_nanosleep,
                Pin::Any,
                "the backoff between retries of EAGAIN",
            ),
        ]
    }

    /// The calls that run file operations on a thread (the sync backend's, and the others'
    /// fallbacks), each pinned to the sandbox's files.
    pub fn file_calls() -> Vec<Syscall> {
        let on_files = |name, nr, why| Syscall::new(name, nr, Pin::Files, why);
        vec![
            on_files("pread64", libc::SYS_pread64, "reads"),
            on_files("pwrite64", libc::SYS_pwrite64, "writes"),
            on_files(
                "preadv2",
                libc::SYS_preadv2,
                "vectored reads, and reads tried with RWF_NOWAIT",
            ),
            on_files(
                "pwritev2",
                libc::SYS_pwritev2,
                "vectored and flagged (RWF_DSYNC, RWF_ATOMIC) writes",
            ),
            on_files("fsync", libc::SYS_fsync, "sync_all"),
            on_files("fdatasync", libc::SYS_fdatasync, "sync_data"),
            on_files("fallocate", libc::SYS_fallocate, "allocate"),
            on_files("ftruncate", libc::SYS_ftruncate, "set_len"),
            on_files(
                "statx",
                libc::SYS_statx,
                "metadata (statx of the descriptor, AT_EMPTY_PATH)",
            ),
            on_files(
                "ioctl",
                libc::SYS_ioctl,
                "metadata of a block device (BLKGETSIZE64 for its size)",
            ),
        ]
    }

    /// The call named `name`, if the list has it.
    pub fn get(&self, name: &str) -> Option<&Syscall> {
        self.syscalls.iter().find(|c| c.name == name)
    }

    /// The list without the call named `name` (for a negative control: a filter missing one
    /// call the backend makes must fail).
    pub fn without(mut self, name: &str) -> SteadyState {
        self.syscalls.retain(|c| c.name != name);
        self
    }

    /// Adds `values` to what the first argument of every [`Pin::Own`] call may be (the
    /// descriptors of queues made after the list was taken).
    pub fn with_own(mut self, values: &[u64]) -> SteadyState {
        for call in &mut self.syscalls {
            if let Pin::Own(own) = &mut call.pin {
                for value in values {
                    if !own.contains(value) {
                        own.push(*value);
                    }
                }
            }
        }
        self
    }
}

impl fmt::Display for SteadyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} steady state:", self.backend)?;
        for call in &self.syscalls {
            let pin = match &call.pin {
                Pin::Any => String::new(),
                Pin::Files => " (on the files)".to_string(),
                Pin::Own(values) => format!(" (on the engine's own {values:?})"),
            };
            writeln!(f, "  {}{pin}: {}", call.name, call.why)?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// The name of system call `nr` on this architecture, for the calls an engine or a test
/// harness makes; `None` for others.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    const NAMES: &[(i64, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_close, "close"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_madvise, "madvise"),
        (libc::SYS_mremap, "mremap"),
        (libc::SYS_brk, "brk"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_exit, "exit"),
        (libc::SYS_exit_group, "exit_group"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
        (libc::SYS_rt_sigreturn, "rt_sigreturn"),
        (libc::SYS_sigaltstack, "sigaltstack"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_register, "io_uring_register"),
        (libc::SYS_io_setup, "io_setup"),
        (libc::SYS_io_submit, "io_submit"),
        (libc::SYS_io_getevents, "io_getevents"),
        (libc::SYS_io_destroy, "io_destroy"),
        (libc::SYS_eventfd2, "eventfd2"),
        (libc::SYS_gettid, "gettid"),
        (libc::SYS_sched_getaffinity, "sched_getaffinity"),
        (libc::SYS_fstat, "fstat"),
        (libc::SYS_lseek, "lseek"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_prctl, "prctl"),
    ];
    SteadyState::common()
        .into_iter()
        .chain(SteadyState::file_calls())
        .find(|c| c.nr == nr)
        .map(|c| c.name)
        .or_else(|| NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_list_has_the_common_calls_once_and_its_own() {
        let list = SteadyState::new(
            "test",
            vec![Syscall::new(
                "futex",
                libc::SYS_futex,
                Pin::Own(vec![3]),
                "replaced",
            )],
        );
        let futexes: Vec<_> = list.syscalls.iter().filter(|c| c.name == "futex").collect();
        assert_eq!(futexes.len(), 1);
        assert_eq!(futexes[0].pin, Pin::Own(vec![3]));
        assert!(list.get("sched_yield").is_some());
        assert!(list.clone().without("futex").get("futex").is_none());
        let grown = list.with_own(&[3, 7]);
        assert_eq!(
            grown.get("futex").map(|c| c.pin.clone()),
            Some(Pin::Own(vec![3, 7]))
        );
    }

    #[test]
    fn names_come_from_the_lists_and_the_table() {
        assert_eq!(syscall_name(libc::SYS_pread64), Some("pread64"));
        assert_eq!(
            syscall_name(libc::SYS_io_uring_enter),
            Some("io_uring_enter")
        );
        assert_eq!(syscall_name(-1), None);
    }
}
