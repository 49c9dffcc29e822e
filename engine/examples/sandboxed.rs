//! Opens its files, enters a seccomp sandbox built from the engine's steady-state system
//! calls, and runs a workload inside it: 4 KiB random writes and reads with a sync every 64
//! writes, on io_uring's restricted ring where io_uring runs here, else on AIO or sync.
//!
//! `cargo run --release --example sandboxed --features sandbox [-- <backend>]`
//!
//! Any call outside the filter kills the process (`SECCOMP_RET_KILL_PROCESS`). The process
//! ends with `exit` inside the sandbox: dropping the engine there would close files and
//! unmap rings, which the steady state does not include.

use std::io::Write;
use std::time::Instant;

use engine::sandbox::Sandbox;
use engine::{
    block_on, AlignedBuf, Engine, EngineConfig, OpenOptions, PageAllocator, PagePool, PoolConfig,
    Queue, Request,
};

const FILE_BYTES: u64 = 64 << 20;
const BLOCK: usize = 4096;
const OPS: u64 = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = std::env::args().nth(1);
    let config = EngineConfig {
        queue_depth: 32,
        restricted: true,
        ..EngineConfig::default()
    };
    let engine = match &backend {
        Some(name) => Engine::with_backend(name, config)?,
        None => ["uring", "aio", "sync"]
            .into_iter()
            .find_map(|name| Engine::with_backend(name, config.clone()).ok())
            .ok_or("no backend runs here")?,
    };
    println!("backend: {}", engine.name());

    // 1. Set up: open the file, make the queue, and run a request of each kind once.
    let dir = tempfile::tempdir()?;
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true);
    let file = match engine.open(&dir.path().join("data"), &options) {
        Ok(file) => file,
        // tmpfs and some others take no O_DIRECT: buffered, then.
        Err(_) => engine.open(&dir.path().join("data"), &options.clone().direct(false))?,
    };
    // Nothing to clean up later, inside the sandbox: the name goes now, the open file stays.
    drop(dir);
    block_on(engine.set_len(&file, FILE_BYTES))?;
    // Buffers come from a pool made now (the engine's registered one on io_uring): inside the
    // sandbox they are recycled, and the allocator never asks the kernel for memory.
    let pool = match engine.pool() {
        Some(pool) => pool.clone(),
        None => PagePool::new(PoolConfig {
            limit_bytes: 1 << 20,
            class_size_max: 1 << 20,
            contiguous: true,
            ..PoolConfig::default()
        })?,
    };
    let mut queue = engine.queue()?;
    let mut done = Vec::new();
    let warm = AlignedBuf::zeroed(BLOCK, BLOCK)?;
    queue.push_or_wait(Request::write(&file, 0, warm, 0), &mut done)?;
    queue.wait(1, &mut done)?;
    block_on(engine.sync_data(&file))?;
    done.clear();

    // 2. Enter the sandbox: the engine's calls on this file, its queue's ring or context, the
    //    allocator and exit, and writes to stdout.
    let sandbox = Sandbox::new(&engine)?
        .file(&file)
        .queue(&queue)
        .allow_process_basics()
        .allow_on(libc::SYS_write, std::io::stdout());
    print!("{}", sandbox.state());
    let filter = sandbox.build()?;
    std::io::stdout().flush()?;
    filter.apply()?;
    println!("sandboxed: {} BPF instructions", filter.len());

    // 3. The workload, inside it.
    let started = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let blocks = FILE_BYTES / BLOCK as u64;
    let (mut writes, mut reads, mut syncs) = (0u64, 0u64, 0u64);
    for i in 0..OPS {
        let offset = (next() % blocks) * BLOCK as u64;
        let buf = pool.alloc(BLOCK)?;
        let request = if i % 2 == 0 {
            writes += 1;
            Request::write(&file, offset, buf, i)
        } else {
            reads += 1;
            Request::read(&file, offset, buf, i)
        };
        queue.push_or_wait(request, &mut done)?;
        if writes % 64 == 0 && i % 2 == 0 {
            while queue.in_flight() > 0 {
                let n = queue.in_flight();
                queue.wait(n, &mut done)?;
            }
            block_on(engine.sync_data(&file))?;
            syncs += 1;
        }
        for completion in done.drain(..) {
            completion.result?;
        }
    }
    while queue.in_flight() > 0 {
        let n = queue.in_flight();
        queue.wait(n, &mut done)?;
    }
    for completion in done.drain(..) {
        completion.result?;
    }
    let elapsed = started.elapsed();
    println!(
        "{writes} writes, {reads} reads, {syncs} syncs in {:.2} s ({:.0} ops/s), inside the sandbox",
        elapsed.as_secs_f64(),
        OPS as f64 / elapsed.as_secs_f64()
    );
    std::io::stdout().flush()?;
    // Inside the sandbox to the end: leave without dropping the engine.
    std::process::exit(0)
}
