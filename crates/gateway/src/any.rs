//! One pool type for functions of every backend: [`AnyManager`] is the manager of a process
//! or a docker function, and [`AnyInstance`] its instance.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backend_docker::{ContainerDetails, DockerBackend};
use backend_process::{ProcessBackend, ProcessDetails};
use pool_core::{
    Backend, BackendError, Endpoint, FunctionManager, Instance, InstanceId, InstanceRecord, Manager,
};

/// The manager of one function, on the backend it runs on.
#[derive(Debug)]
pub(crate) enum AnyManager {
    /// A process function.
    Process(FunctionManager<ProcessBackend>),
    /// A docker function.
    Docker(FunctionManager<DockerBackend>),
}

/// An instance of a function, on the backend it runs on.
#[derive(Debug)]
pub(crate) enum AnyInstance {
    /// A child process.
    Process(Instance<ProcessDetails>),
    /// A container.
    Docker(Instance<ContainerDetails>),
}

impl AnyInstance {
    /// Its id.
    pub(crate) fn id(&self) -> InstanceId {
        match self {
            Self::Process(instance) => instance.id(),
            Self::Docker(instance) => instance.id(),
        }
    }

    /// Where it takes requests.
    pub(crate) fn endpoint(&self) -> Endpoint {
        match self {
            Self::Process(instance) => instance.endpoint(),
            Self::Docker(instance) => instance.endpoint(),
        }
    }

    /// When it became ready.
    pub(crate) fn created_at(&self) -> SystemTime {
        match self {
            Self::Process(instance) => instance.created_at(),
            Self::Docker(instance) => instance.created_at(),
        }
    }
}

impl AnyManager {
    /// The backend's name: `process` or `docker`.
    pub(crate) fn backend_kind(&self) -> &'static str {
        match self {
            Self::Process(manager) => manager.backend().kind(),
            Self::Docker(manager) => manager.backend().kind(),
        }
    }

    /// What the manager knows of its live instances.
    pub(crate) fn instances(&self) -> Vec<InstanceRecord> {
        match self {
            Self::Process(manager) => manager.instances(),
            Self::Docker(manager) => manager.instances(),
        }
    }
}

/// The error for an instance handed to the manager of another backend, which the pool never
/// does: each pool has one manager, and it made every instance the pool holds.
fn foreign() -> BackendError {
    BackendError::Operation {
        operation: "checking an instance".to_owned(),
        reason: "the instance belongs to another backend".to_owned(),
        source: None,
    }
}

#[async_trait]
impl Manager for AnyManager {
    type Instance = AnyInstance;
    type Error = BackendError;

    async fn create(&self, id: InstanceId) -> Result<AnyInstance, BackendError> {
        match self {
            Self::Process(manager) => manager.create(id).await.map(AnyInstance::Process),
            Self::Docker(manager) => manager.create(id).await.map(AnyInstance::Docker),
        }
    }

    fn leased(&self, instance: &AnyInstance) {
        match (self, instance) {
            (Self::Process(manager), AnyInstance::Process(instance)) => manager.leased(instance),
            (Self::Docker(manager), AnyInstance::Docker(instance)) => manager.leased(instance),
            _ => {}
        }
    }

    async fn check(&self, instance: &AnyInstance) -> Result<(), BackendError> {
        match (self, instance) {
            (Self::Process(manager), AnyInstance::Process(instance)) => {
                manager.check(instance).await
            }
            (Self::Docker(manager), AnyInstance::Docker(instance)) => manager.check(instance).await,
            _ => Err(foreign()),
        }
    }

    async fn destroy(&self, instance: AnyInstance, grace: Duration) {
        match (self, instance) {
            (Self::Process(manager), AnyInstance::Process(instance)) => {
                manager.destroy(instance, grace).await;
            }
            (Self::Docker(manager), AnyInstance::Docker(instance)) => {
                manager.destroy(instance, grace).await;
            }
            (_, instance) => {
                tracing::error!(instance = %instance.id(), "an instance of another backend was not destroyed");
            }
        }
    }
}
