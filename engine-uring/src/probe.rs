//! Can io_uring run here, and if not, why and what to do: ENOSYS, the
//! `kernel.io_uring_disabled` sysctl, seccomp or container denial, memlock, missing opcodes.

use engine_core::raw::simulated_setup_errno;
pub use engine_core::registry::uring::diagnose;
use engine_core::registry::uring::{io_uring_disabled, memlock_limit};
use engine_core::registry::{Diagnosis, Probe};
use engine_core::EngineConfig;
use io_uring::{opcode, IoUring};

/// The opcodes the backend needs, with their names.
const NEEDED: [(u8, &str); 4] = [
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Nop::CODE, "NOP"),
];

/// Probes for real: reads the sysctl, creates a two-entry ring and probes its opcodes (a
/// setup failure simulated by the configuration's test switches counts as real).
pub fn probe(config: &EngineConfig) -> Probe {
    let sysctl = io_uring_disabled();
    let setup = match simulated_setup_errno(config, crate::NAME) {
        Some(errno) => Err(errno),
        None => IoUring::new(2).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let ring = match setup {
        Ok(ring) => ring,
        Err(errno) => return Probe::Unavailable(diagnose(errno, sysctl, memlock_limit())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_opcode_is_named() {
        let d = missing_opcodes(&["READ", "WRITE"]);
        assert!(d.cause.contains("READ, WRITE"), "{d}");
        assert_eq!(d.errno, Some(libc::EOPNOTSUPP));
    }
}
