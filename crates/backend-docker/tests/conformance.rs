//! The backend conformance suite on the docker backend, against a real Docker Engine, with
//! the fixture function in an image built `FROM scratch`. Without an engine the tests skip
//! loudly, unless `SMGR_REQUIRE_DOCKER=1` (CI): then they fail.

use std::path::Path;
use std::sync::OnceLock;

use async_trait::async_trait;
use backend_docker::{DockerBackend, DockerBackendConfig, DockerSpec, PullPolicy, testkit};
use pool_core::testkit::{Behaviour, Target};
use pool_core::{BackendError, FunctionSpec, Scope};

/// Runs `future` to completion from synchronous code inside the test's runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// The docker backend, with the fixture image built once.
struct Containers {
    image: OnceLock<String>,
}

impl Containers {
    fn new() -> Self {
        Self { image: OnceLock::new() }
    }

    fn image(&self) -> &str {
        self.image.get_or_init(|| {
            block_on(async {
                let backend = connect(Scope::current(pool_core::PoolName::new("image").unwrap()))
                    .await
                    .expect("the engine answers");
                testkit::fixture_image(backend.docker(), Path::new(env!("CARGO_TARGET_TMPDIR")))
                    .await
                    .expect("the fixture image builds")
            })
        })
    }
}

async fn connect(scope: Scope) -> Result<DockerBackend, BackendError> {
    DockerBackend::connect(DockerBackendConfig::new(scope)).await
}

#[async_trait]
impl Target for Containers {
    type Backend = DockerBackend;

    fn backend(&self, scope: Scope) -> Result<DockerBackend, BackendError> {
        block_on(connect(scope))
    }

    fn function(&self, name: &str, behaviour: &Behaviour) -> FunctionSpec<DockerSpec> {
        let mut command = vec!["--any-address".to_owned()];
        if behaviour.ignore_sigterm {
            command.push("--ignore-sigterm".to_owned());
        }
        if behaviour.never_ready {
            command.push("--never-ready".to_owned());
        }
        if let Some(count) = behaviour.crash_after {
            command.extend(["--crash-after".to_owned(), count.to_string()]);
        }
        let mut spec = DockerSpec::new(self.image()).command(command).pull(PullPolicy::Never);
        if let Some(timeout) = behaviour.startup_timeout {
            spec.startup_timeout = timeout;
        }
        FunctionSpec::new(name, spec).expect("scenario names are valid")
    }

    fn bad_function(&self, name: &str) -> FunctionSpec<DockerSpec> {
        let spec = DockerSpec::new("not an image reference").pull(PullPolicy::Never);
        FunctionSpec::new(name, spec).expect("scenario names are valid")
    }

    async fn leftovers(&self, scope: &Scope) -> Vec<String> {
        let backend = connect(scope.clone()).await.expect("the engine answers");
        backend
            .containers_of(&scope.pool, Some(&scope.owner))
            .await
            .expect("listing works")
            .into_iter()
            .map(|container| format!("container {} ({})", container.name, container.state))
            .collect()
    }
}

pool_core::conformance_suite!(skip_if = testkit::skip_without_engine; Containers::new());
