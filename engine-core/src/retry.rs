//! EINTR/EAGAIN retries and the fault hook around one synchronous attempt, shared by every
//! backend that executes requests with blocking syscalls.

use crate::config::{FaultAction, FaultHook};
use crate::error::ErrorKind;
use crate::file::File;
use crate::request::{OpKind, RawResult};

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
