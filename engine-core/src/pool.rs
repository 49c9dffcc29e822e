//! The page allocator trait and a pooled implementation: power-of-two size classes, a bound
//! on the memory held, reuse on drop, and statistics.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Op, Result};

/// Hands out aligned buffers.
pub trait PageAllocator: Send + Sync {
    /// The alignment of every buffer handed out.
    fn align(&self) -> usize;

    /// A buffer of `len` bytes, all zero.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoMemory`] when the allocator's bound or the system is out of memory;
    /// [`ErrorKind::InvalidInput`] when `len` is larger than the allocator serves.
    fn alloc(&self, len: usize) -> Result<AlignedBuf>;

    /// A buffer of `len` bytes whose contents are unspecified (but initialised: earlier
    /// contents of recycled memory). For reads that overwrite the whole buffer.
    ///
    /// # Errors
    ///
    /// As for [`PageAllocator::alloc`].
    fn alloc_for_overwrite(&self, len: usize) -> Result<AlignedBuf> {
        self.alloc(len)
    }
}

/// Settings of a [`PagePool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Alignment of every buffer; a power of two.
    pub align: usize,
    /// The smallest size class in bytes; a power of two, at least `align`.
    pub class_size_min: usize,
    /// The largest size class in bytes; a power of two.
    pub class_size_max: usize,
    /// The most memory, in use plus cached, the pool may hold.
    pub limit_bytes: usize,
    /// Carve every buffer from one region of `limit_bytes`, reserved at creation (and backed
    /// by memory only as it is touched), so a backend can register the whole pool with the
    /// kernel at once (io_uring fixed buffers). Cached blocks are then never freed before the
    /// pool is, and [`PagePool::trim`] releases nothing.
    pub contiguous: bool,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            align: 4096,
            class_size_min: 4096,
            class_size_max: 64 << 20,
            limit_bytes: 1 << 30,
            contiguous: false,
        }
    }
}

/// A snapshot of a pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out in all.
    pub allocations: u64,
    /// Of those, how many reused cached memory instead of allocating.
    pub reuses: u64,
    /// Requests refused because the bound was reached or the system had no memory.
    pub failures: u64,
    /// Bytes in buffers currently handed out.
    pub bytes_in_use: u64,
    /// Bytes cached for reuse.
    pub bytes_cached: u64,
    /// The highest `bytes_in_use + bytes_cached` seen.
    pub bytes_peak: u64,
    /// The bound on `bytes_in_use + bytes_cached`.
    pub limit_bytes: u64,
}

/// A pointer to cached pool memory.
struct FreePtr(NonNull<u8>);

// SAFETY: a cached block is owned by the pool alone; the pointer is only a handle to it and is
// handed to exactly one buffer at a time under the free list's mutex.
unsafe impl Send for FreePtr {}

struct Class {
    size: usize,
    free: Mutex<Vec<FreePtr>>,
}

/// The one region a contiguous pool carves its blocks from.
struct Region {
    base: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the region is plain memory owned by the pool; blocks carved from it are handed to
// one buffer at a time, and the base pointer itself is only read.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` exposes only the base address and the size.
unsafe impl Sync for Region {}

static POOL_IDS: AtomicU64 = AtomicU64::new(1);

struct Shared {
    id: u64,
    config: PoolConfig,
    region: Option<Region>,
    classes: Vec<Class>,
    /// Guards the bound: bytes in use plus cached. Changed only under `reserve`.
    bytes_held: Mutex<u64>,
    allocations: AtomicU64,
    reuses: AtomicU64,
    failures: AtomicU64,
    bytes_in_use: AtomicU64,
    bytes_cached: AtomicU64,
    bytes_peak: AtomicU64,
}

/// A pooled page allocator; clones share the pool.
///
/// # Examples
///
/// ```
/// use engine_core::{PageAllocator, PagePool, PoolConfig};
/// let pool = PagePool::new(PoolConfig::default()).unwrap();
/// drop(pool.alloc(4096).unwrap());
/// let again = pool.alloc(4096).unwrap();
/// assert_eq!(pool.stats().reuses, 1);
/// assert!(again.iter().all(|&b| b == 0));
/// ```
#[derive(Clone)]
pub struct PagePool {
    shared: Arc<Shared>,
}

/// Returns a pooled buffer's memory to its class on drop.
pub(crate) struct PoolReturn {
    shared: Arc<Shared>,
    class: usize,
}

impl PoolReturn {
    pub(crate) fn pool_id(&self) -> u64 {
        self.shared.id
    }

    pub(crate) fn give_back(self, ptr: NonNull<u8>, initialized: usize) {
        let class = &self.shared.classes[self.class];
        debug_assert_eq!(
            initialized, class.size,
            "pool memory is always fully initialised"
        );
        let size = class.size as u64;
        class
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(FreePtr(ptr));
        self.shared.bytes_in_use.fetch_sub(size, Ordering::Relaxed);
        self.shared.bytes_cached.fetch_add(size, Ordering::Relaxed);
    }
}

impl PagePool {
    /// Creates an empty pool.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the sizes are not powers of two, the smallest class is
    /// below the alignment, or the largest is below the smallest.
    pub fn new(config: PoolConfig) -> Result<PagePool> {
        let invalid = |why: String| Error::new(ErrorKind::InvalidInput, Op::Setup, why);
        if !config.align.is_power_of_two() || config.align > crate::buf::ALIGN_MAX {
            return Err(invalid(format!(
                "pool alignment {} is not a power of two",
                config.align
            )));
        }
        if !config.class_size_min.is_power_of_two() || config.class_size_min < config.align {
            return Err(invalid(format!(
                "smallest class {} must be a power of two no smaller than the alignment {}",
                config.class_size_min, config.align
            )));
        }
        if !config.class_size_max.is_power_of_two()
            || config.class_size_max < config.class_size_min
            || config.class_size_max > 1 << 40
        {
            return Err(invalid(format!(
                "largest class {} must be a power of two between {} and 2^40",
                config.class_size_max, config.class_size_min
            )));
        }
        let region = if config.contiguous {
            let layout = std::alloc::Layout::from_size_align(config.limit_bytes, config.align)
                .ok()
                .filter(|l| l.size() > 0)
                .ok_or_else(|| invalid(format!("region of {} bytes", config.limit_bytes)))?;
            // SAFETY: the layout has a non-zero size, checked just above.
            let raw = unsafe { std::alloc::alloc_zeroed(layout) };
            let base = NonNull::new(raw).ok_or_else(|| {
                Error::new(
                    ErrorKind::NoMemory,
                    Op::Setup,
                    format!("reserving a pool region of {} bytes", config.limit_bytes),
                )
            })?;
            Some(Region { base, layout })
        } else {
            None
        };
        let mut classes = Vec::new();
        let mut size = config.class_size_min;
        while size <= config.class_size_max {
            // Room for every block the bound allows (up to 4096 per class), so returning a
            // buffer never allocates.
            let room = (config.limit_bytes / size).min(4096);
            classes.push(Class {
                size,
                free: Mutex::new(Vec::with_capacity(room)),
            });
            size <<= 1;
        }
        Ok(PagePool {
            shared: Arc::new(Shared {
                id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
                config,
                region,
                classes,
                bytes_held: Mutex::new(0),
                allocations: AtomicU64::new(0),
                reuses: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                bytes_in_use: AtomicU64::new(0),
                bytes_cached: AtomicU64::new(0),
                bytes_peak: AtomicU64::new(0),
            }),
        })
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// A number unique to this pool in the process; see [`AlignedBuf::pool_id`].
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// For a contiguous pool, the start and size of its region: every buffer it hands out lies
    /// inside it.
    pub fn region(&self) -> Option<(*mut u8, usize)> {
        self.shared
            .region
            .as_ref()
            .map(|r| (r.base.as_ptr(), r.layout.size()))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            allocations: s.allocations.load(Ordering::Relaxed),
            reuses: s.reuses.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            bytes_in_use: s.bytes_in_use.load(Ordering::Relaxed),
            bytes_cached: s.bytes_cached.load(Ordering::Relaxed),
            bytes_peak: s.bytes_peak.load(Ordering::Relaxed),
            limit_bytes: s.config.limit_bytes as u64,
        }
    }

    /// Frees every cached buffer, returning the bytes released (always 0 for a contiguous
    /// pool, whose blocks stay carved until the pool is dropped).
    pub fn trim(&self) -> u64 {
        if self.shared.region.is_some() {
            return 0;
        }
        let mut released = 0;
        for class in &self.shared.classes {
            let drained: Vec<FreePtr> =
                std::mem::take(&mut *class.free.lock().unwrap_or_else(PoisonError::into_inner));
            for ptr in drained {
                self.free_block(ptr, class.size);
                released += class.size as u64;
            }
        }
        released
    }

    fn class_for(&self, len: usize) -> Result<usize> {
        let want = len.max(self.shared.config.class_size_min);
        let index = self.shared.classes.iter().position(|c| c.size >= want);
        index.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                Op::Alloc,
                format!(
                    "{len} bytes is more than the pool's largest class ({})",
                    self.shared.config.class_size_max
                ),
            )
        })
    }

    fn free_block(&self, ptr: FreePtr, size: usize) {
        let layout = block_layout(size, self.shared.config.align);
        // SAFETY: every cached block was allocated by `take` with this exact layout, and it was
        // just removed from its free list, so nothing else refers to it.
        unsafe { std::alloc::dealloc(ptr.0.as_ptr(), layout) };
        let s = &self.shared;
        s.bytes_cached.fetch_sub(size as u64, Ordering::Relaxed);
        *s.bytes_held.lock().unwrap_or_else(PoisonError::into_inner) -= size as u64;
    }

    /// Takes a block of class `index`, reusing a cached one when it can.
    fn take(&self, index: usize) -> Result<AlignedBuf> {
        let s = &self.shared;
        let class = &s.classes[index];
        s.allocations.fetch_add(1, Ordering::Relaxed);
        let cached = class
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let ptr = match cached {
            Some(FreePtr(ptr)) => {
                s.reuses.fetch_add(1, Ordering::Relaxed);
                s.bytes_cached
                    .fetch_sub(class.size as u64, Ordering::Relaxed);
                ptr
            }
            None => self.allocate_new(class.size)?,
        };
        s.bytes_in_use
            .fetch_add(class.size as u64, Ordering::Relaxed);
        let owner = PoolReturn {
            shared: Arc::clone(&self.shared),
            class: index,
        };
        // SAFETY: `ptr` is a block of `class.size` bytes aligned to `align`, zeroed when it was
        // first allocated (so fully initialised), and owned by this pool until `owner` gives it
        // back.
        Ok(unsafe { AlignedBuf::from_pool(ptr, class.size, class.size, s.config.align, owner) })
    }

    fn allocate_new(&self, size: usize) -> Result<NonNull<u8>> {
        let s = &self.shared;
        let limit = s.config.limit_bytes as u64;
        let mut held = s.bytes_held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held + size as u64 > limit {
            drop(held);
            // Make room by freeing cached blocks of other classes before refusing.
            self.trim();
            held = s.bytes_held.lock().unwrap_or_else(PoisonError::into_inner);
            if *held + size as u64 > limit {
                s.failures.fetch_add(1, Ordering::Relaxed);
                s.allocations.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::NoMemory,
                    Op::Alloc,
                    format!("page pool bound of {limit} bytes reached ({} held)", *held),
                ));
            }
        }
        if let Some(region) = &s.region {
            // Carve the next block: `held` is also the bump offset, since a contiguous pool
            // never frees a block. Every size is a multiple of the alignment, and so is every
            // offset.
            let offset = *held as usize;
            debug_assert_eq!(offset % s.config.align, 0, "carve offset aligned");
            // SAFETY: `offset + size <= limit_bytes`, the region's size, checked above.
            let ptr = unsafe { region.base.add(offset) };
            *held += size as u64;
            s.bytes_peak.fetch_max(*held, Ordering::Relaxed);
            return Ok(ptr);
        }
        let layout = block_layout(size, s.config.align);
        // SAFETY: the layout's size is a class size, which is non-zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            s.failures.fetch_add(1, Ordering::Relaxed);
            s.allocations.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::new(
                ErrorKind::NoMemory,
                Op::Alloc,
                format!("the system refused {size} bytes"),
            ));
        };
        *held += size as u64;
        s.bytes_peak.fetch_max(*held, Ordering::Relaxed);
        Ok(ptr)
    }
}

fn block_layout(size: usize, align: usize) -> std::alloc::Layout {
    // Class sizes and the alignment are powers of two checked in `PagePool::new`, and the size
    // is at least the alignment, so this layout is always valid.
    std::alloc::Layout::from_size_align(size, align).unwrap_or(std::alloc::Layout::new::<u8>())
}

impl PageAllocator for PagePool {
    fn align(&self) -> usize {
        self.shared.config.align
    }

    fn alloc(&self, len: usize) -> Result<AlignedBuf> {
        let mut buf = self.alloc_for_overwrite(len)?;
        buf.as_mut_slice().fill(0);
        Ok(buf)
    }

    fn alloc_for_overwrite(&self, len: usize) -> Result<AlignedBuf> {
        let index = self.class_for(len)?;
        let mut buf = self.take(index)?;
        buf.resize(len)?;
        Ok(buf)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(region) = &self.region {
            // SAFETY: the region was allocated in `PagePool::new` with this layout; the last
            // reference to the pool is going away, so no buffer points into it.
            unsafe { std::alloc::dealloc(region.base.as_ptr(), region.layout) };
            return;
        }
        for class in &mut self.classes {
            let layout = block_layout(class.size, self.config.align);
            let free = class.free.get_mut().unwrap_or_else(PoisonError::into_inner);
            for FreePtr(ptr) in free.drain(..) {
                // SAFETY: cached blocks were allocated with this layout; the last reference to
                // the pool is going away, so none is in use.
                unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
            }
        }
    }
}

impl std::fmt::Debug for PagePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagePool")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(limit: usize) -> PagePool {
        PagePool::new(PoolConfig {
            align: 4096,
            class_size_min: 4096,
            class_size_max: 1 << 20,
            limit_bytes: limit,
            contiguous: false,
        })
        .expect("valid config")
    }

    #[test]
    fn classes_round_up_and_reuse() {
        let pool = pool(1 << 24);
        let a = pool.alloc(5000).expect("alloc");
        assert_eq!(a.len(), 5000);
        assert_eq!(a.capacity(), 8192, "rounded to the 8 KiB class");
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        let addr = a.as_ptr();
        drop(a);
        let b = pool.alloc(8192).expect("alloc");
        assert_eq!(b.as_ptr(), addr, "same block reused");
        let stats = pool.stats();
        assert_eq!((stats.allocations, stats.reuses), (2, 1));
        assert_eq!(stats.bytes_in_use, 8192);
        assert_eq!(stats.bytes_cached, 0);
    }

    #[test]
    fn reused_memory_is_zeroed_by_alloc() {
        let pool = pool(1 << 24);
        let mut a = pool.alloc(4096).expect("alloc");
        a.fill(0xAB);
        drop(a);
        let b = pool.alloc(4096).expect("alloc");
        assert!(
            b.iter().all(|&x| x == 0),
            "alloc must not leak earlier contents"
        );
    }

    #[test]
    fn bound_is_enforced_and_cached_memory_is_trimmed_to_make_room() {
        let pool = pool(16384);
        let a = pool.alloc(8192).expect("first");
        let b = pool.alloc(8192).expect("second");
        let err = pool.alloc(4096).expect_err("over the bound");
        assert_eq!(err.kind(), ErrorKind::NoMemory);
        assert_eq!(pool.stats().failures, 1);
        drop(a);
        drop(b);
        // 16 KiB cached in the 8 KiB class; a 16 KiB request must trim it and succeed.
        let c = pool.alloc(16384).expect("trim makes room");
        assert_eq!(pool.stats().bytes_cached, 0);
        assert!(pool.stats().bytes_peak <= 16384);
        drop(c);
    }

    #[test]
    fn bad_configs_and_sizes_are_typed_errors() {
        let config = PoolConfig {
            class_size_min: 1000,
            ..PoolConfig::default()
        };
        assert_eq!(
            PagePool::new(config).expect_err("min").kind(),
            ErrorKind::InvalidInput
        );
        let pool = pool(1 << 24);
        assert_eq!(
            pool.alloc(2 << 20).expect_err("too big").kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn contiguous_pools_carve_one_region() {
        let pool = PagePool::new(PoolConfig {
            align: 4096,
            class_size_min: 4096,
            class_size_max: 1 << 16,
            limit_bytes: 1 << 16,
            contiguous: true,
        })
        .expect("valid config");
        let (base, size) = pool.region().expect("a region");
        assert_eq!(size, 1 << 16);
        let a = pool.alloc(4096).expect("alloc");
        let b = pool.alloc(8192).expect("alloc");
        for buf in [&a, &b] {
            let addr = buf.as_ptr() as usize;
            assert!(addr >= base as usize && addr + buf.capacity() <= base as usize + size);
            assert_eq!(buf.pool_id(), Some(pool.id()));
        }
        drop(a);
        assert_eq!(pool.trim(), 0, "contiguous pools keep their blocks");
        let big = pool.alloc(1 << 15).expect("fits the rest");
        assert_eq!(
            pool.alloc(1 << 15).expect_err("region exhausted").kind(),
            ErrorKind::NoMemory
        );
        drop((b, big));
    }

    #[test]
    fn buffers_outlive_the_pool_handle() {
        let pool = pool(1 << 24);
        let buf = pool.alloc(4096).expect("alloc");
        drop(pool);
        assert_eq!(buf.len(), 4096);
        drop(buf);
    }
}
