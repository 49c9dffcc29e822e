//! EINTR/EAGAIN retries and the fault hook around one synchronous attempt, shared by every
//! backend that executes requests with blocking syscalls.

use crate::config::{FaultAction, FaultHook};
use crate::error::ErrorKind;
use crate::file::File;
use crate::request::{OpKind, RawResult, Request};

/// The most retries of one request on EINTR/EAGAIN before the errno is returned. Real
/// EINTR/EAGAIN on files are rare and short-lived; the bound keeps a pathological device (or a
/// hook that always fails) from spinning forever.
pub const RETRIES_MAX: u32 = 64;

/// Runs `attempt(len)` until it returns anything but EINTR or EAGAIN, at most
/// [`RETRIES_MAX`] + 1 times, consulting `hook` before each attempt. Returns the final raw
/// result and the number of retries.
pub fn run_with_retries(
    hook: Option<&dyn FaultHook>,
    kind: OpKind,
    file: &File,
    offset: u64,
    len: usize,
    mut attempt: impl FnMut(usize) -> RawResult,
) -> (RawResult, u32) {
    let mut retries = 0;
    loop {
        let fault = hook.and_then(|h| h.before(kind, file, offset, len, retries));
        let raw = match fault {
            Some(FaultAction::Fail(errno)) => Err(errno),
            Some(FaultAction::Short(n)) => attempt(len.min(n)),
            Some(FaultAction::Torn { persist, errno }) => attempt(len.min(persist)).and(Err(errno)),
            None => attempt(len),
        };
        match raw {
            Err(errno) if ErrorKind::errno_is_transient(errno) && retries < RETRIES_MAX => {
                retries += 1;
                if errno == libc::EAGAIN {
                    std::thread::yield_now();
                }
            }
            other => return (other, retries),
        }
    }
}

/// What the fault hook decided for a request an asynchronous backend is about to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookGate {
    /// Submit it, transferring `len` bytes.
    Submit {
        /// The length to submit.
        len: usize,
        /// Injected EINTR/EAGAIN retried before this decision.
        retries: u32,
        /// A torn write: report this errno even when the transfer succeeds.
        fail_after: Option<i32>,
    },
    /// Do not submit it: it fails with `errno`.
    Fail {
        /// The injected errno.
        errno: i32,
        /// Injected EINTR/EAGAIN retried before this decision.
        retries: u32,
    },
}

/// Consults `hook` for a request about to be submitted by a backend that does not run the
/// syscall itself (io_uring, AIO), retrying injected EINTR/EAGAIN like real ones, at most
/// [`RETRIES_MAX`] times. `retries` is how many retries the request already had.
pub fn hook_gate(
    hook: Option<&dyn FaultHook>,
    request: &Request,
    len: usize,
    retries: u32,
) -> HookGate {
    let mut retries = retries;
    let Some(hook) = hook else {
        return HookGate::Submit {
            len,
            retries,
            fail_after: None,
        };
    };
    loop {
        match hook.before(request.kind, &request.file, request.offset, len, retries) {
            None => {
                return HookGate::Submit {
                    len,
                    retries,
                    fail_after: None,
                }
            }
            Some(FaultAction::Short(n)) => {
                return HookGate::Submit {
                    len: len.min(n),
                    retries,
                    fail_after: None,
                };
            }
            Some(FaultAction::Torn { persist, errno }) => {
                return HookGate::Submit {
                    len: len.min(persist),
                    retries,
                    fail_after: Some(errno),
                };
            }
            Some(FaultAction::Fail(errno))
                if ErrorKind::errno_is_transient(errno) && retries < RETRIES_MAX =>
            {
                retries += 1;
            }
            Some(FaultAction::Fail(errno)) => return HookGate::Fail { errno, retries },
        }
    }
}
