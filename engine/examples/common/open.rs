//! Opening a store's file, shared by the examples' on-disk formats.

use std::path::Path;

use engine::{Backend, BackendExt, ErrorKind, File, OpenOptions, Result};

/// Opens (or creates) `path` for reading and writing through `engine`, O_DIRECT where the
/// filesystem takes it, buffered where it refuses; a file it creates has its name made
/// durable (the directory synced) before it returns, so nothing acknowledged in it can lose
/// its name to a crash.
///
/// # Errors
///
/// The engine's.
pub async fn open_direct<E: Backend>(engine: &E, path: &Path) -> Result<File> {
    let options = OpenOptions::new().read(true).write(true).create(true);
    let created = !path.exists();
    let file = match engine.open(path, &options.clone().direct(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::Unsupported => engine.open(path, &options)?,
        Err(e) => return Err(e),
    };
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            engine.sync_dir(dir).await?;
        }
    }
    Ok(file)
}
