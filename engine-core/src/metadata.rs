//! What a file is and how its space is managed: [`Metadata`] (from `statx`, with a block
//! device's size from `BLKGETSIZE64`) and the [`AllocateMode`]s of `fallocate`.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, SystemTime};

/// What [`crate::BackendExt::allocate`] does to a range of a file (`fallocate`'s modes).
///
/// Regular files on ext4 and XFS take all four; a block device takes only
/// [`AllocateMode::PunchHole`] and [`AllocateMode::ZeroRange`], on logical-block boundaries
/// (others are [`crate::ErrorKind::Unsupported`]); tmpfs takes all but
/// [`AllocateMode::ZeroRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocateMode {
    /// Reserves the blocks of the range, extending the file's length to its end if it is
    /// longer (mode 0). New bytes read as zeros; existing data is untouched.
    Allocate,
    /// Reserves the blocks of the range without changing the length
    /// (`FALLOC_FL_KEEP_SIZE`): preallocation for appends.
    KeepSize,
    /// Frees the blocks of the range, which then reads as zeros; the length is unchanged
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`). `Metadata::blocks` shrinks.
    PunchHole,
    /// Makes the range read as zeros, keeping its blocks allocated, and extends the length to
    /// its end if it is longer (`FALLOC_FL_ZERO_RANGE`).
    ZeroRange,
}

impl AllocateMode {
    /// The `fallocate` mode bits.
    pub fn bits(self) -> i32 {
        match self {
            AllocateMode::Allocate => 0,
            AllocateMode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
            AllocateMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            AllocateMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
        }
    }

    /// True for the modes that change what the range reads as (so they act like a write of
    /// zeros, and must meet a block device's or an `O_DIRECT` file's alignment).
    pub fn zeroes(self) -> bool {
        matches!(self, AllocateMode::PunchHole | AllocateMode::ZeroRange)
    }
}

/// The statx fields [`Metadata`] asks for.
pub(crate) const METADATA_MASK: u32 = libc::STATX_TYPE
    | libc::STATX_SIZE
    | libc::STATX_BLOCKS
    | libc::STATX_ATIME
    | libc::STATX_MTIME
    | libc::STATX_CTIME
    | libc::STATX_BTIME;

/// `BLKGETSIZE64` from `linux/fs.h`: `_IOR(0x12, 114, size_t)`; libc does not define it.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The `statx` record of a metadata request while the kernel may write it: a raw heap
/// allocation (never a `Box`, whose uniqueness the kernel's writes would break), freed on
/// drop, leaked by a request the kernel may still hold. Its `Debug` reads nothing.
pub struct StatxBuf(std::ptr::NonNull<libc::statx>);

// SAFETY: the record is plain data owned by this handle; the kernel writes it only while the
// request that owns the handle is in its slot, which no other thread touches then.
unsafe impl Send for StatxBuf {}
// SAFETY: as above; shared access only reads plain data.
unsafe impl Sync for StatxBuf {}

impl StatxBuf {
    /// A zeroed record.
    pub(crate) fn new() -> StatxBuf {
        // SAFETY: `statx` is plain old data; all-zero is a valid value.
        let record: Box<libc::statx> = Box::new(unsafe { std::mem::zeroed() });
        StatxBuf(std::ptr::NonNull::from(Box::leak(record)))
    }

    /// Where the kernel writes the record.
    pub fn as_mut_ptr(&self) -> *mut libc::statx {
        self.0.as_ptr()
    }

    /// Gives the record up without freeing it: for a request the kernel may still hold when
    /// its completion can no longer be reaped.
    pub(crate) fn leak(&mut self) {
        let leaked = std::mem::replace(self, StatxBuf::new());
        std::mem::forget(leaked);
    }

    fn get(&self) -> &libc::statx {
        // SAFETY: the allocation lives as long as `self`; callers read it only once the
        // kernel is done with it (a completed request's `Metadata`).
        unsafe { self.0.as_ref() }
    }
}

impl Drop for StatxBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and is freed only here.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl std::fmt::Debug for StatxBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The kernel may be writing the record: print where it is, never what it holds.
        f.debug_tuple("StatxBuf").field(&self.0).finish()
    }
}

/// A file's length, allocated blocks, kind and times, as `statx` reported them through the
/// engine ([`crate::BackendExt::metadata`]). For a block device, the length is the device's
/// size (`BLKGETSIZE64`), not the 0 `statx` reports. It holds the completed request's record:
/// a completion carrying it stays small.
pub struct Metadata(StatxBuf);

impl Clone for Metadata {
    fn clone(&self) -> Metadata {
        let copy = StatxBuf::new();
        // SAFETY: both records are valid, distinct allocations; statx is plain data.
        unsafe { copy.as_mut_ptr().write(*self.0.get()) };
        Metadata(copy)
    }
}

impl Metadata {
    /// A completed request's record as its answer.
    pub(crate) fn from_record(record: StatxBuf) -> Metadata {
        Metadata(record)
    }

    /// Completes a record the kernel has finished with: a block device's size comes from
    /// `BLKGETSIZE64`. Returns the errno when that fails.
    pub(crate) fn complete_record(record: &StatxBuf, fd: BorrowedFd<'_>) -> Result<(), i32> {
        let stat = record.get();
        if u32::from(stat.stx_mode) & libc::S_IFMT != libc::S_IFBLK {
            return Ok(());
        }
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        let raw = record.as_mut_ptr();
        // SAFETY: the kernel is done with the record, and its request, which owns it, is
        // being settled on this thread alone.
        unsafe {
            (*raw).stx_size = size;
            (*raw).stx_mask |= libc::STATX_SIZE;
        }
        Ok(())
    }

    /// The length in bytes: a regular file's size, or a block device's capacity.
    pub fn len(&self) -> u64 {
        self.0.get().stx_size
    }

    /// True when [`Metadata::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Allocated space, in 512-byte units (`st_blocks`): shrinks after a punched hole, grows
    /// after preallocation.
    pub fn blocks(&self) -> u64 {
        self.0.get().stx_blocks
    }

    /// The preferred I/O size of the filesystem (`st_blksize`).
    pub fn block_size(&self) -> u32 {
        self.0.get().stx_blksize
    }

    fn file_type(&self) -> u32 {
        u32::from(self.0.get().stx_mode) & libc::S_IFMT
    }

    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    /// True for a block device.
    pub fn is_block_device(&self) -> bool {
        self.file_type() == libc::S_IFBLK
    }

    fn time(&self, bit: u32, t: libc::statx_timestamp) -> Option<SystemTime> {
        if self.0.get().stx_mask & bit == 0 {
            return None;
        }
        let nanos = Duration::from_nanos(u64::from(t.tv_nsec));
        if t.tv_sec >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(t.tv_sec as u64) + nanos)
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(Duration::from_secs(t.tv_sec.unsigned_abs()))
                .and_then(|t| t.checked_add(nanos))
        }
    }

    /// The last data modification, when the filesystem reports it.
    pub fn modified(&self) -> Option<SystemTime> {
        self.time(libc::STATX_MTIME, self.0.get().stx_mtime)
    }

    /// The last access, when the filesystem reports it.
    pub fn accessed(&self) -> Option<SystemTime> {
        self.time(libc::STATX_ATIME, self.0.get().stx_atime)
    }

    /// The last status change (inode), when the filesystem reports it.
    pub fn changed(&self) -> Option<SystemTime> {
        self.time(libc::STATX_CTIME, self.0.get().stx_ctime)
    }

    /// The creation, when the filesystem reports it (ext4 and XFS do; tmpfs since 5.x).
    pub fn created(&self) -> Option<SystemTime> {
        self.time(libc::STATX_BTIME, self.0.get().stx_btime)
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("len", &self.len())
            .field("blocks", &self.blocks())
            .field("block_size", &self.block_size())
            .field("file", &self.is_file())
            .field("block_device", &self.is_block_device())
            .field("modified", &self.modified())
            .finish()
    }
}

/// Runs `statx` on `fd` into `statx` (the sync paths' and fallbacks' metadata); returns 0 or
/// `-errno`.
pub(crate) fn statx_into(fd: i32, statx: &mut libc::statx) -> i64 {
    // SAFETY: the path is a valid NUL-terminated empty string, `AT_EMPTY_PATH` makes statx
    // describe `fd` itself, and `statx` is a valid, writable statx buffer.
    let rc = unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, METADATA_MASK, statx) };
    if rc == 0 {
        0
    } else {
        -i64::from(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_statx_record_decodes_length_kind_and_times() {
        let mut file = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut file, &[7u8; 5000]).expect("write");
        let record = StatxBuf::new();
        // SAFETY: the record is valid and unshared for the call.
        let filled = statx_into(file.as_raw_fd(), unsafe { &mut *record.as_mut_ptr() });
        assert_eq!(filled, 0);
        Metadata::complete_record(&record, file.as_fd()).expect("a file needs no ioctl");
        let meta = Metadata::from_record(record);
        assert_eq!(meta.len(), 5000);
        assert!(meta.is_file() && !meta.is_dir() && !meta.is_block_device());
        assert!(meta.blocks() >= 8, "5000 bytes take at least 8 sectors");
        let std_meta = file.metadata().expect("metadata");
        assert_eq!(
            meta.modified().ok_or("mtime"),
            std_meta.modified().map_err(|_| "mtime")
        );
        let copy = meta.clone();
        assert_eq!((copy.len(), copy.blocks()), (meta.len(), meta.blocks()));
        let record = StatxBuf::new();
        assert_eq!(
            // SAFETY: the record is valid and unshared for the call.
            statx_into(-1, unsafe { &mut *record.as_mut_ptr() }),
            -i64::from(libc::EBADF),
            "a bad descriptor is an errno, not a panic"
        );
    }
}
