//! A blob store in the style of blobd's direct store (`store.rs`): objects in the device space
//! of one preallocated file, each written with one durable O_DIRECT write before it is
//! acknowledged, read back verified, some deleted, and the index rebuilt from the file on
//! reopen; against the same puts written by hand the way blobd's file store did them, an
//! O_DIRECT `pwrite` and an `fdatasync` per object on a thread each.
//!
//! `cargo run --release -p engine --example blob [-- <writers> <objects per writer>]`
//! (default 16 writers, 40 objects of 4 KiB to 256 KiB each), on a temporary file in the
//! current directory's filesystem; `ENGINE_BACKEND` picks the engine.

mod store;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use engine::{block_on, join_all, Engine};
use store::BlobStore;

const CAPACITY: u64 = 256 << 20;

/// Object `i` of writer `w`: its own bytes, 4 KiB to 256 KiB of them.
fn object(w: usize, i: usize) -> Vec<u8> {
    let len = 4096 + (w * 7919 + i * 104_729) % (252 << 10);
    (0..len)
        .map(|b| (b as u8) ^ (w as u8) ^ (i as u8).rotate_left(3))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let per_writer: usize = args.next().map_or(Ok(40), |a| a.parse())?;
    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("blobs");

    let engine = Engine::from_env()?;
    println!("engine: {}", engine.name());
    let store = block_on(BlobStore::open(engine, &path, CAPACITY))?;
    let started = Instant::now();
    let stored = block_on(join_all(
        (0..writers)
            .map(|w| {
                let store = &store;
                async move {
                    let mut ids = Vec::with_capacity(per_writer);
                    for i in 0..per_writer {
                        ids.push((store.put(&object(w, i)).await?, w, i));
                    }
                    Ok::<_, engine::Error>(ids)
                }
            })
            .collect(),
    ));
    let elapsed = started.elapsed();
    let mut ids = Vec::new();
    for writer in stored {
        ids.extend(writer?);
    }
    let bytes: usize = ids.iter().map(|&(_, w, i)| object(w, i).len()).sum();
    let rate = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "put {} objects ({:.1} MiB) from {writers} writers, each durable before its ack: {:.2} s, {rate:.0} MB/s",
        ids.len(),
        bytes as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64()
    );
    for &(id, w, i) in &ids {
        if block_on(store.get(id))? != object(w, i) {
            return Err(format!("object {id} reads back other bytes").into());
        }
    }
    let deleted: Vec<_> = ids.iter().step_by(3).map(|&(id, _, _)| id).collect();
    for &id in &deleted {
        block_on(store.delete(id))?;
    }
    println!(
        "read back and verified every object; deleted {}; {:.1} MiB free",
        deleted.len(),
        store.free_bytes() as f64 / (1 << 20) as f64
    );

    // Reopened: the index and the free space rebuilt from the file alone.
    let engine = store.close()?;
    let started = Instant::now();
    let store = block_on(BlobStore::open(engine, &path, CAPACITY))?;
    let kept: Vec<_> = ids
        .iter()
        .filter(|(id, _, _)| !deleted.contains(id))
        .collect();
    let mut want: Vec<_> = kept.iter().map(|&&(id, _, _)| id).collect();
    want.sort_unstable();
    let got = store.ids();
    if got != want {
        let missing: Vec<_> = want.iter().filter(|i| !got.contains(i)).collect();
        let extra: Vec<_> = got.iter().filter(|i| !want.contains(i)).collect();
        return Err(format!("reopened, the store lacks {missing:?} and holds {extra:?}").into());
    }
    for &&(id, w, i) in &kept {
        if block_on(store.get(id))? != object(w, i) {
            return Err(format!("object {id} reads back other bytes after reopening").into());
        }
    }
    println!(
        "reopened in {:.0} ms: {} objects found and verified",
        started.elapsed().as_secs_f64() * 1e3,
        kept.len()
    );
    drop(store);

    // The hand-written baseline: the same puts, a pwrite and an fdatasync each, a thread per
    // writer, into extents handed out in turn.
    // O_DIRECT, as blobd opened its partitions (buffered where the filesystem refuses it).
    let base_path = dir.path().join("baseline");
    let open = |direct: bool| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options.open(&base_path)
    };
    let file = open(true).or_else(|_| open(false))?;
    file.set_len(CAPACITY)?;
    let tail = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> std::io::Result<()> {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (file, tail) = (&file, &tail);
                scope.spawn(move || -> std::io::Result<()> {
                    for i in 0..per_writer {
                        let data = object(w, i);
                        let padded = data.len().next_multiple_of(4096);
                        let mut buf = engine::AlignedBuf::zeroed(padded, 4096)
                            .map_err(std::io::Error::other)?;
                        buf[..data.len()].copy_from_slice(&data);
                        let len = 4096 + padded as u64;
                        let offset = tail.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                        file.write_all_at(&buf, offset + 4096)?;
                        file.sync_data()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| std::io::Error::other("a baseline writer panicked"))??;
        }
        Ok(())
    })?;
    let base_elapsed = started.elapsed();
    let base_rate = bytes as f64 / base_elapsed.as_secs_f64() / 1e6;
    println!(
        "baseline, pwrite + fdatasync per object: {:.2} s, {base_rate:.0} MB/s",
        base_elapsed.as_secs_f64()
    );
    // One short run of puts alone: `engine-bench --workload blob` is the measured comparison
    // (with deletes, for seconds, interleaved; BENCHMARKS.md).
    println!(
        "engine / baseline, these puts once (no deletes; see BENCHMARKS.md for the measured \
         workload): {:.2}x",
        rate / base_rate
    );
    Ok(())
}
