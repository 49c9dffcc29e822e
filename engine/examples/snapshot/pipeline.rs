//! The snapshot writer's pipeline, on any engine: a stream written to a file in large writes
//! through the queue API, with `buffers` buffers in turn, so the producer fills one while the
//! kernel writes the others; then the file's length is set and it is synced.

use std::time::{Duration, Instant};

use engine::{
    block_on, AlignedBuf, AllocateMode, Backend, BackendExt, File, Queue, Request, Result,
};

/// The stream: `len` bytes from xorshift64, chunk by chunk, and its digest as it goes.
pub struct Stream {
    state: u64,
    left: u64,
    /// FNV-1a over the stream's 64-bit words so far.
    pub digest: u64,
}

/// The digest's starting value.
pub const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of the digest over a word.
pub fn digest_step(digest: u64, word: u64) -> u64 {
    (digest ^ word).wrapping_mul(0x0100_0000_01b3)
}

impl Stream {
    /// A stream of `len` bytes (a multiple of 8).
    pub fn new(len: u64) -> Stream {
        Stream {
            state: 0x2545_f491_4f6c_dd1d,
            left: len,
            digest: DIGEST_START,
        }
    }

    /// Fills `buf` with the next bytes; how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.left as usize).min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let word = self.state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
            self.digest = digest_step(self.digest, self.state);
        }
        self.left -= n as u64;
        n
    }
}

/// What a pipelined write took.
pub struct Stats {
    /// From the preallocation to the end of the sync.
    pub elapsed: Duration,
    /// How often, and how long in all, the producer waited for the disk (only ever when
    /// every buffer was in flight).
    pub waits: u32,
    /// See `waits`.
    pub waited: Duration,
}

/// Preallocates `file` to `len` bytes and writes `stream` into it in writes of `buf_len`
/// bytes (a multiple of the file's alignment), `buffers` of them in flight at most; then sets
/// the length and syncs.
///
/// # Errors
///
/// The engine's.
pub fn write<E: Backend>(
    engine: &E,
    file: &File,
    stream: &mut Stream,
    len: u64,
    buf_len: usize,
    buffers: usize,
) -> Result<Stats> {
    let align = {
        let g = file.geometry();
        g.offset_align.max(g.mem_align).max(4096) as usize
    };
    let started = Instant::now();
    block_on(engine.allocate(file, 0, len, AllocateMode::Allocate))?;
    let mut queue = engine.queue()?;
    let mut free: Vec<AlignedBuf> = (0..buffers.max(1))
        .map(|_| AlignedBuf::zeroed(buf_len, align))
        .collect::<Result<_>>()?;
    let mut done = Vec::new();
    let (mut offset, mut waited, mut waits) = (0u64, Duration::ZERO, 0u32);
    loop {
        let Some(mut buf) = free.pop() else {
            // Every buffer is in flight: the only time the producer waits for the disk.
            let at = Instant::now();
            queue.wait(1, &mut done)?;
            waited += at.elapsed();
            waits += 1;
            for completion in done.drain(..) {
                completion.result?;
                free.extend(completion.buf);
            }
            continue;
        };
        // A buffer back from a short last write is whole again.
        buf.resize(buf_len)?;
        let n = stream.fill(&mut buf);
        if n == 0 {
            break;
        }
        // The last piece of a stream that is not a multiple of the alignment is padded; the
        // file's length is set to the stream's at the end.
        let padded = n.next_multiple_of(align);
        buf[n..padded].fill(0);
        buf.truncate(padded);
        queue.push_or_wait(Request::write_all(file, offset, buf, 0), &mut done)?;
        queue.submit()?;
        offset += n as u64;
        for completion in done.drain(..) {
            completion.result?;
            free.extend(completion.buf);
        }
    }
    while queue.in_flight() > 0 {
        let n = queue.in_flight();
        queue.wait(n, &mut done)?;
    }
    for completion in done.drain(..) {
        completion.result?;
    }
    block_on(engine.set_len(file, len))?;
    block_on(engine.sync_all(file))?;
    Ok(Stats {
        elapsed: started.elapsed(),
        waits,
        waited,
    })
}
