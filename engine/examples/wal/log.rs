//! A write-ahead log with group commit, on any engine.
//!
//! Many writers [`Wal::append`] records at once. The first writer to find no flush under way
//! becomes the group's leader: it takes every record waiting, writes them as one group (one
//! aligned write at the log's tail) and makes it durable with one `sync_data`, then wakes the
//! group. A record is acknowledged only once the sync that covers it has returned, so an
//! acknowledged record survives power loss.
//!
//! On disk, a group starts on a block boundary:
//!
//! ```text
//! magic "WALG" | record count u32 | first LSN u64 | body length u32 | CRC-32 u32 | body | zeros
//! body = (payload length u32 | payload) per record; LSNs run on from the first
//! ```
//!
//! The CRC covers the count, the first LSN, the body length and the body, so a group torn by
//! a crash (some of its sectors written, others not) fails it. [`Wal::open`] replays groups
//! from the start and stops at the first one that does not check out: that is the torn (or
//! never written) tail, which it truncates away before the log takes new records.

use std::future::poll_fn;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use engine::{AlignedBuf, Backend, BackendExt, Error, ErrorKind, File, Op, Result};

// The wal and blob code compiled into one crate (the benchmark, the tests) each bring it.
#[allow(clippy::duplicate_mod)]
#[path = "../common/crc32.rs"]
mod crc32;
#[allow(clippy::duplicate_mod)]
#[path = "../common/open.rs"]
mod open;

use crc32::crc32;

const MAGIC: u32 = u32::from_le_bytes(*b"WALG");
const HEADER: usize = 24;

/// A log sequence number: records are numbered from 0 in the order they were appended.
pub type Lsn = u64;

struct State {
    next_lsn: Lsn,
    /// Appended, not yet taken by a leader.
    pending: Vec<(Lsn, Vec<u8>)>,
    /// A leader is writing and syncing a group.
    flushing: bool,
    /// Where the next group goes.
    tail: u64,
    /// Every record below this is durable.
    durable: Lsn,
    /// A write or sync failed: the log takes nothing more (the records of the failed group
    /// may or may not be on disk; only a reopen, which replays the log, can say).
    failed: Option<(ErrorKind, String)>,
    waiters: Vec<Waker>,
    /// Groups written, for reports.
    groups: u64,
}

/// The log; see the module documentation.
pub struct Wal<E: Backend> {
    engine: E,
    file: File,
    /// Groups are padded to this (the file's direct-I/O alignment, or 4096).
    block: usize,
    state: Mutex<State>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A writer while it leads a group. Dropped while leading (its future dropped midway), it
/// lets the next writer lead: before it took the group, the records stay pending for the
/// next leader; after, it fails the log, since nobody else will write the records it took.
/// Either way every waiting writer is woken, which would otherwise wait for it forever.
struct Leader<'a> {
    state: &'a Mutex<State>,
    leading: bool,
    took: bool,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.leading {
            return;
        }
        let mut state = lock(self.state);
        state.flushing = false;
        if self.took {
            state.failed = Some((
                ErrorKind::Other,
                "a group's leader was dropped before its group was durable: its records may \
                 or may not be in the log; reopen it to find out"
                    .into(),
            ));
        }
        for waker in state.waiters.drain(..) {
            waker.wake();
        }
    }
}

fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Other, Op::Read, message)
}

impl<E: Backend> Wal<E> {
    /// Opens (or creates) the log at `path` through `engine`, O_DIRECT where the filesystem
    /// takes it; replays it and truncates a torn tail. Returns the log and the records found.
    ///
    /// # Errors
    ///
    /// The engine's, for the open, the reads, the truncation and its sync.
    pub async fn open(engine: E, path: &Path) -> Result<(Wal<E>, Vec<(Lsn, Vec<u8>)>)> {
        let file = open::open_direct(&engine, path).await?;
        let g = file.geometry();
        let block = (g.offset_align.max(g.mem_align) as usize).max(4096);
        let len = engine.metadata(&file).await?.len();
        let mut records = Vec::new();
        let mut offset = 0u64;
        // Groups, one after another, until one does not check out.
        while offset + HEADER as u64 <= len {
            let first = AlignedBuf::zeroed(block, block)?;
            let (read, first) = engine.read_at(&file, offset, first).await;
            if read? < HEADER {
                break;
            }
            let word =
                |at: usize| u32::from_le_bytes(first[at..at + 4].try_into().unwrap_or([0; 4]));
            let (magic, count, body_len) = (word(0), word(4), word(16) as usize);
            let first_lsn = u64::from_le_bytes(first[8..16].try_into().unwrap_or([0; 8]));
            let stored_crc = word(20);
            let padded = (HEADER + body_len).next_multiple_of(block);
            if magic != MAGIC || offset + padded as u64 > len {
                break;
            }
            let whole = if padded == block {
                first
            } else {
                let buf = AlignedBuf::zeroed(padded, block)?;
                let (read, buf) = engine.read_at(&file, offset, buf).await;
                if read? < HEADER + body_len {
                    break;
                }
                buf
            };
            let body = &whole[HEADER..HEADER + body_len];
            let crc = crc32(&[&whole[4..16], &whole[16..20], body]);
            if crc != stored_crc {
                break;
            }
            let mut at = 0;
            for i in 0..u64::from(count) {
                let Some(len_bytes) = body.get(at..at + 4) else {
                    return Err(corrupt(format!(
                        "group at {offset}: record {i} runs past it"
                    )));
                };
                let n = u32::from_le_bytes(len_bytes.try_into().unwrap_or([0; 4])) as usize;
                let Some(payload) = body.get(at + 4..at + 4 + n) else {
                    return Err(corrupt(format!(
                        "group at {offset}: record {i} runs past it"
                    )));
                };
                records.push((first_lsn + i, payload.to_vec()));
                at += 4 + n;
            }
            offset += padded as u64;
        }
        if offset != len {
            // The torn or unwritten tail goes, durably, before anything is appended after it.
            engine.set_len(&file, offset).await?;
            engine.sync_data(&file).await?;
        }
        let next_lsn = records.last().map_or(0, |(lsn, _)| lsn + 1);
        let wal = Wal {
            engine,
            file,
            block,
            state: Mutex::new(State {
                next_lsn,
                pending: Vec::new(),
                flushing: false,
                tail: offset,
                durable: next_lsn,
                failed: None,
                waiters: Vec::new(),
                groups: 0,
            }),
        };
        Ok((wal, records))
    }

    /// Appends `payload`; resolves once it is durable, with its LSN.
    ///
    /// # Errors
    ///
    /// The write's or the sync's error for the group this record was in, or for an earlier
    /// group (after which the log takes nothing more).
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn> {
        let lsn = {
            let mut state = lock(&self.state);
            if let Some((kind, message)) = &state.failed {
                return Err(Error::new(*kind, Op::Write, message.clone()));
            }
            let lsn = state.next_lsn;
            state.next_lsn += 1;
            state.pending.push((lsn, payload));
            lsn
        };
        loop {
            // Durable already, or this writer leads the next group, or it waits. A new leader
            // lets every other ready writer run once before it takes the group (the writers
            // the last group just acknowledged append their next records then), so groups
            // hold every writer rather than alternate halves of them.
            // Should this future be dropped while it leads (gathering, or writing the
            // group), the guard lets go: a group not taken yet stays for the next leader; one
            // taken fails the log, since nobody else will write its records.
            let mut guard = Leader {
                state: &self.state,
                leading: false,
                took: false,
            };
            let lead = poll_fn(|cx| {
                let mut state = lock(&self.state);
                if guard.leading {
                    guard.took = true;
                    let group = std::mem::take(&mut state.pending);
                    return Poll::Ready(Ok(Some((group, state.tail))));
                }
                if state.durable > lsn {
                    return Poll::Ready(Ok(None));
                }
                if let Some((kind, message)) = &state.failed {
                    return Poll::Ready(Err(Error::new(*kind, Op::Write, message.clone())));
                }
                if !state.flushing && !state.pending.is_empty() {
                    state.flushing = true;
                    guard.leading = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                state.waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            let Some((group, offset)) = lead else {
                return Ok(lsn);
            };
            let result = self.write_group(&group, offset).await;
            guard.leading = false;
            let mut state = lock(&self.state);
            state.flushing = false;
            match result {
                Ok(len) => {
                    state.tail = offset + len;
                    state.durable = group.last().map_or(state.durable, |(last, _)| last + 1);
                    state.groups += 1;
                }
                Err(e) => state.failed = Some((e.kind(), e.to_string())),
            }
            for waker in state.waiters.drain(..) {
                waker.wake();
            }
        }
    }

    /// Writes `group` at `offset` and syncs it; the bytes it took on disk.
    async fn write_group(&self, group: &[(Lsn, Vec<u8>)], offset: u64) -> Result<u64> {
        let body_len: usize = group.iter().map(|(_, p)| 4 + p.len()).sum();
        let padded = (HEADER + body_len).next_multiple_of(self.block);
        let mut buf = AlignedBuf::zeroed(padded, self.block)?;
        let mut at = HEADER;
        for (_, payload) in group {
            buf[at..at + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            buf[at + 4..at + 4 + payload.len()].copy_from_slice(payload);
            at += 4 + payload.len();
        }
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&(group.len() as u32).to_le_bytes());
        buf[8..16].copy_from_slice(&group[0].0.to_le_bytes());
        buf[16..20].copy_from_slice(&(body_len as u32).to_le_bytes());
        let crc = crc32(&[&buf[4..16], &buf[16..20], &buf[HEADER..HEADER + body_len]]);
        buf[20..24].copy_from_slice(&crc.to_le_bytes());
        let (written, _) = self.engine.write_all_at(&self.file, offset, buf).await;
        written?;
        self.engine.sync_data(&self.file).await?;
        Ok(padded as u64)
    }

    /// Groups written so far (each one write and one sync).
    pub fn groups(&self) -> u64 {
        lock(&self.state).groups
    }

    /// Closes the log's file and hands the engine back.
    ///
    /// # Errors
    ///
    /// As the engine's `close`.
    pub fn close(self) -> Result<E> {
        self.engine.close(&self.file)?;
        Ok(self.engine)
    }
}
