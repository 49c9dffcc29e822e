//! The real-device tier, on every backend: a loop device with 4096-byte logical sectors
//! (512-byte-aligned I/O is refused by validation, direct I/O on the block device works), a
//! small ext4 image written until real ENOSPC (everything acknowledged reads back intact), a
//! real writeback failure (ext4 over a loop device on a too-small tmpfs), a read-only mount,
//! and tmpfs. Needs root for loop devices and mounts; otherwise each part is
//! skipped with the reason printed. Every loop device and mount is removed, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conformance::runner::{self, Outcome, Trial};
use engine::{Engine, EngineConfig, BUILTIN_BACKENDS};
use engine_core::{
    block_on, AlignTarget, AlignedBuf, AllocateMode, ErrorKind, File, OpenOptions, Queue, Request,
    Support, WriteFlags,
};

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
        // io_uring lets go of a registered file (and a closed ring of all of them) a moment
        // after the engine does, so the filesystem can still be busy: retry for a while
        // rather than leave the mount behind.
        for _ in 0..100 {
            let unmounted = Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("  could not unmount {} within 2 s", self.0.display());
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

/// A real writeback failure: ext4 on a loop device whose backing file lives on a tmpfs too
/// small for it. Buffered writes land in the page cache; the sync that writes them back fails
/// (EIO or ENOSPC from the loop device), the kernel's own second fsync then reports success
/// (the error was handed out once), and ours stays Poisoned, with a message that says the
/// data must be rewritten, until the file is reopened.
fn ext4_writeback_failure(engine: &Engine, dir: &Path) -> Result<(), String> {
    let backing = dir.join("small-tmpfs");
    std::fs::create_dir_all(&backing).map_err(|e| e.to_string())?;
    let backing_str = backing.to_str().ok_or("mount path")?.to_string();
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=12m", "tmpfs", &backing_str],
    )?;
    let backing_mount = Mount(backing.clone());
    // 64 MiB of ext4 on 12 MiB of tmpfs. mkfs writes the journal and inode tables in full
    // (no lazy init), so every metadata block has its tmpfs page and ext4 itself keeps
    // working; the data below, 32 MiB, cannot all find one.
    let img = image(&backing, "ext4.img", 64 << 20);
    let dev = attach(&img, 512)?;
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &dev.0,
        ],
    )?;
    let mnt = dir.join("wb");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mnt_str = mnt.to_str().ok_or("mount path")?.to_string();
    run("mount", &["-o", "errors=continue", &dev.0, &mnt_str])?;
    let mount = Mount(mnt.clone());
    let path = mnt.join("data");
    let rw = OpenOptions::new().read(true).write(true).create(true);
    let file = engine.open(&path, &rw).map_err(|e| e.to_string())?;
    const CHUNK: usize = 1 << 20;
    for i in 0..32u64 {
        let data = conformance::pattern(CHUNK, i);
        let (w, _) = block_on(engine.write_all_at(
            &file,
            i * CHUNK as u64,
            AlignedBuf::from_slice(&data, 4096).map_err(|e| e.to_string())?,
        ));
        // Buffered writes go to the page cache; one refused at once ends the writing.
        if let Err(e) = w {
            println!("  writeback: write {i} refused at once: {e}");
            break;
        }
    }
    let first = block_on(engine.sync_data(&file));
    let error = match first {
        Ok(()) => {
            return Err("32 MiB synced to ext4 on a 12 MiB tmpfs: no writeback failure".into())
        }
        Err(e) => e,
    };
    if !matches!(error.kind(), ErrorKind::Io | ErrorKind::NoSpace) {
        return Err(format!(
            "the failed writeback: expected Io or NoSpace, got {error}"
        ));
    }
    // The kernel hands a writeback error to each open file once: its next fsync succeeds.
    // SAFETY: fsync on a descriptor the engine's file keeps open.
    let kernel_again = unsafe {
        libc::fsync(std::os::fd::AsRawFd::as_raw_fd(
            engine_core::raw::FileRaw::std(&file),
        ))
    };
    // glommio syncs through a descriptor of its own (another open file description), so the
    // error is still due on the engine's; every other backend syncs through the engine's.
    if kernel_again != 0 && engine.name() != "glommio" {
        return Err(format!(
            "the kernel's second fsync returned {kernel_again}: the filesystem did not keep \
             working past the writeback failure, so this part proves nothing"
        ));
    }
    let ours = match block_on(engine.sync_data(&file)) {
        Err(e) if e.kind() == ErrorKind::Poisoned => e,
        other => return Err(format!("the second sync: expected Poisoned, got {other:?}")),
    };
    let message = ours.to_string();
    if !message.contains("rewrite that data from your own copy") || !message.contains("page cache")
    {
        return Err(format!("the Poisoned error must say what to do: {message}"));
    }
    match block_on(engine.sync_all(&file)) {
        Err(e) if e.kind() == ErrorKind::Poisoned => {}
        other => {
            return Err(format!(
                "sync_all on the poisoned file: expected Poisoned, got {other:?}"
            ))
        }
    }
    engine.close(&file).map_err(|e| e.to_string())?;
    drop(file);
    // A reopened file starts clean: it is up to its user to rewrite what was lost.
    let reopened = engine.open(&path, &rw).map_err(|e| e.to_string())?;
    let after = block_on(engine.sync_data(&reopened));
    println!(
        "  writeback: the first sync failed with {error}; the kernel's second fsync returned \
         {kernel_again}; ours stayed Poisoned; after reopening, a sync returned {after:?}"
    );
    if matches!(&after, Err(e) if e.kind() == ErrorKind::Poisoned) {
        return Err("a reopened file must not inherit the old handle's poisoning".into());
    }
    engine.close(&reopened).map_err(|e| e.to_string())?;
    drop(reopened);
    drop(mount);
    drop(dev);
    drop(backing_mount);
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

/// A 4096-byte-sector block device through the file-management operations: `metadata` gives
/// the device's size, only aligned `PunchHole` and `ZeroRange` are taken, its length is fixed,
/// and a device opened elsewhere with `O_EXCL` is adopted with the geometry `open` probes.
fn block_device_management(engine: &Engine, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let img = image(dir, "bdev.img", 16 << 20);
    let dev = attach(&img, 4096)?;
    let path = Path::new(&dev.0);
    let direct = OpenOptions::new().read(true).write(true).direct(true);
    let file = engine.open(path, &direct).map_err(|e| e.to_string())?;
    let metadata = block_on(engine.metadata(&file)).map_err(|e| format!("metadata: {e}"))?;
    if metadata.len() != 16 << 20 || !metadata.is_block_device() {
        return Err(format!("metadata of a 16 MiB block device: {metadata:?}"));
    }
    let data = conformance::pattern(16384, 21);
    let (w, _) = block_on(engine.write_all_at(&file, 0, aligned(&data)?));
    w.map_err(|e| e.to_string())?;
    block_on(engine.allocate(&file, 4096, 8192, AllocateMode::PunchHole))
        .map_err(|e| format!("an aligned punch on the device: {e}"))?;
    let back = read_back(engine, &file, 0, 16384)?;
    if back[..4096] != data[..4096] || back[4096..12288].iter().any(|&b| b != 0) {
        return Err("the punched range of the device does not read as zeros".into());
    }
    let refusals = [
        (
            block_on(engine.allocate(&file, 512, 4096, AllocateMode::ZeroRange)),
            ErrorKind::Misaligned,
            "an unaligned zeroing",
        ),
        (
            block_on(engine.allocate(&file, 0, 4096, AllocateMode::Allocate)),
            ErrorKind::Unsupported,
            "preallocating a device",
        ),
        (
            block_on(engine.set_len(&file, 4096)),
            ErrorKind::Unsupported,
            "a device's length",
        ),
    ];
    for (result, kind, what) in refusals {
        match result {
            Err(e) if e.kind() == kind => {}
            other => return Err(format!("{what}: expected {kind:?}, got {other:?}")),
        }
    }
    let geometry = *file.geometry();
    engine.close(&file).map_err(|e| e.to_string())?;
    drop(file);
    let exclusive = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| format!("opening the device with O_EXCL: {e}"))?;
    let adopted = engine
        .adopt(exclusive.into(), &direct)
        .map_err(|e| format!("adopting the O_EXCL device: {e}"))?;
    if *adopted.geometry() != geometry {
        return Err(format!(
            "adopted geometry {} differs from open's {geometry}",
            adopted.geometry()
        ));
    }
    if read_back(engine, &adopted, 0, 4096)? != data[..4096] {
        return Err("the adopted device reads back different data".into());
    }
    engine.close(&adopted).map_err(|e| e.to_string())?;
    Ok(())
}

/// Read, write, create, O_DIRECT.
fn direct_create() -> OpenOptions {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true)
}

fn aligned(data: &[u8]) -> Result<AlignedBuf, String> {
    AlignedBuf::from_slice(data, 4096).map_err(|e| e.to_string())
}

fn read_back(engine: &Engine, file: &File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let buf = AlignedBuf::zeroed(len, 4096).map_err(|e| e.to_string())?;
    let (r, back) = block_on(engine.read_exact_at(file, offset, buf));
    r.map_err(|e| format!("read back at {offset}: {e}"))?;
    Ok(back.to_vec())
}

/// Makes `fs` (with `args`) on a fresh loop device of `bytes` and mounts it in `dir`.
fn filesystem(
    dir: &Path,
    fs: &str,
    args: &[&str],
    bytes: u64,
) -> Result<(Loop, Mount, PathBuf), String> {
    let img = image(dir, &format!("{fs}.img"), bytes);
    let dev = attach(&img, 512)?;
    let mkfs = format!("mkfs.{fs}");
    let mut all: Vec<&str> = args.to_vec();
    all.push(&dev.0);
    run(&mkfs, &all).map_err(|e| {
        if e.contains("No such file") {
            format!("{mkfs} is not installed (No such file)")
        } else {
            e
        }
    })?;
    let mnt = dir.join(format!("{fs}-mnt"));
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    let mnt_str = mnt.to_str().ok_or("mount path")?.to_string();
    run("mount", &[&dev.0, &mnt_str])?;
    Ok((dev, Mount(mnt.clone()), mnt))
}

/// XFS with reflink on a loop device takes untorn writes through its software fallback (Linux
/// 6.16+): the geometry carries the statx limits, writes within them land whole through both
/// APIs, writes outside them are refused before submission, and a punched hole shows in
/// `metadata().blocks`.
fn xfs_atomic_writes(engine: &Engine, dir: &Path) -> Result<(), String> {
    let (_dev, mount, mnt) = filesystem(dir, "xfs", &["-q", "-f", "-m", "reflink=1"], 320 << 20)?;
    let path = mnt.join("atomic");
    let file = engine
        .open(&path, &direct_create())
        .map_err(|e| e.to_string())?;
    let g = *file.geometry();
    if g.atomic_write_unit_max == 0 {
        return Err(format!(
            "XFS with reflink reports no atomic-write limits: {g}"
        ));
    }
    let max = g.atomic_write_unit_max as usize;
    let unit = (g.atomic_write_unit_min as usize).max(4096);
    block_on(engine.set_len(&file, 4 << 20)).map_err(|e| e.to_string())?;
    let mut len = unit;
    let mut written = 0;
    while len <= max.min(1 << 20) {
        let data = conformance::pattern(len, len as u64);
        let (w, _) = block_on(engine.write_atomic_at(&file, len as u64, aligned(&data)?));
        w.map_err(|e| format!("a {len}-byte atomic write at {len} ({g}): {e}"))?;
        if read_back(engine, &file, len as u64, len)? != data {
            return Err(format!("the {len}-byte atomic write does not read back"));
        }
        written += 1;
        len *= 2;
    }
    // The queue API, durable too.
    let mut queue = engine.queue().map_err(|e| e.to_string())?;
    let data = conformance::pattern(unit, 3);
    let request = Request::write_all(&file, 0, aligned(&data)?, 1)
        .with_flags(WriteFlags::ATOMIC | WriteFlags::DSYNC);
    queue.push(request).map_err(|_| "queue full")?;
    let mut out = Vec::new();
    queue.wait(1, &mut out).map_err(|e| e.to_string())?;
    out[0]
        .result
        .as_ref()
        .map_err(|e| format!("an atomic DSYNC write through the queue: {e}"))?;
    drop(queue);
    let refused = [
        (
            unit as u64,
            2 * unit,
            ErrorKind::Misaligned,
            "an offset not a multiple of the length",
        ),
        (
            0,
            3 * unit,
            ErrorKind::Misaligned,
            "a length not a power of two",
        ),
        (
            0,
            2 * max,
            ErrorKind::Unsupported,
            "a length above unit max",
        ),
    ];
    for (offset, len, kind, what) in refused {
        let data = vec![7u8; len];
        let (w, _) = block_on(engine.write_atomic_at(&file, offset, aligned(&data)?));
        match w {
            Err(e) if e.kind() == kind && e.to_string().contains("unit min") => {}
            other => {
                return Err(format!(
                    "{what}: expected {kind:?} with the limits, got {other:?}"
                ))
            }
        }
    }
    block_on(engine.sync_all(&file)).map_err(|e| e.to_string())?;
    let before = block_on(engine.metadata(&file)).map_err(|e| e.to_string())?;
    block_on(engine.allocate(&file, 1 << 20, 1 << 20, AllocateMode::PunchHole))
        .map_err(|e| format!("punch on XFS: {e}"))?;
    let after = block_on(engine.metadata(&file)).map_err(|e| e.to_string())?;
    if after.blocks() >= before.blocks() || after.len() != before.len() {
        return Err(format!(
            "a punched hole must free blocks: {before:?} then {after:?}"
        ));
    }
    println!(
        "  xfs: atomic writes {unit}..{} bytes landed whole ({written} sizes), limits {}..{} \
         (max_opt {}); punch freed {} blocks",
        len / 2,
        g.atomic_write_unit_min,
        g.atomic_write_unit_max,
        g.atomic_write_unit_max_opt,
        before.blocks() - after.blocks()
    );
    engine.close(&file).map_err(|e| e.to_string())?;
    drop(file);
    drop(mount);
    Ok(())
}

/// ext4 without hardware atomics: the geometry has no atomic-write limits and
/// `write_atomic_at` is refused up front with a typed error naming them.
fn ext4_refuses_atomic_writes(engine: &Engine, dir: &Path) -> Result<(), String> {
    let (_dev, mount, mnt) = filesystem(dir, "ext4", &["-q", "-F"], 32 << 20)?;
    let path = mnt.join("atomic");
    let file = engine
        .open(&path, &direct_create())
        .map_err(|e| e.to_string())?;
    let g = *file.geometry();
    if g.atomic_write_unit_max != 0 {
        println!("  ext4 here reports atomic-write limits ({g}); the refusal is not exercised");
        return Err(format!(
            "ext4 on a loop device reported atomic-write limits: {g}"
        ));
    }
    let before = engine.metrics().write;
    let (w, _) = block_on(engine.write_atomic_at(&file, 0, aligned(&[1u8; 4096])?));
    match w {
        Err(e) if e.kind() == ErrorKind::Unsupported && e.to_string().contains("unit min 0") => {
            println!("  ext4: refused up front: {e}");
        }
        other => {
            return Err(format!(
                "an atomic write on ext4: expected Unsupported, got {other:?}"
            ))
        }
    }
    let after = engine.metrics().write;
    if after.errors != before.errors + 1 || after.bytes != before.bytes {
        return Err("the refused atomic write must be counted as an error, with no bytes".into());
    }
    engine.close(&file).map_err(|e| e.to_string())?;
    drop(file);
    drop(mount);
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
        Err(e) if e.contains("is not installed") => Outcome::Skipped(e),
        Err(e) => Outcome::Failed(e),
    }
}

fn main() {
    let parts: [(&str, Part); 5] = [
        ("loop_device_with_4096_byte_sectors", loop_4k),
        (
            "block_device_metadata_allocate_and_adopt",
            block_device_management,
        ),
        ("ext4_to_enospc_then_read_only", ext4_enospc),
        (
            "ext4_writeback_failure_poisons_until_reopen",
            ext4_writeback_failure,
        ),
        ("tmpfs", tmpfs),
    ];
    // Untorn writes get a line of their own per backend.
    let atomic: [(&str, Part); 2] = [
        ("xfs_reflink_takes_atomic_writes", xfs_atomic_writes),
        (
            "ext4_refuses_atomic_writes_up_front",
            ext4_refuses_atomic_writes,
        ),
    ];
    let mut all = Vec::new();
    for backend in BUILTIN_BACKENDS {
        for (group, list) in [("realdev", &parts[..]), ("atomic", &atomic[..])] {
            for &(name, body) in list {
                all.push(Trial::new(
                    &format!("{group}:{backend}"),
                    name,
                    Duration::from_secs(120),
                    move || part(backend, body),
                ));
            }
        }
    }
    runner::run(all);
}
