//! What every backend built on io_uring (uring, and the runtimes hosted on their own rings)
//! needs to explain why io_uring cannot run here: the `kernel.io_uring_disabled` sysctl, the
//! memlock limit, and a diagnosis of an `io_uring_setup` failure.

use super::Diagnosis;

/// The sysctl that disables io_uring (Linux 6.6 and later).
const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Reads the `kernel.io_uring_disabled` sysctl, if the kernel has it (Linux 6.6 and later).
pub fn io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string(SYSCTL)
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
}

/// The soft `RLIMIT_MEMLOCK` in bytes, if it can be read.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the valid pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

/// Explains an `io_uring_setup` failure, given the `kernel.io_uring_disabled` sysctl (absent
/// before Linux 6.6) and the memlock limit.
pub fn diagnose(errno: i32, sysctl: Option<u8>, memlock: Option<u64>) -> Diagnosis {
    let (cause, remedy) = match errno {
        libc::ENOSYS => (
            "the kernel has no io_uring (older than 5.1, or built without CONFIG_IO_URING)".to_string(),
            "use a kernel with io_uring, or another backend".to_string(),
        ),
        libc::EPERM | libc::EACCES => match sysctl {
            Some(2) => (
                "io_uring disabled by sysctl kernel.io_uring_disabled=2".to_string(),
                "sysctl -w kernel.io_uring_disabled=0 (or 1 and add the user to kernel.io_uring_group)".to_string(),
            ),
            Some(1) => (
                "io_uring restricted by sysctl kernel.io_uring_disabled=1 to CAP_SYS_ADMIN and kernel.io_uring_group".to_string(),
                "add the process's group to kernel.io_uring_group, or sysctl -w kernel.io_uring_disabled=0".to_string(),
            ),
            _ => (
                "io_uring_setup denied: blocked by seccomp or a container policy".to_string(),
                "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile (Docker: a custom --security-opt seccomp=profile)".to_string(),
            ),
        },
        libc::ENOMEM => (
            format!(
                "io_uring_setup ran out of locked memory (RLIMIT_MEMLOCK {})",
                memlock.map_or("unknown".to_string(), |m| format!("{m} bytes"))
            ),
            "raise RLIMIT_MEMLOCK (ulimit -l, systemd LimitMEMLOCK=) or use Linux 5.12+, which accounts rings to memcg".to_string(),
        ),
        libc::EINVAL => (
            "io_uring_setup rejected the ring parameters".to_string(),
            "use a newer kernel, or turn off ENGINE_SQPOLL / ENGINE_IOPOLL".to_string(),
        ),
        libc::EMFILE | libc::ENFILE => (
            "no file descriptor left for the ring".to_string(),
            "raise the open-file limit (ulimit -n)".to_string(),
        ),
        _ => (
            format!("io_uring_setup failed ({})", std::io::Error::from_raw_os_error(errno)),
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
        let d = diagnose(libc::EPERM, Some(2), None);
        assert!(d.cause.contains("kernel.io_uring_disabled=2"), "{d}");
        assert!(
            d.remedy.contains("sysctl -w kernel.io_uring_disabled=0"),
            "{d}"
        );
        let d = diagnose(libc::EPERM, Some(0), None);
        assert!(d.cause.contains("seccomp"), "{d}");
        let d = diagnose(libc::EPERM, None, None);
        assert!(
            d.cause.contains("seccomp"),
            "sysctl absent (before 6.6): {d}"
        );
        let d = diagnose(libc::EPERM, Some(1), None);
        assert!(d.cause.contains("io_uring_group"), "{d}");
        let d = diagnose(libc::ENOSYS, None, None);
        assert!(d.cause.contains("no io_uring"), "{d}");
        let d = diagnose(libc::ENOMEM, Some(0), Some(65536));
        assert!(d.cause.contains("RLIMIT_MEMLOCK 65536 bytes"), "{d}");
        assert_eq!(d.errno, Some(libc::ENOMEM));
    }
}
