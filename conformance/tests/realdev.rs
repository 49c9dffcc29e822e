//! The real-device tier, on every backend: a loop device with 4096-byte logical sectors
//! (512-byte-aligned I/O is refused by validation, direct I/O on the block device works), a
//! small ext4 image written until real ENOSPC (everything acknowledged reads back intact), a
//! read-only mount, and tmpfs. Needs root for loop devices and mounts; otherwise each part is
//! skipped with the reason printed. Every loop device and mount is removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, EngineConfig, BUILTIN_BACKENDS};
use engine_core::{block_on, AlignTarget, AlignedBuf, ErrorKind, OpenOptions, Support};

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn attach(image: &Path, sector: u32) -> Result<Loop, String> {
    let image = image.to_str().ok_or("image path is not UTF-8")?;
    let sector = sector.to_string();
    run(
        "losetup",
        &["--find", "--show", "--sector-size", &sector, image],
    )
    .map(Loop)
}

fn image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("image");
    file.set_len(bytes).expect("size");
    path
}

fn config() -> EngineConfig {
    EngineConfig {
        queue_depth: 16,
        threads: 4,
        register_buffers_bytes: 1 << 20,
        ..EngineConfig::default()
    }
}

/// 4096-byte sectors: geometry says so, 512-aligned I/O is refused before the kernel, and
/// aligned direct I/O on the block device round-trips.
fn loop_4k(engine: &Engine, dir: &Path) -> Result<(), String> {
    let img = image(dir, "4k.img", 16 << 20);
    let dev = attach(&img, 4096)?;
    let path = Path::new(&dev.0);
    let file = engine
        .open(
            path,
            &OpenOptions::new().read(true).write(true).direct(true),
        )
        .map_err(|e| e.to_string())?;
    let g = *file.geometry();
    if g.logical_block_size != 4096 || g.offset_align != 4096 || !g.is_block_device {
        return Err(format!("geometry of a 4096-byte-sector device: {g}"));
    }
    let (result, _) = block_on(engine.write_at(
        &file,
        512,
        AlignedBuf::zeroed(512, 512).map_err(|e| e.to_string())?,
    ));
    match result {
        Err(e)
            if e.kind() == ErrorKind::Misaligned
                && e.misalignment().map(|m| m.target) == Some(AlignTarget::Offset) => {}
        other => {
            return Err(format!(
                "512-aligned write on a 4k device: expected Misaligned, got {other:?}"
            ))
        }
    }
    let (result, _) = block_on(engine.read_at(
        &file,
        0,
        AlignedBuf::zeroed(512, 4096).map_err(|e| e.to_string())?,
    ));
    if !matches!(&result, Err(e) if e.kind() == ErrorKind::Misaligned) {
        return Err(format!(
            "512-byte read on a 4k device: expected Misaligned, got {result:?}"
        ));
    }
    let data = conformance::pattern(8192, 4);
    let (w, _) = block_on(engine.write_all_at(
        &file,
        8192,
        AlignedBuf::from_slice(&data, 4096).map_err(|e| e.to_string())?,
    ));
    w.map_err(|e| format!("aligned write on the block device: {e}"))?;
    block_on(engine.sync_all(&file)).map_err(|e| format!("sync of the block device: {e}"))?;
    let (r, back) = block_on(engine.read_exact_at(
        &file,
        8192,
        AlignedBuf::zeroed(8192, 4096).map_err(|e| e.to_string())?,
    ));
    r.map_err(|e| e.to_string())?;
    if back.as_slice() != data.as_slice() {
        return Err("data read back from the block device differs".into());
    }
    engine.close(&file).map_err(|e| e.to_string())?;
    Ok(())
}

/// ext4 on a loop device: write until ENOSPC; every chunk acknowledged (written and synced)
/// before it reads back intact, then a read-only mount refuses writes.
fn ext4_enospc(engine: &Engine, dir: &Path) -> Result<(), String> {
    let img = image(dir, "ext4.img", 8 << 20);
    let dev = attach(&img, 512)?;
    run("mkfs.ext4", &["-q", "-F", "-m", "0", &dev.0])?;
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mnt_str = mnt.to_str().ok_or("mount path")?.to_string();
    run("mount", &[&dev.0, &mnt_str])?;
    let mount = Mount(mnt.clone());
    let path = mnt.join("fill");
    let file = engine
        .open(
            &path,
            &OpenOptions::new().read(true).write(true).create(true),
        )
        .map_err(|e| e.to_string())?;
    const CHUNK: usize = 64 << 10;
    let mut acked = 0u64;
    let mut hit = None;
    for i in 0..1024u64 {
        let data = conformance::pattern(CHUNK, i);
        let (w, _) = block_on(engine.write_all_at(
            &file,
            i * CHUNK as u64,
            AlignedBuf::from_slice(&data, 4096).map_err(|e| e.to_string())?,
        ));
        let synced = w.and_then(|()| block_on(engine.sync_data(&file)));
        match synced {
            Ok(()) => acked = i + 1,
            Err(e) => {
                hit = Some(e);
                break;
            }
        }
    }
    let Some(error) = hit else {
        return Err("8 MiB of ext4 never filled up".into());
    };
    if error.kind() != ErrorKind::NoSpace {
        return Err(format!("expected NoSpace, got {error}"));
    }
    engine.close(&file).map_err(|e| e.to_string())?;
    // The descriptor closes with the last handle.
    drop(file);
    let reopened = engine
        .open(&path, &OpenOptions::new().read(true))
        .map_err(|e| e.to_string())?;
    for i in 0..acked {
        let (r, back) = block_on(engine.read_exact_at(
            &reopened,
            i * CHUNK as u64,
            AlignedBuf::zeroed(CHUNK, 4096).map_err(|e| e.to_string())?,
        ));
        r.map_err(|e| format!("reading acknowledged chunk {i}: {e}"))?;
        if back.as_slice() != conformance::pattern(CHUNK, i).as_slice() {
            return Err(format!(
                "acknowledged chunk {i} of {acked} does not read back intact"
            ));
        }
    }
    engine.close(&reopened).map_err(|e| e.to_string())?;
    drop(reopened);
    println!("  ext4: {acked} chunks of 64 KiB acknowledged before {error}");
    // Read-only: a read-only bind mount of the same directory, and a write through it.
    let ro_dir = dir.join("ro");
    std::fs::create_dir_all(&ro_dir).map_err(|e| e.to_string())?;
    let ro_str = ro_dir.to_str().ok_or("mount path")?.to_string();
    run("mount", &["--bind", &mnt_str, &ro_str])?;
    let ro_mount = Mount(ro_dir.clone());
    run("mount", &["-o", "remount,bind,ro", &ro_str])?;
    let ro_path = ro_dir.join("fill");
    match engine.open(&ro_path, &OpenOptions::new().read(true).write(true)) {
        Err(e) if e.kind() == ErrorKind::ReadOnly => {}
        other => {
            return Err(format!(
                "opening for write on a read-only mount: expected ReadOnly, got {other:?}"
            ))
        }
    }
    let ro = engine
        .open(&ro_path, &OpenOptions::new().read(true))
        .map_err(|e| e.to_string())?;
    let (w, _) = block_on(engine.write_at(
        &ro,
        0,
        AlignedBuf::zeroed(4096, 4096).map_err(|e| e.to_string())?,
    ));
    if !matches!(&w, Err(e) if e.kind() == ErrorKind::ReadOnly) {
        return Err(format!(
            "write through a read-only handle: expected ReadOnly, got {w:?}"
        ));
    }
    engine.close(&ro).map_err(|e| e.to_string())?;
    drop(ro);
    drop(ro_mount);
    drop(mount);
    Ok(())
}

/// tmpfs has no device alignment to report: the geometry says where it came from, and says
/// whether O_DIRECT works, consistently with what open does.
fn tmpfs(engine: &Engine, dir: &Path) -> Result<(), String> {
    let mnt = dir.join("tmpfs");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mnt_str = mnt.to_str().ok_or("mount path")?.to_string();
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=8m", "tmpfs", &mnt_str],
    )?;
    let _mount = Mount(mnt.clone());
    let path = mnt.join("t");
    let buffered = engine
        .open(
            &path,
            &OpenOptions::new().read(true).write(true).create(true),
        )
        .map_err(|e| e.to_string())?;
    let g = *buffered.geometry();
    let direct = engine.open(
        &path,
        &OpenOptions::new().read(true).write(true).direct(true),
    );
    match (&direct, g.direct_io) {
        (Ok(_), Support::Unsupported) => {
            return Err(format!(
                "O_DIRECT opened but geometry says unsupported: {g}"
            ))
        }
        (Err(e), _) if e.kind() != ErrorKind::Unsupported => {
            return Err(format!("O_DIRECT on tmpfs: {e}"))
        }
        (Err(_), Support::Supported) => {
            return Err(format!("O_DIRECT refused but geometry says supported: {g}"))
        }
        _ => {}
    }
    println!(
        "  tmpfs: geometry {g}; O_DIRECT open: {}",
        if direct.is_ok() {
            "accepted"
        } else {
            "refused (Unsupported)"
        }
    );
    if let Ok(file) = direct {
        let data = conformance::pattern(4096, 9);
        let align = file.geometry().mem_align.max(file.geometry().offset_align) as usize;
        let (w, _) = block_on(engine.write_all_at(
            &file,
            0,
            AlignedBuf::from_slice(&data, align).map_err(|e| e.to_string())?,
        ));
        w.map_err(|e| format!("direct write on tmpfs: {e}"))?;
        let (r, back) = block_on(engine.read_exact_at(
            &file,
            0,
            AlignedBuf::zeroed(4096, align).map_err(|e| e.to_string())?,
        ));
        r.map_err(|e| e.to_string())?;
        if back.as_slice() != data.as_slice() {
            return Err("tmpfs direct read back differs".into());
        }
        engine.close(&file).map_err(|e| e.to_string())?;
    }
    engine.close(&buffered).map_err(|e| e.to_string())?;
    Ok(())
}

type Part = fn(&Engine, &Path) -> Result<(), String>;

/// Runs one part on `backend`, or says why it cannot run here.
fn part(backend: &'static str, body: Part) -> Outcome {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Outcome::Skipped(
            "the real-device tier needs root for loop devices and mounts".into(),
        );
    }
    let engine = match Engine::with_backend(backend, config()) {
        Ok(engine) => engine,
        Err(e) => return Outcome::Skipped(format!("backend {backend} cannot run here: {e}")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    match body(&engine, dir.path()) {
        Ok(()) => Outcome::Passed,
        Err(e) if e.contains("losetup") && e.contains("No such file") => {
            Outcome::Skipped(format!("loop devices unavailable: {e}"))
        }
        Err(e) => Outcome::Failed(e),
    }
}

fn main() {
    let parts: [(&str, Part); 3] = [
        ("loop_device_with_4096_byte_sectors", loop_4k),
        ("ext4_to_enospc_then_read_only", ext4_enospc),
        ("tmpfs", tmpfs),
    ];
    let mut all = Vec::new();
    for backend in BUILTIN_BACKENDS {
        for (name, body) in parts {
            all.push(Trial::new(
                &format!("realdev:{backend}"),
                name,
                Duration::from_secs(120),
                move || part(backend, body),
            ));
        }
    }
    runner::run(all);
}
