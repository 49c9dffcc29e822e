//! The non-destructive IOPOLL check: polled completions only work for O_DIRECT I/O on a
//! device whose block queue polls (`queue/io_poll` is 1 in sysfs). Nothing is read from or
//! written to the device to find out.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use engine_core::{Error, ErrorKind, FileRef, Op, OpenOptions, Result};

/// Refuses a file an IOPOLL engine could not complete requests on.
pub(crate) fn check(file: &std::fs::File, path: &Path, options: &OpenOptions) -> Result<()> {
    let refuse = |why: String| {
        Err(
            Error::new(ErrorKind::Unsupported, Op::Open, why).with_file(FileRef {
                id: 0,
                path: Some(path.into()),
            }),
        )
    };
    if !options.is_direct() {
        return refuse("ENGINE_IOPOLL needs O_DIRECT files: buffered I/O cannot be polled".into());
    }
    let meta = file.metadata().map_err(|e| Error::from_io(&e, Op::Open))?;
    let is_block = (meta.mode() & libc::S_IFMT) == libc::S_IFBLK;
    let dev = if is_block { meta.rdev() } else { meta.dev() };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let base = format!("/sys/dev/block/{major}:{minor}");
    let polls = [
        format!("{base}/queue/io_poll"),
        format!("{base}/../queue/io_poll"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim() == "1");
    match polls {
        Some(true) => Ok(()),
        Some(false) => refuse(format!(
            "device {major}:{minor} does not poll (queue/io_poll is 0); turn off ENGINE_IOPOLL \
             or give the NVMe driver poll queues (nvme.poll_queues)"
        )),
        None => refuse(format!(
            "device {major}:{minor} has no queue/io_poll in sysfs, so polled I/O is not possible"
        )),
    }
}
