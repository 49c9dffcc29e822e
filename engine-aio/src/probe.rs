//! Can Linux AIO run here, and if not, why and what to do: `fs.aio-max-nr` exhausted, a
//! kernel without AIO, seccomp.

use engine_core::raw::{force_thread_sync, simulated_setup_errno};
use engine_core::registry::{Diagnosis, Probe};
use engine_core::EngineConfig;

use crate::abi::{io_destroy, io_setup};

fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Probes for real: creates and destroys a context of the configuration's queue depth (a
/// setup failure simulated by the configuration's test switches counts as real).
pub fn probe(config: &EngineConfig) -> Probe {
    let depth = config.queue_depth;
    let result = match simulated_setup_errno(config, crate::NAME) {
        Some(errno) => Err(errno),
        None => io_setup(u32::try_from(depth).unwrap_or(u32::MAX))
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
    };
    match result {
        Ok(ctx) => {
            let _ = io_destroy(ctx);
            let fsync = if crate::context::native_fsync() && !force_thread_sync(config) {
                "native"
            } else {
                "on a thread"
            };
            Probe::Available(format!(
                "Linux AIO, {depth} requests per context, fsync {fsync}; asynchronous only for O_DIRECT files"
            ))
        }
        Err(errno) => Probe::Unavailable(diagnose(errno)),
    }
}

/// Explains an `io_setup` failure.
pub fn diagnose(errno: i32) -> Diagnosis {
    let (cause, remedy) = match errno {
        libc::EAGAIN => {
            let nr = sysctl("aio-nr").map_or("unknown".to_string(), |n| n.to_string());
            let max = sysctl("aio-max-nr").map_or("unknown".to_string(), |n| n.to_string());
            (
                format!("fs.aio-max-nr is exhausted: fs.aio-nr={nr} of fs.aio-max-nr={max} events are reserved"),
                "raise it: sysctl -w fs.aio-max-nr=1048576 (or lower ENGINE_QUEUE_DEPTH)".to_string(),
            )
        }
        libc::ENOSYS => (
            "the kernel has no Linux AIO (built without CONFIG_AIO)".to_string(),
            "use a kernel with AIO, or another backend".to_string(),
        ),
        libc::EPERM | libc::EACCES => (
            "io_setup denied: blocked by seccomp or a container policy".to_string(),
            "allow io_setup, io_submit, io_getevents and io_destroy in the seccomp profile"
                .to_string(),
        ),
        libc::EINVAL => (
            "io_setup rejected the queue depth".to_string(),
            "lower ENGINE_QUEUE_DEPTH".to_string(),
        ),
        libc::ENOMEM => (
            "the kernel had no memory for the AIO context".to_string(),
            "lower ENGINE_QUEUE_DEPTH or free memory".to_string(),
        ),
        _ => (
            format!(
                "io_setup failed ({})",
                std::io::Error::from_raw_os_error(errno)
            ),
            "use another backend".to_string(),
        ),
    };
    Diagnosis {
        errno: Some(errno),
        cause,
        remedy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnoses_name_the_cause_and_the_remedy() {
        let d = diagnose(libc::EAGAIN);
        assert!(d.cause.contains("fs.aio-max-nr is exhausted"), "{d}");
        assert!(d.remedy.contains("sysctl -w fs.aio-max-nr"), "{d}");
        assert!(diagnose(libc::ENOSYS).cause.contains("CONFIG_AIO"));
        assert!(diagnose(libc::EPERM).cause.contains("seccomp"));
        assert_eq!(diagnose(libc::EINVAL).errno, Some(libc::EINVAL));
    }
}
