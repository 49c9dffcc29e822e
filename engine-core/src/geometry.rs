//! Per-file I/O geometry: alignment rules, block sizes and the largest single transfer.
//!
//! Probed in this order, each step filling what the earlier ones could not:
//! `statx(STATX_DIOALIGN | STATX_DIO_READ_ALIGN)`, then `BLKSSZGET`/`BLKPBSZGET` for block
//! devices, then the backing device's sysfs queue attributes, then a conservative 4096. No
//! step can panic; a failed step is recorded and the next one runs.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The kernel's largest single read or write: `MAX_RW_COUNT`, `INT_MAX` rounded down to a
/// page. Longer requests transfer at most this many bytes per call.
pub const IO_BYTES_MAX: u64 = 0x7fff_f000;

/// The alignment assumed when nothing better can be probed.
pub const ALIGN_FALLBACK: u32 = 4096;

/// Whether a file's filesystem or device supports a feature ([`Geometry::direct_io`],
/// [`Geometry::nowait`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Support {
    /// The kernel said yes (for direct I/O: `statx` reported an alignment, or it is a block
    /// device; for NOWAIT: a non-blocking read was accepted).
    Supported,
    /// The kernel said no (direct I/O: `statx` reported alignment 0; NOWAIT: `EOPNOTSUPP`).
    Unsupported,
    /// The kernel did not say (for example a file opened without read access).
    Unknown,
}

/// Which probe supplied the alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeometrySource {
    /// `statx(STATX_DIOALIGN)`.
    Statx,
    /// `BLKSSZGET`/`BLKPBSZGET` on a block device.
    BlockIoctl,
    /// `/sys/dev/block/<major>:<minor>/queue/*_block_size` of the backing device.
    Sysfs,
    /// Nothing answered; the conservative 4096 is assumed.
    Fallback,
}

/// The alignment rules and sizes of one open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Required alignment of buffer addresses for direct I/O, in bytes.
    pub mem_align: u32,
    /// Required alignment of write offsets and of lengths for direct I/O, in bytes.
    pub offset_align: u32,
    /// Required alignment of read offsets for direct I/O; can be smaller than `offset_align`
    /// (`STATX_DIO_READ_ALIGN`, Linux 6.14 and later).
    pub read_offset_align: u32,
    /// Logical block (sector) size in bytes.
    pub logical_block_size: u32,
    /// Physical block size in bytes: the unit the device writes atomically at best.
    pub physical_block_size: u32,
    /// The largest transfer of one request; longer requests are short-transferred at this
    /// boundary and completed by the exact-transfer loop.
    pub io_bytes_max: u64,
    /// Whether direct I/O is possible on this file.
    pub direct_io: Support,
    /// Whether the file takes non-blocking reads (`RWF_NOWAIT`, `FMODE_NOWAIT`). Without
    /// them io_uring hands every request on it to kernel worker threads, and the sync backend
    /// cannot try a read on the caller's thread first (zram is such a device).
    pub nowait: Support,
    /// Which probe supplied the alignment.
    pub source: GeometrySource,
    /// True for block devices.
    pub is_block_device: bool,
    /// The shortest untorn write ([`crate::WriteFlags::ATOMIC`]), from `statx`
    /// `STATX_WRITE_ATOMIC`; 0 when the file takes none (every kernel before 6.11, ext4
    /// without hardware atomics, tmpfs).
    pub atomic_write_unit_min: u32,
    /// The longest untorn write; 0 when the file takes none.
    pub atomic_write_unit_max: u32,
    /// The longest untorn write on the fast path (hardware): longer ones up to
    /// `atomic_write_unit_max` take the filesystem's slower software fallback (XFS). 0 when
    /// there is no such boundary, or the kernel does not say (before 6.16).
    pub atomic_write_unit_max_opt: u32,
    /// The most buffers one untorn write may gather (1 on 6.18).
    pub atomic_write_segments_max: u32,
}

impl Geometry {
    /// The geometry assumed when nothing can be probed: 4096 everywhere.
    pub const FALLBACK: Geometry = Geometry {
        mem_align: ALIGN_FALLBACK,
        offset_align: ALIGN_FALLBACK,
        read_offset_align: ALIGN_FALLBACK,
        logical_block_size: ALIGN_FALLBACK,
        physical_block_size: ALIGN_FALLBACK,
        io_bytes_max: IO_BYTES_MAX,
        direct_io: Support::Unknown,
        nowait: Support::Unknown,
        source: GeometrySource::Fallback,
        is_block_device: false,
        atomic_write_unit_min: 0,
        atomic_write_unit_max: 0,
        atomic_write_unit_max_opt: 0,
        atomic_write_segments_max: 0,
    };

    /// Probes the geometry of an open file. Never fails: a probe that cannot answer leaves
    /// the next one, and in the end the fallback, to decide.
    pub fn probe(fd: BorrowedFd<'_>) -> Geometry {
        let mut geometry = Geometry::FALLBACK;
        let stat = statx(fd);
        let mut have_align = false;
        if let Some(stat) = &stat {
            geometry.is_block_device = (stat.stx_mode as u32 & libc::S_IFMT) == libc::S_IFBLK;
            let unit_max = stat.stx_atomic_write_unit_max;
            if stat.stx_mask & libc::STATX_WRITE_ATOMIC != 0 && unit_max.is_power_of_two() {
                geometry.atomic_write_unit_min = stat.stx_atomic_write_unit_min.max(1);
                geometry.atomic_write_unit_max = unit_max;
                geometry.atomic_write_unit_max_opt = stat.stx_atomic_write_unit_max_opt;
                geometry.atomic_write_segments_max = stat.stx_atomic_write_segments_max.max(1);
            }
            if stat.stx_mask & libc::STATX_DIOALIGN != 0 {
                if stat.stx_dio_offset_align == 0 {
                    geometry.direct_io = Support::Unsupported;
                } else {
                    geometry.direct_io = Support::Supported;
                    geometry.mem_align = stat.stx_dio_mem_align.max(1);
                    geometry.offset_align = stat.stx_dio_offset_align;
                    geometry.read_offset_align = stat.stx_dio_offset_align;
                    let read_align = stat.stx_dio_read_offset_align;
                    if stat.stx_mask & libc::STATX_DIO_READ_ALIGN != 0 && read_align != 0 {
                        geometry.read_offset_align = read_align;
                    }
                    geometry.logical_block_size = stat.stx_dio_offset_align;
                    geometry.source = GeometrySource::Statx;
                    have_align = true;
                }
            }
        }
        if geometry.is_block_device {
            if let Some((logical, physical)) = block_sizes(fd) {
                geometry.logical_block_size = logical;
                geometry.physical_block_size = physical;
                geometry.direct_io = Support::Supported;
                if !have_align {
                    geometry.mem_align = logical;
                    geometry.offset_align = logical;
                    geometry.read_offset_align = logical;
                    geometry.source = GeometrySource::BlockIoctl;
                    have_align = true;
                }
            }
            if let Some(stat) = &stat {
                // The device's own queue, for the physical size when the ioctl is missing.
                let dev = (stat.stx_rdev_major, stat.stx_rdev_minor);
                geometry.apply_sysfs(dev, have_align);
            }
        } else if let Some(stat) = &stat {
            // A file on a filesystem: the backing device's sectors bound the physical size.
            let dev = (stat.stx_dev_major, stat.stx_dev_minor);
            if geometry.apply_sysfs(dev, have_align) {
                have_align = true;
            }
        }
        if !have_align {
            geometry.physical_block_size = geometry.physical_block_size.max(ALIGN_FALLBACK);
        }
        geometry.physical_block_size = geometry
            .physical_block_size
            .max(geometry.logical_block_size);
        debug_assert!(geometry.offset_align.is_power_of_two(), "{geometry:?}");
        geometry
    }

    /// Fills block sizes from sysfs; returns true when it also supplied the alignment.
    fn apply_sysfs(&mut self, dev: (u32, u32), have_align: bool) -> bool {
        let Some((logical, physical)) = sysfs_block_sizes(dev) else {
            return false;
        };
        self.physical_block_size = physical;
        if have_align {
            return false;
        }
        self.logical_block_size = logical;
        self.mem_align = logical;
        self.offset_align = logical;
        self.read_offset_align = logical;
        self.source = GeometrySource::Sysfs;
        true
    }

    /// Raises every alignment to at least `align` (a power of two), for callers who want the
    /// same rules on every device (for example 4096 everywhere).
    pub fn require_alignment(&mut self, align: u32) {
        debug_assert!(align.is_power_of_two(), "alignment {align}");
        self.mem_align = self.mem_align.max(align);
        self.offset_align = self.offset_align.max(align);
        self.read_offset_align = self.read_offset_align.max(align);
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mem_align={} offset_align={} read_offset_align={} logical={} physical={} \
             io_bytes_max={} direct_io={:?} nowait={:?} source={:?} atomic_write={}..{}",
            self.mem_align,
            self.offset_align,
            self.read_offset_align,
            self.logical_block_size,
            self.physical_block_size,
            self.io_bytes_max,
            self.direct_io,
            self.nowait,
            self.source,
            self.atomic_write_unit_min,
            self.atomic_write_unit_max
        )
    }
}

/// Whether `fd` (open for reading) takes `RWF_NOWAIT` reads: one `preadv2(2)` of one aligned
/// block at offset 0. `EOPNOTSUPP` means the file or device has no NOWAIT support; any other
/// answer (data, end of file, `EAGAIN`) means it has.
pub(crate) fn probe_nowait(fd: BorrowedFd<'_>, geometry: &Geometry) -> Support {
    let len = geometry.offset_align.max(geometry.mem_align).max(512) as usize;
    let Ok(mut buf) = crate::buf::AlignedBuf::zeroed(len, geometry.mem_align.max(1) as usize)
    else {
        return Support::Unknown;
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which lives across the call and is `len` bytes long.
    let rc = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    if rc >= 0 {
        return Support::Supported;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) => Support::Unsupported,
        Some(libc::EAGAIN) => Support::Supported,
        _ => Support::Unknown,
    }
}

/// `statx(2)` on an open file descriptor, asking for the direct-I/O alignment.
fn statx(fd: BorrowedFd<'_>) -> Option<libc::statx> {
    // SAFETY: `statx` is plain old data; all-zero is a valid value.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_TYPE
        | libc::STATX_DIOALIGN
        | libc::STATX_DIO_READ_ALIGN
        | libc::STATX_WRITE_ATOMIC;
    // SAFETY: the path is a valid NUL-terminated empty string, `AT_EMPTY_PATH` makes statx
    // describe `fd` itself, and `stat` is a valid, writable statx buffer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            mask,
            &mut stat,
        )
    };
    (rc == 0).then_some(stat)
}

/// `BLKSSZGET` and `BLKPBSZGET` (see `ioctl_blk(2)` / `linux/fs.h`) on a block device.
fn block_sizes(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `logical`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET, &mut logical) };
    if rc != 0 || logical <= 0 || !(logical as u32).is_power_of_two() {
        return None;
    }
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, which points at
    // `physical`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKPBSZGET, &mut physical) };
    let physical = if rc == 0 && physical.is_power_of_two() {
        physical
    } else {
        logical as u32
    };
    Some((logical as u32, physical))
}

/// Reads the queue's block sizes from sysfs; partitions keep theirs in the parent's queue.
fn sysfs_block_sizes((major, minor): (u32, u32)) -> Option<(u32, u32)> {
    let base = format!("/sys/dev/block/{major}:{minor}");
    let read = |dir: &str, name: &str| -> Option<u32> {
        let text = std::fs::read_to_string(format!("{dir}/{name}")).ok()?;
        let value: u32 = text.trim().parse().ok()?;
        value.is_power_of_two().then_some(value)
    };
    for dir in [format!("{base}/queue"), format!("{base}/../queue")] {
        if let Some(logical) = read(&dir, "logical_block_size") {
            let physical = read(&dir, "physical_block_size").unwrap_or(logical);
            return Some((logical, physical.max(logical)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn probe_on_a_regular_file_is_sane() {
        let file = tempfile::tempfile().expect("tempfile");
        let g = Geometry::probe(file.as_fd());
        assert!(g.mem_align.is_power_of_two(), "{g}");
        assert!(g.offset_align.is_power_of_two(), "{g}");
        assert!(g.read_offset_align <= g.offset_align, "{g}");
        assert!(g.physical_block_size >= g.logical_block_size, "{g}");
        assert_eq!(g.io_bytes_max, IO_BYTES_MAX);
        assert!(!g.is_block_device);
    }

    #[test]
    fn probe_never_panics_on_odd_files() {
        for path in ["/dev/null", "/proc/self/status", "/dev/shm", "/"] {
            if let Ok(file) = std::fs::File::open(path) {
                let g = Geometry::probe(file.as_fd());
                assert!(g.offset_align.is_power_of_two(), "{path}: {g}");
            }
        }
    }

    #[test]
    fn required_alignment_only_raises() {
        let mut g = Geometry::FALLBACK;
        g.mem_align = 512;
        g.offset_align = 512;
        g.read_offset_align = 512;
        g.require_alignment(4096);
        assert_eq!(
            (g.mem_align, g.offset_align, g.read_offset_align),
            (4096, 4096, 4096)
        );
        g.require_alignment(1);
        assert_eq!(g.offset_align, 4096);
    }

    #[test]
    fn max_rw_count_is_page_aligned() {
        assert_eq!(IO_BYTES_MAX % 4096, 0);
        assert_eq!(IO_BYTES_MAX, (i32::MAX as u64) & !4095);
    }
}
