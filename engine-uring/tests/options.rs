//! The io_uring options: SQPOLL, restricted mode, IOPOLL's up-front refusals, and registered
//! buffers, each checked against the ring the kernel actually built.

use engine_core::{
    block_on, AlignedBuf, Engine, EngineConfig, EngineExt, ErrorKind, OpenOptions, PageAllocator,
};
use engine_uring::UringEngine;

fn engine(adjust: impl FnOnce(&mut EngineConfig)) -> Option<UringEngine> {
    let mut config = EngineConfig::default();
    adjust(&mut config);
    match UringEngine::new(config) {
        Ok(engine) => Some(engine),
        Err(e) => {
            println!("skipped: io_uring unavailable here: {e}");
            None
        }
    }
}

fn round_trip(engine: &UringEngine, direct: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(direct);
    let file = engine.open(&dir.path().join("f"), &options).expect("open");
    let data = AlignedBuf::from_slice(&[5u8; 8192], 4096).expect("buf");
    block_on(async {
        let (w, _) = engine.write_all_at(&file, 4096, data).await;
        w.expect("write");
        engine.sync_data(&file).await.expect("sync");
        let (r, buf) = engine
            .read_exact_at(&file, 4096, AlignedBuf::zeroed(8192, 4096).expect("buf"))
            .await;
        r.expect("read");
        assert!(buf.iter().all(|&b| b == 5), "data read back");
    });
}

#[test]
fn sqpoll_rings_submit_without_enter() {
    let Some(engine) = engine(|c| c.sqpoll_idle_ms = Some(20)) else {
        return;
    };
    let notes = engine.capabilities().notes.join("; ");
    assert!(notes.contains("SQPOLL"), "{notes}");
    round_trip(&engine, false);
}

#[test]
fn restricted_rings_allow_io_on_registered_files() {
    let Some(engine) = engine(|c| c.restricted = true) else {
        return;
    };
    let notes = engine.capabilities().notes.join("; ");
    assert!(notes.contains("R_DISABLED"), "{notes}");
    round_trip(&engine, false);
    round_trip(&engine, true);
}

#[test]
fn iopoll_refuses_what_cannot_be_polled_up_front() {
    let Some(engine) = engine(|c| c.iopoll = true) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let buffered = OpenOptions::new().read(true).write(true).create(true);
    let error = engine
        .open(&path, &buffered)
        .expect_err("buffered files cannot be polled");
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.to_string().contains("O_DIRECT"), "{error}");
    match engine.open(&path, &buffered.clone().direct(true)) {
        Ok(file) => {
            // This device polls: syncs are still refused before submission.
            let error = block_on(engine.sync_all(&file)).expect_err("fsync cannot be polled");
            assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
        }
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
            assert!(
                error.to_string().contains("io_poll"),
                "names the sysfs attribute: {error}"
            );
        }
    }
}

#[test]
fn registered_pool_buffers_take_the_fixed_path() {
    let Some(engine) = engine(|c| c.register_buffers_bytes = 1 << 20) else {
        return;
    };
    let registered = engine
        .capabilities()
        .registered_buffers
        .clone()
        .unwrap_or_default();
    let Some(pool) = engine.pool() else {
        panic!("a pool was asked for: {registered}");
    };
    if !registered.starts_with("registered") {
        println!("skipped fixed-buffer check: {registered}");
        return;
    }
    assert!(registered.contains("1048576-byte pool"), "{registered}");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true);
    let file = engine.open(&dir.path().join("f"), &options).expect("open");
    let mut buf = pool.alloc(4096).expect("pool buffer");
    buf.fill(9);
    block_on(async {
        let (w, _) = engine.write_all_at(&file, 0, buf).await;
        w.expect("WRITE_FIXED");
        let (r, back) = engine
            .read_exact_at(&file, 0, pool.alloc(4096).expect("pool buffer"))
            .await;
        r.expect("READ_FIXED");
        assert!(back.iter().all(|&b| b == 9));
    });
    let without = engine_with_no_pool();
    if let Some(e) = without {
        assert!(e.pool().is_none());
        assert!(e
            .capabilities()
            .registered_buffers
            .as_deref()
            .unwrap_or("")
            .contains("ENGINE_REGISTER_BUFFERS=0"));
    }
}

fn engine_with_no_pool() -> Option<UringEngine> {
    engine(|c| c.register_buffers_bytes = 0)
}
