//! Owned, aligned I/O buffers, and the traits that let callers bring their own memory.
//!
//! Every operation takes its buffer by value and hands it back with the result, so a request
//! in flight always owns its memory: dropping a future can never free or reuse a buffer the
//! kernel may still write to (contract point 8).

use std::alloc::Layout;
use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::error::{Error, ErrorKind, Op, Result};
use crate::pool::PoolReturn;

/// Buffers of at least this many bytes are mapped rather than allocated: their zero pages
/// cost nothing until touched.
const MAP_THRESHOLD: usize = 4 << 20;

/// The page size the mapping path relies on (mappings are page-aligned).
const PAGE: usize = 4096;

/// The largest alignment a buffer may ask for ([`AlignedBuf::ALIGN_MAX`]).
pub(crate) const ALIGN_MAX: usize = 1 << 30;

/// Memory that can be handed to the kernel as the source of a write.
///
/// # Safety
///
/// `stable_ptr` must point at `bytes_total()` bytes of memory owned by `self`, the first
/// `bytes_init()` of them initialised, and the pointer must stay valid and unchanged while
/// `self` is moved, until `self` is dropped or a `&mut self` method other than the ones below
/// is called. The kernel may read that memory from another thread while an operation is in
/// flight.
pub unsafe trait IoBuf: Send + 'static {
    /// The start of the memory.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes, from the start, are initialised.
    fn bytes_init(&self) -> usize;
    /// How many bytes the memory holds in all.
    fn bytes_total(&self) -> usize;
}

/// Memory the kernel can write into as the target of a read.
///
/// # Safety
///
/// As for [`IoBuf`], and `stable_mut_ptr` must return the same pointer as `stable_ptr`,
/// writable for `bytes_total()` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// The start of the memory, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// Records that the first `len` bytes are now initialised and hold the valid data.
    ///
    /// # Safety
    ///
    /// The first `len` bytes must be initialised and `len <= bytes_total()`.
    unsafe fn set_init(&mut self, len: usize);
}

// SAFETY: a Vec's heap pointer does not move when the Vec is moved, `len` bytes are
// initialised and `capacity` are allocated.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; `as_mut_ptr` is the same allocation as `as_ptr`.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        // SAFETY: the caller guarantees the first `len` bytes are initialised and that `len`
        // does not exceed the capacity.
        unsafe { self.set_len(len) }
    }
}

/// Where an [`AlignedBuf`]'s memory came from, and so where it goes when dropped.
enum Owner {
    /// Allocated by this module with the global allocator and `layout`.
    Global(Layout),
    /// Mapped by this module with `mmap` (large buffers): zero pages the kernel fills on first
    /// touch, so a large zeroed buffer costs nothing until used.
    Mapped(usize),
    /// Borrowed from a page pool, to which it returns on drop.
    Pool(PoolReturn),
    /// A caller's own buffer, kept alive (and dropped) here.
    Foreign(Box<dyn Any + Send>),
    /// Capacity zero: a dangling, aligned pointer and nothing to free.
    Empty,
}

/// An owned buffer whose address and capacity are multiples of a run-time alignment.
///
/// Its length (`len`) is the number of valid bytes: a write sends `buf[..len]` and a read fills
/// `buf[..len]`, then sets `len` to the number of bytes read. Every byte up to the capacity is
/// initialised (new memory is zeroed), so no safe method exposes uninitialised memory.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes known to be initialised, from the start. `len <= initialized <= capacity`.
    initialized: usize,
    capacity: usize,
    align: usize,
    owner: Owner,
}

// SAFETY: the buffer exclusively owns its memory (or, for `Foreign`, a `Send` value that does),
// so moving it to another thread moves that ownership with it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// The largest alignment a buffer may ask for: 1 GiB. Larger requests are a caller bug
    /// that would only waste address space, so they are rejected with a typed error.
    pub const ALIGN_MAX: usize = ALIGN_MAX;

    /// Allocates a zero-filled buffer of `len` bytes, aligned to `align`.
    ///
    /// The capacity is `len` rounded up to a multiple of `align`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `align` is not a power of two or exceeds
    /// [`AlignedBuf::ALIGN_MAX`], or the size overflows; [`ErrorKind::NoMemory`] when allocation fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let buf = engine_core::AlignedBuf::zeroed(4096, 512).unwrap();
    /// assert_eq!(buf.len(), 4096);
    /// assert_eq!(buf.as_ptr() as usize % 512, 0);
    /// assert!(buf.iter().all(|&b| b == 0));
    /// ```
    pub fn zeroed(len: usize, align: usize) -> Result<AlignedBuf> {
        let mut buf = AlignedBuf::with_capacity(len, align)?;
        buf.len = len;
        Ok(buf)
    }

    /// Allocates a zero-filled buffer with room for `capacity` bytes and length 0.
    ///
    /// # Errors
    ///
    /// As for [`AlignedBuf::zeroed`].
    pub fn with_capacity(capacity: usize, align: usize) -> Result<AlignedBuf> {
        let layout = layout_for(capacity, align)?;
        if layout.size() == 0 {
            return Ok(AlignedBuf::empty(align));
        }
        if layout.size() >= MAP_THRESHOLD {
            return AlignedBuf::mapped(layout.size(), align);
        }
        // SAFETY: the layout has a non-zero size, checked just above.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            return Err(Error::new(
                ErrorKind::NoMemory,
                Op::Alloc,
                format!("allocating {} bytes aligned to {align}", layout.size()),
            ));
        };
        Ok(AlignedBuf {
            ptr,
            len: 0,
            initialized: layout.size(),
            capacity: layout.size(),
            align,
            owner: Owner::Global(layout),
        })
    }

    /// A zeroed buffer of `size` bytes from an anonymous private mapping (`mmap(2)`), so its
    /// pages cost nothing until touched. `size` is a multiple of `align` (see [`layout_for`]).
    /// An alignment above the page size is had by mapping `align - PAGE` bytes more and
    /// unmapping the head and tail around the aligned start.
    fn mapped(size: usize, align: usize) -> Result<AlignedBuf> {
        let slack = align.saturating_sub(PAGE);
        let Some(total) = size.checked_add(slack) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Alloc,
                format!("mapping {size} bytes aligned to {align} overflows"),
            ));
        };
        // SAFETY: an anonymous private mapping of `total` bytes at an address the kernel
        // chooses; no memory of ours is involved.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(
                Error::from_io(&e, Op::Alloc).with_message(format!("mapping {total} bytes"))
            );
        }
        // The mapping starts on a page boundary, so the head is a whole number of pages below
        // `slack`, and the tail (`slack - head`) is too.
        let head = (raw as usize).next_multiple_of(align) - raw as usize;
        let tail = slack - head;
        let start = raw.cast::<u8>().wrapping_add(head);
        if head > 0 {
            // SAFETY: the first `head` bytes of the mapping just made, which nothing uses.
            unsafe { libc::munmap(raw, head) };
        }
        if tail > 0 {
            // SAFETY: the last `tail` bytes of the mapping just made, past the `size` bytes
            // kept from `start`; nothing uses them.
            unsafe { libc::munmap(start.wrapping_add(size).cast(), tail) };
        }
        let Some(ptr) = NonNull::new(start) else {
            return Err(Error::new(
                ErrorKind::NoMemory,
                Op::Alloc,
                "mmap returned null",
            ));
        };
        Ok(AlignedBuf {
            ptr,
            len: 0,
            initialized: size,
            capacity: size,
            align,
            owner: Owner::Mapped(size),
        })
    }

    /// Allocates a buffer holding a copy of `data`, aligned to `align`; the capacity past the
    /// data is zeroed.
    ///
    /// # Errors
    ///
    /// As for [`AlignedBuf::zeroed`].
    pub fn from_slice(data: &[u8], align: usize) -> Result<AlignedBuf> {
        let mut buf = AlignedBuf::zeroed(data.len(), align)?;
        buf.copy_from_slice(data);
        Ok(buf)
    }

    /// Wraps a caller's own buffer so the engine can use it, without copying.
    ///
    /// The length is the buffer's initialised length; the reported alignment is the largest
    /// power of two (up to 1 MiB) that divides its address. Get the buffer back with
    /// [`AlignedBuf::into_io_buf`].
    pub fn from_io_buf<B: IoBufMut>(mut buf: B) -> AlignedBuf {
        let total = buf.bytes_total();
        let init = buf.bytes_init().min(total);
        let raw = buf.stable_mut_ptr();
        let Some(ptr) = NonNull::new(raw) else {
            // A null pointer can only come with zero capacity; keep the value alive anyway.
            let mut empty = AlignedBuf::empty(1);
            empty.owner = Owner::Foreign(Box::new(buf));
            return empty;
        };
        let align = 1usize << (raw as usize).trailing_zeros().min(20);
        AlignedBuf {
            ptr,
            len: init,
            initialized: init,
            capacity: total,
            align,
            owner: Owner::Foreign(Box::new(buf)),
        }
    }

    /// Gives back the caller's buffer wrapped by [`AlignedBuf::from_io_buf`], with its
    /// initialised length set to this buffer's length.
    ///
    /// # Errors
    ///
    /// Returns `self` unchanged when it does not wrap a `B`.
    pub fn into_io_buf<B: IoBufMut>(mut self) -> std::result::Result<B, AlignedBuf> {
        let len = self.len;
        let owner = std::mem::replace(&mut self.owner, Owner::Empty);
        match owner {
            Owner::Foreign(any) => match any.downcast::<B>() {
                Ok(mut inner) => {
                    // SAFETY: `len <= initialized`, and every byte below `initialized` was
                    // either initialised when wrapped or written since through this buffer.
                    unsafe { inner.set_init(len) };
                    Ok(*inner)
                }
                Err(any) => {
                    self.owner = Owner::Foreign(any);
                    Err(self)
                }
            },
            other => {
                self.owner = other;
                Err(self)
            }
        }
    }

    pub(crate) fn empty(align: usize) -> AlignedBuf {
        // An aligned dangling pointer: `align` is a non-zero power of two.
        let ptr = NonNull::new(align as *mut u8).unwrap_or(NonNull::dangling());
        AlignedBuf {
            ptr,
            len: 0,
            initialized: 0,
            capacity: 0,
            align,
            owner: Owner::Empty,
        }
    }

    /// Builds a buffer over pool memory that returns to the pool on drop.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for `capacity` bytes, aligned to `align`, and owned by `owner`'s pool
    /// until it is returned. Its first `initialized` bytes must be initialised.
    pub(crate) unsafe fn from_pool(
        ptr: NonNull<u8>,
        capacity: usize,
        initialized: usize,
        align: usize,
        owner: PoolReturn,
    ) -> AlignedBuf {
        debug_assert!(
            initialized <= capacity,
            "initialized {initialized} > capacity {capacity}"
        );
        debug_assert_eq!(ptr.as_ptr() as usize % align, 0, "pool memory misaligned");
        AlignedBuf {
            ptr,
            len: 0,
            initialized,
            capacity,
            align,
            owner: Owner::Pool(owner),
        }
    }

    /// The number of valid bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The alignment of the address (and, for buffers this crate allocated, the capacity).
    pub fn align(&self) -> usize {
        self.align
    }

    /// True when the memory came from a page pool.
    pub fn is_pooled(&self) -> bool {
        matches!(self.owner, Owner::Pool(_))
    }

    /// The id of the [`crate::PagePool`] the memory came from, if it came from one.
    pub fn pool_id(&self) -> Option<u64> {
        match &self.owner {
            Owner::Pool(ret) => Some(ret.pool_id()),
            _ => None,
        }
    }

    /// The start of the memory.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The start of the memory, writable.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= initialized`, so the first `len` bytes are initialised and owned by
        // this buffer; the shared borrow of `self` prevents mutation for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The valid bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, and the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Sets the length to `len`, zero-filling any bytes that were never initialised.
    ///
    /// Bytes between the old length and `len` that were initialised keep their old contents
    /// (for example what an earlier read left there).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when `len` exceeds the capacity; the buffer is unchanged.
    pub fn resize(&mut self, len: usize) -> Result<()> {
        if len > self.capacity {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                Op::Alloc,
                format!("length {len} exceeds capacity {}", self.capacity),
            ));
        }
        if len > self.initialized {
            // SAFETY: `initialized..len` lies within the capacity, which this buffer owns.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(self.initialized)
                    .write_bytes(0, len - self.initialized);
            }
            self.initialized = len;
        }
        self.len = len;
        Ok(())
    }

    /// Shortens the length to `len`; does nothing when `len` is not shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Sets the length to zero, keeping the capacity.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the data does not fit the capacity; nothing is copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<()> {
        let start = self.len;
        let end = start.saturating_add(data.len());
        self.resize(end)?;
        self.as_mut_slice()[start..].copy_from_slice(data);
        Ok(())
    }

    /// Sets the length to `len` after an operation filled the buffer's first `len` bytes.
    /// Those bytes are within the length the buffer had when the read was submitted, so they
    /// are initialised whatever the kernel did; the length is clamped to be sure.
    pub(crate) fn set_filled(&mut self, len: usize) {
        debug_assert!(
            len <= self.initialized,
            "filled {len} > initialized {}",
            self.initialized
        );
        self.len = len.min(self.initialized);
    }
}

fn layout_for(capacity: usize, align: usize) -> Result<Layout> {
    if !align.is_power_of_two() || align > ALIGN_MAX {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            Op::Alloc,
            format!("alignment {align} is not a power of two no greater than {ALIGN_MAX}"),
        ));
    }
    let rounded = capacity
        .checked_next_multiple_of(align)
        .filter(|&size| size <= isize::MAX as usize - align);
    let Some(size) = rounded else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            Op::Alloc,
            format!("capacity {capacity} aligned to {align} overflows"),
        ));
    };
    Layout::from_size_align(size, align)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, Op::Alloc, e.to_string()))
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.owner, Owner::Empty) {
            Owner::Global(layout) => {
                // SAFETY: the memory was allocated in `with_capacity` with exactly this layout
                // and is freed only here, once.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
            Owner::Mapped(size) => {
                // SAFETY: the mapping was made in `mapped` with this size and is unmapped only
                // here, once.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), size) };
            }
            Owner::Pool(ret) => ret.give_back(self.ptr, self.initialized),
            Owner::Foreign(inner) => drop(inner),
            Owner::Empty => {}
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("align", &self.align)
            .field("pooled", &self.is_pooled())
            .finish()
    }
}

// SAFETY: the pointer is owned by the buffer and stays put when the buffer moves; `initialized`
// bytes are initialised, `capacity` are owned.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.capacity
    }
}

// SAFETY: as above; the mutable pointer is the same memory.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, len: usize) {
        debug_assert!(
            len <= self.capacity,
            "set_init {len} > capacity {}",
            self.capacity
        );
        self.initialized = self.initialized.max(len).min(self.capacity);
        self.len = len.min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_aligned_and_zero() {
        for align in [1, 512, 4096, 1 << 16] {
            let buf = AlignedBuf::zeroed(1000, align).expect("alloc");
            assert_eq!(
                buf.as_ptr() as usize % align,
                0,
                "address for align {align}"
            );
            assert_eq!(buf.capacity() % align, 0, "capacity for align {align}");
            assert_eq!(buf.len(), 1000);
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn bad_alignment_is_a_typed_error() {
        for align in [0, 3, 4097, ALIGN_MAX * 2] {
            let err = AlignedBuf::zeroed(16, align).expect_err("must reject");
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "align {align}");
        }
        let err = AlignedBuf::zeroed(usize::MAX - 10, 4096).expect_err("overflow");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn large_buffers_are_mapped_zeroed_and_aligned() {
        let mut buf = AlignedBuf::zeroed(8 << 20, 4096).expect("map");
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert!(buf[..4096].iter().all(|&b| b == 0));
        buf[(8 << 20) - 1] = 7;
        assert_eq!(buf[(8 << 20) - 1], 7);
    }

    #[test]
    fn large_buffers_aligned_beyond_a_page_are_mapped_whole() {
        for align in [64 << 10, 2 << 20] {
            let mut buf = AlignedBuf::zeroed((4 << 20) + 1, align).expect("map");
            assert_eq!(buf.as_ptr() as usize % align, 0, "aligned to {align}");
            assert!(buf.capacity() > (4 << 20));
            let capacity = buf.capacity();
            assert!(buf.iter().all(|&b| b == 0), "zeroed");
            // Every byte kept is mapped and writable: the trimmed head and tail are not ours.
            buf.fill(0xA5);
            assert!(buf.iter().all(|&b| b == 0xA5));
            assert_eq!(capacity % align, 0);
        }
    }

    #[test]
    fn zero_capacity_does_not_allocate_and_is_aligned() {
        let buf = AlignedBuf::zeroed(0, 4096).expect("alloc");
        assert_eq!(buf.capacity(), 0);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert!(buf.as_slice().is_empty());
    }

    #[test]
    fn resize_zero_fills_only_new_memory() {
        let mut buf = AlignedBuf::from_slice(b"abcd", 8).expect("alloc");
        buf.truncate(2);
        buf.resize(4).expect("within capacity");
        assert_eq!(buf.as_slice(), b"abcd", "old bytes kept");
        buf.resize(8).expect("within capacity");
        assert_eq!(&buf[4..], &[0; 4], "capacity was zeroed");
        assert_eq!(
            buf.resize(9).expect_err("over").kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(buf.len(), 8, "failed resize leaves length");
    }

    #[test]
    fn extend_checks_capacity() {
        let mut buf = AlignedBuf::with_capacity(4, 4).expect("alloc");
        buf.extend_from_slice(b"ab").expect("fits");
        buf.extend_from_slice(b"cd").expect("fits");
        assert!(buf.extend_from_slice(b"e").is_err());
        assert_eq!(buf.as_slice(), b"abcd");
    }

    #[test]
    fn foreign_buffers_round_trip() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"hello");
        let addr = v.as_ptr() as usize;
        let mut buf = AlignedBuf::from_io_buf(v);
        assert_eq!(buf.as_slice(), b"hello");
        assert_eq!(buf.as_ptr() as usize, addr, "no copy");
        assert_eq!(addr % buf.align(), 0);
        buf.truncate(4);
        let buf = match buf.into_io_buf::<AlignedBuf>() {
            Ok(_) => panic!("wrong type must not downcast"),
            Err(buf) => buf,
        };
        let v: Vec<u8> = buf.into_io_buf().expect("same type");
        assert_eq!(v, b"hell");
    }
}
