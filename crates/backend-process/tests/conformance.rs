//! The backend conformance suite on the process backend, with `smgr-fixture` as the function.

use std::path::PathBuf;

use async_trait::async_trait;
use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec, processes_of};
use pool_core::testkit::{Behaviour, Target};
use pool_core::{BackendError, FunctionSpec, Scope};

/// The process backend, keeping its records in the test's own state directory.
struct Processes {
    state_dir: PathBuf,
}

impl Processes {
    fn new() -> Self {
        let state_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance-state");
        Self { state_dir }
    }
}

#[async_trait]
impl Target for Processes {
    type Backend = ProcessBackend;

    fn backend(&self, scope: Scope) -> Result<ProcessBackend, BackendError> {
        ProcessBackend::new(ProcessBackendConfig { scope, state_dir: Some(self.state_dir.clone()) })
    }

    fn function(&self, name: &str, behaviour: &Behaviour) -> FunctionSpec<ProcessSpec> {
        let mut args = Vec::new();
        if behaviour.ignore_sigterm {
            args.push("--ignore-sigterm".to_owned());
        }
        if behaviour.never_ready {
            args.push("--never-ready".to_owned());
        }
        if let Some(count) = behaviour.crash_after {
            args.extend(["--crash-after".to_owned(), count.to_string()]);
        }
        let mut spec = ProcessSpec::new(env!("CARGO_BIN_EXE_smgr-fixture")).args(args);
        if let Some(timeout) = behaviour.startup_timeout {
            spec.startup_timeout = timeout;
        }
        FunctionSpec::new(name, spec).expect("scenario names are valid")
    }

    fn bad_function(&self, name: &str) -> FunctionSpec<ProcessSpec> {
        let spec = ProcessSpec::new("/nonexistent/smgr-no-such-program");
        FunctionSpec::new(name, spec).expect("scenario names are valid")
    }

    async fn leftovers(&self, scope: &Scope) -> Vec<String> {
        processes_of(&scope.pool, &scope.owner, None)
            .into_iter()
            .map(|pid| {
                let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let command = String::from_utf8_lossy(&command).replace('\0', " ");
                format!("pid {pid}: {}", command.trim())
            })
            .collect()
    }
}

pool_core::conformance_suite!(Processes::new());

#[test]
fn the_fixture_is_built() {
    let fixture = PathBuf::from(env!("CARGO_BIN_EXE_smgr-fixture"));
    assert!(fixture.is_file(), "{}", fixture.display());
}
