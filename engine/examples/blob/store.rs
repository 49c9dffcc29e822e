//! A blob store in the style of blobd's direct store, on any engine: objects in the device
//! space of one preallocated file, placed by a first-fit extent allocator, each written with
//! its header in one aligned durable write (`WriteFlags::DSYNC`: `RWF_DSYNC`, FUA on a device
//! that has it, else the write and a cache flush) and acknowledged when that completes. Puts in
//! flight together share their flushes without the store's help: the block layer merges the
//! flushes that wait on one another into one.
//!
//! On disk an object is an extent of whole blocks:
//!
//! ```text
//! header block: magic "BLOB" | id u64 | length u64 | data CRC-32 u32 | header CRC-32 u32 | zeros
//! data blocks:  the object's bytes, zero-padded to the block
//! ```
//!
//! Deleting an object zeroes its header block (durably) before its extent is reused.
//! [`BlobStore::open`] rebuilds the index and the free space by scanning the file: an extent
//! is an object if its header and its data check out. A write torn by a crash fails its CRC
//! and its space is free again.
//!
//! What an example leaves out: ids are unique among the objects held, and one of a deleted
//! object may be given again after a reopen (there is no persisted high-water mark); a
//! payload that itself holds a valid header over valid data could be taken for an object
//! once the object around it is deleted (a store for untrusted bytes would zero whole
//! extents, or keep an index); and a put that fails keeps its extent until the next reopen.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use engine::{
    AlignedBuf, AllocateMode, Backend, BackendExt, Error, ErrorKind, File, Op, PageAllocator,
    PagePool, PoolConfig, Result, WriteFlags,
};

// The wal and blob code compiled into one crate (the benchmark, the tests) each bring it.
#[allow(clippy::duplicate_mod)]
#[path = "../common/crc32.rs"]
mod crc32;
#[allow(clippy::duplicate_mod)]
#[path = "../common/open.rs"]
mod open;

const MAGIC: u32 = u32::from_le_bytes(*b"BLOB");
/// The bytes of a header that count (the rest of its block is zeros).
pub const HEADER: usize = 28;
/// How much of the file a scan reads at a time.
const SCAN: usize = 1 << 20;

/// An object's id.
pub type Id = u64;

/// Where an object lives.
#[derive(Clone, Copy, Debug)]
struct Extent {
    offset: u64,
    /// Bytes on disk, header block included.
    blocks_len: u64,
    len: u64,
}

struct State {
    next_id: Id,
    objects: HashMap<Id, Extent>,
    /// Free extents by offset, coalesced.
    free: BTreeMap<u64, u64>,
}

impl State {
    /// First fit.
    fn allocate(&mut self, len: u64) -> Option<u64> {
        let (&offset, &size) = self.free.iter().find(|(_, &size)| size >= len)?;
        self.free.remove(&offset);
        if size > len {
            self.free.insert(offset + len, size - len);
        }
        Some(offset)
    }

    fn release(&mut self, mut offset: u64, mut len: u64) {
        if let Some((&before, &size)) = self.free.range(..offset).next_back() {
            if before + size == offset {
                self.free.remove(&before);
                offset = before;
                len += size;
            }
        }
        if let Some(size) = self.free.remove(&(offset + len)) {
            len += size;
        }
        self.free.insert(offset, len);
    }
}

/// The store; see the module documentation.
pub struct BlobStore<E: Backend> {
    engine: E,
    file: File,
    block: u64,
    capacity: u64,
    /// Where buffers come from: the engine's (registered with the kernel on io_uring, so
    /// its writes skip pinning the pages) or one of the store's own, recycled either way.
    pool: PagePool,
    state: Mutex<State>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A buffer of `len` bytes from `pool`, its contents left over from earlier use (every caller
/// overwrites them); one of its own when the pool is spent or `len` is beyond its classes.
fn take(pool: &PagePool, len: usize, block: u64) -> Result<AlignedBuf> {
    pool.alloc_for_overwrite(len)
        .or_else(|_| AlignedBuf::zeroed(len, block as usize))
}

/// The header of object `id` of `data`: the first [`HEADER`] bytes of its header block.
pub fn header(id: Id, data: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..12].copy_from_slice(&id.to_le_bytes());
    h[12..20].copy_from_slice(&(data.len() as u64).to_le_bytes());
    h[20..24].copy_from_slice(&crc32::crc32(&[data]).to_le_bytes());
    let crc = crc32::crc32(&[&h[..24]]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A header block's id, length and data CRC, if it is one.
fn parse(block: &[u8]) -> Option<(Id, u64, u32)> {
    let word = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().unwrap_or([0; 4]));
    let long = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().unwrap_or([0; 8]));
    (block.len() >= HEADER && word(0) == MAGIC && crc32::crc32(&[&block[..24]]) == word(24))
        .then(|| (long(4), long(12), word(20)))
}

impl<E: Backend> BlobStore<E> {
    /// Opens (or creates) the store at `path` with room for `capacity` bytes, O_DIRECT where
    /// the filesystem takes it, and rebuilds its index from the file.
    ///
    /// # Errors
    ///
    /// The engine's.
    pub async fn open(engine: E, path: &Path, capacity: u64) -> Result<BlobStore<E>> {
        let file = open::open_direct(&engine, path).await?;
        let g = file.geometry();
        let block = u64::from(g.offset_align.max(g.mem_align)).max(4096);
        let capacity = capacity.next_multiple_of(block);
        let pool = match engine.pool() {
            Some(pool) if pool.config().align >= g.mem_align as usize => pool.clone(),
            _ => PagePool::new(PoolConfig {
                align: block as usize,
                class_size_min: block as usize,
                ..PoolConfig::default()
            })?,
        };
        if engine.metadata(&file).await?.len() < capacity {
            engine
                .allocate(&file, 0, capacity, AllocateMode::Allocate)
                .await?;
            engine.sync_all(&file).await?;
        }
        let mut state = State {
            next_id: 0,
            objects: HashMap::new(),
            free: BTreeMap::new(),
        };
        // The scan, block by block (read a chunk at a time): a header that checks out, over
        // data that does, is an object; the space between objects is free.
        let (mut offset, mut free_from) = (0u64, 0u64);
        let mut chunk: Option<(u64, AlignedBuf)> = None;
        while offset < capacity {
            let cached = chunk.as_ref().is_some_and(|(start, buf)| {
                offset >= *start && offset + block <= start + buf.len() as u64
            });
            if !cached {
                let len = (SCAN as u64).min(capacity - offset) as usize;
                let buf = take(&pool, len, block)?;
                let (read, buf) = engine.read_at(&file, offset, buf).await;
                read?;
                chunk = Some((offset, buf));
            }
            let found = chunk.as_ref().and_then(|(start, buf)| {
                let at = (offset - start) as usize;
                buf.get(at..at + block as usize).and_then(parse)
            });
            // An id already found is not taken twice (a stale copy of a header, say).
            let found = found.filter(|(id, _, _)| !state.objects.contains_key(id));
            if let Some((id, len, data_crc)) = found {
                let blocks_len = len
                    .checked_next_multiple_of(block)
                    .and_then(|l| l.checked_add(block))
                    .unwrap_or(u64::MAX);
                if offset
                    .checked_add(blocks_len)
                    .is_some_and(|end| end <= capacity)
                {
                    let data = take(&pool, blocks_len as usize, block)?;
                    let (read, data) = engine.read_at(&file, offset, data).await;
                    let got = read?;
                    let body = data.get(block as usize..(block + len) as usize);
                    if got as u64 == blocks_len
                        && body.is_some_and(|b| crc32::crc32(&[b]) == data_crc)
                    {
                        if offset > free_from {
                            state.release(free_from, offset - free_from);
                        }
                        let extent = Extent {
                            offset,
                            blocks_len,
                            len,
                        };
                        state.objects.insert(id, extent);
                        state.next_id = state.next_id.max(id + 1);
                        offset += blocks_len;
                        free_from = offset;
                        continue;
                    }
                }
            }
            offset += block;
        }
        if capacity > free_from {
            state.release(free_from, capacity - free_from);
        }
        Ok(BlobStore {
            engine,
            file,
            block,
            capacity,
            pool,
            state: Mutex::new(state),
        })
    }

    /// Stores `data`; resolves once it is durable, with its id.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NoSpace`] when no free extent is large enough; the engine's.
    pub async fn put(&self, data: &[u8]) -> Result<Id> {
        let blocks_len = self.block + (data.len() as u64).next_multiple_of(self.block);
        let (id, offset) = {
            let mut state = lock(&self.state);
            let Some(offset) = state.allocate(blocks_len) else {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    Op::Write,
                    format!("no free extent of {blocks_len} bytes in {}", self.capacity),
                ));
            };
            let id = state.next_id;
            state.next_id += 1;
            (id, offset)
        };
        let mut buf = take(&self.pool, blocks_len as usize, self.block)?;
        let (head, body) = buf.split_at_mut(self.block as usize);
        head[..HEADER].copy_from_slice(&header(id, data));
        head[HEADER..].fill(0);
        let (bytes, padding) = body.split_at_mut(data.len());
        bytes.copy_from_slice(data);
        padding.fill(0);
        let (result, _) = self
            .engine
            .write_all_at_with(&self.file, offset, buf, WriteFlags::DSYNC)
            .await;
        let mut state = lock(&self.state);
        match result {
            Ok(()) => {
                let len = data.len() as u64;
                state.objects.insert(
                    id,
                    Extent {
                        offset,
                        blocks_len,
                        len,
                    },
                );
                Ok(id)
            }
            // The bytes may be on disk all the same: the extent stays taken until a reopen,
            // whose scan decides what it holds.
            Err(e) => Err(e),
        }
    }

    /// Reads object `id`, checked against its CRC.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] for an id the store does not hold; [`ErrorKind::Other`] when
    /// the bytes do not check out; the engine's.
    pub async fn get(&self, id: Id) -> Result<Vec<u8>> {
        let Some(extent) = lock(&self.state).objects.get(&id).copied() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                Op::Read,
                format!("no object {id}"),
            ));
        };
        let buf = take(&self.pool, extent.blocks_len as usize, self.block)?;
        let (read, buf) = self
            .engine
            .read_exact_at(&self.file, extent.offset, buf)
            .await;
        read?;
        let body = &buf[self.block as usize..self.block as usize + extent.len as usize];
        match parse(&buf[..self.block as usize]) {
            Some((got, len, crc))
                if got == id && len == extent.len && crc == crc32::crc32(&[body]) =>
            {
                Ok(body.to_vec())
            }
            _ => Err(Error::new(
                ErrorKind::Other,
                Op::Read,
                format!("object {id} does not check out"),
            )),
        }
    }

    /// Deletes object `id`: its header is zeroed durably, then its space is free.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`]; the engine's.
    pub async fn delete(&self, id: Id) -> Result<()> {
        let Some(extent) = lock(&self.state).objects.get(&id).copied() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                Op::Write,
                format!("no object {id}"),
            ));
        };
        let mut zeros = take(&self.pool, self.block as usize, self.block)?;
        zeros.fill(0);
        let (written, _) = self
            .engine
            .write_all_at_with(&self.file, extent.offset, zeros, WriteFlags::DSYNC)
            .await;
        written?;
        // Gone from the index only once gone from the disk.
        let mut state = lock(&self.state);
        if state.objects.remove(&id).is_some() {
            state.release(extent.offset, extent.blocks_len);
        }
        Ok(())
    }

    /// The ids held, in order.
    pub fn ids(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = lock(&self.state).objects.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Free bytes.
    pub fn free_bytes(&self) -> u64 {
        lock(&self.state).free.values().sum()
    }

    /// Closes the store's file and hands the engine back.
    ///
    /// # Errors
    ///
    /// As the engine's `close`.
    pub fn close(self) -> Result<E> {
        self.engine.close(&self.file)?;
        Ok(self.engine)
    }
}
