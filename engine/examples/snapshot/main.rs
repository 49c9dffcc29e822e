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

mod pipeline;

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use engine::{AlignedBuf, Engine, OpenOptions};
use pipeline::{digest_step, Stream, DIGEST_START};

/// The digest of a file read back, in the stream's terms.
fn digest_of(path: &std::path::Path, len: u64) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = DIGEST_START;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..n])?;
        for chunk in buf[..n].chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            digest = digest_step(digest, u64::from_le_bytes(word));
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
    let mut stream = Stream::new(len);
    let stats = pipeline::write(&engine, &file, &mut stream, len, buf_len, buffers)?;
    let elapsed = stats.elapsed;
    let (waits, waited) = (stats.waits, stats.waited);
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
