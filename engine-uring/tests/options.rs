//! The io_uring options: SQPOLL, restricted mode, IOPOLL's up-front refusals, and registered
//! buffers, each checked against the ring the kernel actually built. These tests need
//! io_uring; on a machine that refuses it they fail with the kernel's reason.

use engine_core::{
    block_on, AlignedBuf, Backend, BackendExt, EngineConfig, ErrorKind, OpenOptions, PageAllocator,
    Queue, Request,
};
use engine_uring::UringEngine;

fn engine(adjust: impl FnOnce(&mut EngineConfig)) -> UringEngine {
    let mut config = EngineConfig::default();
    adjust(&mut config);
    match UringEngine::new(config) {
        Ok(engine) => engine,
        Err(e) => panic!("these tests need io_uring, which this machine refuses: {e}"),
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
fn sqpoll_rings_keep_the_contract() {
    let engine = engine(|c| c.sqpoll_idle_ms = Some(20));
    assert!(
        engine.capabilities().sqpoll,
        "SQPOLL asked for and reported"
    );
    let notes = engine.capabilities().notes.join("; ");
    assert!(notes.contains("SQPOLL"), "the ring flags name it: {notes}");
    round_trip(&engine, false);
}

#[test]
fn restricted_rings_allow_io_on_registered_files() {
    let engine = engine(|c| c.restricted = true);
    assert!(engine.capabilities().restricted);
    let notes = engine.capabilities().notes.join("; ");
    assert!(notes.contains("R_DISABLED"), "{notes}");
    round_trip(&engine, false);
    round_trip(&engine, true);
}

#[test]
fn iopoll_refuses_what_cannot_be_polled_up_front() {
    let engine = engine(|c| c.iopoll = true);
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
    let engine = engine(|c| c.register_buffers_bytes = 1 << 20);
    let notes = engine.capabilities().notes.join("; ");
    let pool = engine.pool().expect("a pool was asked for");
    assert!(
        engine.capabilities().registered_buffers,
        "registration refused here: {notes}"
    );
    assert!(notes.contains("1048576-byte page pool"), "{notes}");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .direct(true);
    let file = engine.open(&dir.path().join("f"), &options).expect("open");
    let mut queue = engine.queue().expect("queue");
    let mut out = Vec::new();
    let mut pooled = pool.alloc(4096).expect("pool buffer");
    pooled.fill(9);
    queue
        .push(Request::write_all(&file, 0, pooled, 1))
        .expect("room");
    queue.wait(1, &mut out).expect("WRITE_FIXED");
    assert_eq!(
        queue.kernel().fixed_submissions(),
        1,
        "the pooled write used WRITE_FIXED"
    );
    let plain = AlignedBuf::zeroed(4096, 4096).expect("buffer");
    queue
        .push(Request::read_exact(&file, 0, plain, 2))
        .expect("room");
    queue.wait(1, &mut out).expect("READ");
    assert_eq!(
        queue.kernel().fixed_submissions(),
        1,
        "a plain buffer used plain READ"
    );
    let pooled = pool.alloc(4096).expect("pool buffer");
    queue
        .push(Request::read_exact(&file, 0, pooled, 3))
        .expect("room");
    queue.wait(1, &mut out).expect("READ_FIXED");
    assert_eq!(
        queue.kernel().fixed_submissions(),
        2,
        "the pooled read used READ_FIXED"
    );
    for completion in &out {
        assert!(completion.result.is_ok(), "{:?}", completion.result);
        let buf = completion.buf.as_ref().expect("buffer");
        assert!(
            buf.iter().all(|&b| b == 9),
            "request {}",
            completion.user_data
        );
    }

    let without = engine_without_pool();
    assert!(without.pool().is_none());
    assert!(!without.capabilities().registered_buffers);
    let notes = without.capabilities().notes.join("; ");
    assert!(notes.contains("ENGINE_REGISTER_BUFFERS=0"), "{notes}");
}

fn engine_without_pool() -> UringEngine {
    engine(|c| c.register_buffers_bytes = 0)
}
