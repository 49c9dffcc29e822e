//! Can io_uring run here, and if not, why and what to do: ENOSYS, the
//! `kernel.io_uring_disabled` sysctl, seccomp or container denial, memlock, missing opcodes.

use engine_core::raw::simulated_setup_errno;
use engine_core::registry::{Diagnosis, Probe};
use engine_core::EngineConfig;
use io_uring::{opcode, IoUring};

/// The sysctl that disables io_uring (Linux 6.6 and later).
const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// The opcodes the backend needs, with their names.
const NEEDED: [(u8, &str); 4] = [
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Nop::CODE, "NOP"),
];

/// Reads the `kernel.io_uring_disabled` sysctl, if the kernel has it (Linux 6.6 and later).
pub(crate) fn sysctl() -> Option<u8> {
    std::fs::read_to_string(SYSCTL)
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
}

/// Probes for real: reads the sysctl, creates a two-entry ring and probes its opcodes (a
/// setup failure simulated by the configuration's test switches counts as real).
pub fn probe(config: &EngineConfig) -> Probe {
    let sysctl = sysctl();
    let setup = match simulated_setup_errno(config, crate::NAME) {
        Some(errno) => Err(errno),
        None => IoUring::new(2).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let ring = match setup {
        Ok(ring) => ring,
        Err(errno) => {
            return Probe::Unavailable(diagnose(errno, sysctl, crate::ring::memlock_limit()))
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Probe::Unavailable(Diagnosis {
            errno: e.raw_os_error(),
            cause: "the kernel cannot report io_uring opcodes (IORING_REGISTER_PROBE, Linux 5.6)"
                .into(),
            remedy: "use Linux 5.6 or later, or another backend".into(),
        });
    }
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Probe::Unavailable(missing_opcodes(&missing));
    }
    Probe::Available(format!(
        "io_uring with READ, WRITE, FSYNC{}",
        if probe.is_supported(opcode::ReadFixed::CODE) {
            ", READ_FIXED, WRITE_FIXED"
        } else {
            ""
        }
    ))
}

fn missing_opcodes(missing: &[&str]) -> Diagnosis {
    Diagnosis {
        errno: Some(libc::EOPNOTSUPP),
        cause: format!("the kernel's io_uring lacks opcodes {}", missing.join(", ")),
        remedy: "use Linux 5.6 or later, or another backend".into(),
    }
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
        let d = missing_opcodes(&["READ", "WRITE"]);
        assert!(d.cause.contains("READ, WRITE"), "{d}");
    }
}
