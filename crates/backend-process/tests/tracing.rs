//! Output lines of a real child become tracing events with their fields. A file of its own: the
//! subscriber is the process's global default, which no other test may race with.

use std::sync::{Arc, Mutex};

use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec};
use pool_core::{Backend, FunctionSpec, InstanceId, PoolName, Scope};

/// Collects `target level field=value...` lines of every event.
#[derive(Default)]
struct Collect(Mutex<Vec<String>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Collect {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}", meta.target(), meta.level()));
        event.record(&mut fields);
        self.0.lock().expect("not poisoned").push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn output_lines_are_tracing_events_naming_function_instance_and_stream() {
    let collect = Arc::new(Collect::default());
    tracing::subscriber::set_global_default(collect.clone()).expect("the only subscriber");
    let scope = Scope::current(PoolName::new("tracing-test").expect("a valid name"));
    let state_dir = Some(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tracing"));
    let backend =
        ProcessBackend::new(ProcessBackendConfig { scope, state_dir }).expect("a backend");
    let fixture = env!("CARGO_BIN_EXE_smgr-fixture");

    let talker = FunctionSpec::new("talker", ProcessSpec::new(fixture)).expect("a valid name");
    let instance = backend.launch(&talker, InstanceId(4)).await.expect("launches");
    let pid = instance.details().pid();
    let stdout = |events: &[String]| {
        events.iter().any(|event| {
            event.starts_with("smgr::function INFO message=smgr-fixture: serving on")
                && event
                    .ends_with(&format!(" function=talker instance=4 pid={pid} stream=\"stdout\""))
        })
    };
    for _ in 0..200 {
        if stdout(&collect.0.lock().expect("not poisoned")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    backend.terminate(instance, std::time::Duration::from_secs(5)).await.expect("stops");
    let failing = ProcessSpec::new(fixture).args(["--fail-start", "no config"]);
    let failing = FunctionSpec::new("failing", failing).expect("a valid name");
    backend.launch(&failing, InstanceId(5)).await.expect_err("exits at once");

    let events = collect.0.lock().expect("not poisoned").clone();
    assert!(stdout(&events), "no stdout event in {events:#?}");
    assert!(
        events.iter().any(|event| event
            .starts_with("smgr::function INFO message=no config function=failing instance=5 pid=")
            && event.ends_with(" stream=\"stderr\"")),
        "no stderr event in {events:#?}"
    );
}
