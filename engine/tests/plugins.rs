//! Third-party plugins register and are chosen exactly like built-in backends.

use std::sync::Arc;

use engine::registry::{Diagnosis, Outcome, Plugin, Probe};
use engine::{
    block_on, AlignedBuf, DynBackend, Engine, EngineConfig, ErrorKind, OpenOptions, Settings,
};

/// A plugin that is never available, with a diagnosis.
struct Never;

impl Plugin for Never {
    fn name(&self) -> &'static str {
        "never"
    }
    fn probe(&self, _: &EngineConfig) -> Probe {
        Probe::Unavailable(Diagnosis {
            errno: Some(libc::EPERM),
            cause: "blocked by the test".into(),
            remedy: "use another backend".into(),
        })
    }
    fn create(&self, _: &EngineConfig) -> engine::Result<Box<dyn DynBackend>> {
        panic!("create must not be called when the probe says unavailable")
    }
}

/// A plugin that wraps the sync backend under another name.
struct Wrapped;

impl Plugin for Wrapped {
    fn name(&self) -> &'static str {
        "wrapped"
    }
    fn probe(&self, _: &EngineConfig) -> Probe {
        Probe::Available("the sync backend in disguise".into())
    }
    fn create(&self, config: &EngineConfig) -> engine::Result<Box<dyn DynBackend>> {
        Ok(Box::new(engine::sync::SyncEngine::new(config.clone())?))
    }
}

#[test]
fn plugins_are_listed_chosen_and_explained() {
    register_once();
    let names = Engine::backend_names();
    assert!(
        names.contains(&"never") && names.contains(&"wrapped"),
        "{names:?}"
    );

    let vars = [("ENGINE_BACKEND", "never,wrapped")];
    let settings = Settings::parse(vars, &names).expect("valid list");
    let engine = Engine::from_settings(settings).expect("wrapped runs");
    assert_eq!(engine.report().chosen.as_deref(), Some("wrapped"));
    let first = &engine.report().attempts[0];
    assert_eq!(first.backend, "never");
    assert!(matches!(&first.outcome, Outcome::Unavailable(d) if d.errno == Some(1)));
    assert!(engine
        .report()
        .to_string()
        .contains("remedy: use another backend"));

    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new().read(true).write(true).create(true);
    let file = engine.open(&dir.path().join("p"), &options).expect("open");
    block_on(async {
        let (w, _) = engine
            .write_all_at(&file, 0, AlignedBuf::from_slice(b"plug", 1).expect("buf"))
            .await;
        w.expect("write through plugin");
        let (r, buf) = engine
            .read_exact_at(&file, 0, AlignedBuf::zeroed(4, 1).expect("buf"))
            .await;
        r.expect("read through plugin");
        assert_eq!(buf.as_slice(), b"plug");
    });

    let only_never = Settings::parse([("ENGINE_BACKEND", "never")], &names).expect("valid");
    let error = Engine::from_settings(only_never).expect_err("never is unavailable");
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.to_string().contains("blocked by the test"), "{error}");
}

fn register_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        engine::registry::register(Arc::new(Never)).expect("register never");
        engine::registry::register(Arc::new(Wrapped)).expect("register wrapped");
    });
    let again = engine::registry::register(Arc::new(Never)).expect_err("duplicate name");
    assert_eq!(again.kind(), ErrorKind::InvalidInput);
}

#[test]
fn futures_complete_under_tokio() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let engine = Arc::new(Engine::with_backend("sync", EngineConfig::default()).expect("sync"));
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OpenOptions::new().read(true).write(true).create(true);
    let file = engine.open(&dir.path().join("t"), &options).expect("open");
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let (engine, file) = (Arc::clone(&engine), file.clone());
            tasks.push(tokio::spawn(async move {
                let data = AlignedBuf::from_slice(&i.to_le_bytes(), 8).expect("buf");
                let (w, _) = engine.write_all_at(&file, i * 8, data).await;
                w.expect("write");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let (r, buf) = engine
            .read_exact_at(&file, 0, AlignedBuf::zeroed(256, 8).expect("buf"))
            .await;
        r.expect("read");
        for i in 0..32u64 {
            let got = u64::from_le_bytes(buf[i as usize * 8..][..8].try_into().expect("8 bytes"));
            assert_eq!(got, i, "slot {i}");
        }
    });
}
