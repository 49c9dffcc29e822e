//! A snapshot writer in the style of Firedancer's snapwr: a stream of bytes written to a
//! preallocated file in large O_DIRECT writes, then made durable, against the same job as
//! snapwr wrote it, a blocking `pwrite` loop.
//!
//! `cargo run --release -p engine --example snapshot [-- <MiB> <buffer MiB> <buffers>]`
//! (default 256 MiB in 8 MiB buffers, 2 of them), on a temporary file in the current
//! directory's filesystem; `ENGINE_BACKEND` picks the engine.
//!
//! The engine's version is a pipeline over the queue API: while the kernel writes one
//! buffer, the producer fills the next, and it waits for the disk only when every buffer is
//! in flight. Both versions write the same stream and verify it by reading the file back.

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use engine::{block_on, AlignedBuf, AllocateMode, Engine, OpenOptions, Queue, Request};

/// The stream: `len` bytes from xorshift64, chunk by chunk, and its digest as it goes.
struct Stream {
    state: u64,
    left: u64,
    digest: u64,
}

impl Stream {
    fn new(len: u64) -> Stream {
        Stream {
            state: 0x2545_f491_4f6c_dd1d,
            left: len,
            digest: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Fills `buf` with the next bytes; how many (0 at the end).
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.left as usize).min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let word = self.state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
            self.digest = (self.digest ^ self.state).wrapping_mul(0x0100_0000_01b3);
        }
        self.left -= n as u64;
        n
    }
}

/// The digest of a file read back, in the stream's terms.
fn digest_of(path: &std::path::Path, len: u64) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..n])?;
        for chunk in buf[..n].chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            digest = (digest ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3);
        }
        left -= n as u64;
    }
    Ok(digest)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let buf_mib: usize = args.next().map_or(Ok(8), |a| a.parse())?;
    let buffers: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let (len, buf_len) = (mib << 20, buf_mib << 20);
    let dir = tempfile::tempdir_in(".")?;

    // The engine: preallocate, then the pipeline.
    let engine = Engine::from_env()?;
    println!("engine: {}", engine.name());
    let path = dir.path().join("snapshot");
    let options = OpenOptions::new().read(true).write(true).create(true);
    let file = match engine.open(&path, &options.clone().direct(true)) {
        Ok(file) => file,
        Err(_) => engine.open(&path, &options)?,
    };
    let align = {
        let g = file.geometry();
        g.offset_align.max(g.mem_align).max(4096) as usize
    };
    block_on(engine.allocate(&file, 0, len, AllocateMode::Allocate))?;
    let started = Instant::now();
    let mut queue = engine.queue()?;
    let mut free: Vec<AlignedBuf> = (0..buffers)
        .map(|_| AlignedBuf::zeroed(buf_len, align))
        .collect::<Result<_, _>>()?;
    let mut stream = Stream::new(len);
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
        queue.push_or_wait(Request::write_all(&file, offset, buf, 0), &mut done)?;
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
    block_on(engine.set_len(&file, len))?;
    block_on(engine.sync_all(&file))?;
    let elapsed = started.elapsed();
    engine.close(&file)?;
    let rate = len as f64 / elapsed.as_secs_f64() / 1e9;
    println!(
        "engine pipeline: {mib} MiB in {buf_mib} MiB writes, {buffers} buffers: {:.2} s, {rate:.2} GB/s; \
         the producer waited for the disk {waits} times, {:.0} ms in all",
        elapsed.as_secs_f64(),
        waited.as_secs_f64() * 1e3
    );
    if digest_of(&path, len)? != stream.digest {
        return Err("the engine's snapshot reads back other bytes".into());
    }

    // The hand-written baseline, as snapwr: fill a buffer, pwrite it, repeat; then fsync.
    let base_path = dir.path().join("baseline");
    let base = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&base_path)
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&base_path)
        })?;
    base.set_len(len)?;
    let started = Instant::now();
    let mut buf = AlignedBuf::zeroed(buf_len, align)?;
    let mut stream = Stream::new(len);
    let mut offset = 0u64;
    loop {
        let n = stream.fill(&mut buf);
        if n == 0 {
            break;
        }
        let padded = n.next_multiple_of(align);
        buf[n..padded].fill(0);
        base.write_all_at(&buf[..padded], offset)?;
        offset += n as u64;
    }
    base.set_len(len)?;
    base.sync_all()?;
    let base_elapsed = started.elapsed();
    let base_rate = len as f64 / base_elapsed.as_secs_f64() / 1e9;
    println!(
        "blocking pwrite loop: {:.2} s, {base_rate:.2} GB/s",
        base_elapsed.as_secs_f64()
    );
    if digest_of(&base_path, len)? != stream.digest {
        return Err("the baseline's snapshot reads back other bytes".into());
    }
    println!("engine / blocking loop: {:.2}x", rate / base_rate);
    Ok(())
}
