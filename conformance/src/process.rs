//! What the process holds, read from `/proc/self`: descriptors, threads, resident memory and
//! the files registered with its io_uring instances. The load tests compare them before an
//! engine is made and after it is dropped.

use std::time::{Duration, Instant};

/// Open descriptors and threads of this process.
pub fn census() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |entries| entries.count());
    (count("/proc/self/fd"), count("/proc/self/task"))
}

/// The descriptors this process holds whose target (as `/proc/self/fd` shows it) is `what`,
/// such as `anon_inode:[eventfd]`, with their numbers.
fn descriptors_of(what: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd").map_or(Vec::new(), |entries| {
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                (target.as_os_str() == what).then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
    })
}

/// The eventfds this process holds open.
pub fn eventfds() -> usize {
    descriptors_of("anon_inode:[eventfd]").len()
}

/// Descriptors a backend's runtime leaks per engine, and what they are: glommio 0.9 leaves
/// its executor's sleep-notifier eventfd open after the executor is dropped (a bare
/// `LocalExecutor` made and run to the end does the same). Every other backend leaks none.
pub fn leaked_by_runtime(backend: &str) -> usize {
    match backend {
        "glommio" => 1,
        _ => 0,
    }
}

/// Files registered with every io_uring instance of this process, from the kernel's
/// `fdinfo` of each ring (the `UserFiles` table lists each occupied slot as `<slot>: <path>`).
pub fn registered_files() -> usize {
    descriptors_of("anon_inode:[io_uring]")
        .iter()
        .map(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            info.lines()
                .skip_while(|line| !line.starts_with("UserFiles:"))
                .skip(1)
                .take_while(|line| {
                    line.trim_start()
                        .split_once(':')
                        .is_some_and(|(slot, _)| slot.parse::<u32>().is_ok())
                })
                .count()
        })
        .sum()
}

/// Resident memory of this process in bytes (`VmRSS`), or 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Waits up to five seconds for the descriptors and threads to be back at `before`, the
/// census taken before `backend`'s engine was made (kernel workers of a ring may take a moment
/// to exit after it closes). What the backend's runtime is known to leak is allowed, and only
/// as the eventfds it leaks (`eventfds_before` is [`eventfds`] at the same moment).
///
/// # Errors
///
/// The census still found, when the deadline passed.
pub fn back_to_baseline(
    backend: &str,
    before: (usize, usize),
    eventfds_before: usize,
) -> Result<(usize, usize), (usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let allowed = leaked_by_runtime(backend);
    let back = |now: (usize, usize)| {
        let runtime = eventfds().saturating_sub(eventfds_before).min(allowed);
        now.0 <= before.0 + runtime && now.1 <= before.1
    };
    let mut after = census();
    while !back(after) {
        if Instant::now() >= deadline {
            return Err(after);
        }
        std::thread::sleep(Duration::from_millis(20));
        after = census();
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_census_sees_a_new_descriptor_and_thread() {
        // The census counts the whole process, and the other tests of this binary run beside
        // this one, opening and closing descriptors and threads of their own: a count can
        // fall by their closes while it rises by ours. So it is tried a few times; a census
        // that cannot see a new descriptor or thread fails every attempt.
        let mut seen = Vec::new();
        for _ in 0..20 {
            let (fds, threads) = census();
            let file = std::fs::File::open("/proc/self/status").expect("open");
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || stopped.recv());
            let (fds_now, threads_now) = census();
            drop((file, stop));
            let _ = thread.join();
            if fds_now > fds && threads_now > threads {
                assert!(resident_bytes() > 0, "VmRSS read");
                return;
            }
            seen.push(format!(
                "descriptors {fds} -> {fds_now}, threads {threads} -> {threads_now}"
            ));
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the census never saw the new descriptor and thread: {seen:?}");
    }
}
