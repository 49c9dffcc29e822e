//! The README's main command: opens a temp file through `Engine::from_env()`, writes, syncs,
//! reads back, verifies and prints the selection report.

use engine::{AlignedBuf, Engine, ErrorKind, Op, OpenOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::from_env()?;
    println!("{}", engine.report());

    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("quickstart.dat");
    let rw = OpenOptions::new().read(true).write(true).create(true);
    // Prefer O_DIRECT; a filesystem without it says so with a typed error.
    let (file, direct) = match engine.open(&path, &rw.clone().direct(true)) {
        Ok(file) => (file, true),
        Err(e) if e.kind() == ErrorKind::Unsupported => (engine.open(&path, &rw)?, false),
        Err(e) => return Err(e.into()),
    };
    let geometry = *file.geometry();
    println!("file {} direct={direct}: {geometry}", path.display());

    // One block-aligned buffer of 64 KiB with a recognisable pattern.
    let align = geometry.mem_align.max(geometry.offset_align) as usize;
    let len = 64 * 1024;
    let mut data = AlignedBuf::zeroed(len, align)?;
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i * 31 % 251) as u8;
    }
    let expected = data.to_vec();

    engine::block_on(async {
        let (written, _) = engine.write_all_at(&file, 0, data).await;
        written?;
        engine.sync_data(&file).await?;
        let (read, back) = engine
            .read_exact_at(&file, 0, AlignedBuf::zeroed(len, align)?)
            .await;
        read?;
        if back.as_slice() != expected.as_slice() {
            return Err(engine::Error::new(
                ErrorKind::Io,
                Op::Read,
                "data read back differs from data written",
            ));
        }
        Ok(())
    })?;

    let metrics = engine.metrics();
    println!(
        "verified {len} bytes through backend {}: writes={} reads={} syncs={} read p50 <= {} ns",
        engine.name(),
        metrics.write.ops,
        metrics.read.ops,
        metrics.sync_data.ops,
        metrics.read.latency_ns_quantile(0.5),
    );
    Ok(())
}
