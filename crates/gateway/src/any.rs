//! One pool type for functions of every backend: [`AnyManager`] is the manager of a function
//! on any [`Backend`] — the process and docker backends, or one a program embedding the
//! gateway brings — and [`AnyInstance`] its instance, with the backend's type erased.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pool_core::{
    Backend, BackendError, Endpoint, FunctionManager, Instance, InstanceId, InstanceRecord, Manager,
};

/// The manager of one function, on the backend it runs on.
#[derive(Debug)]
pub(crate) struct AnyManager(Box<dyn ErasedManager>);

impl AnyManager {
    /// Manages the function of `manager` on its backend.
    pub(crate) fn new<B: Backend>(manager: FunctionManager<B>) -> Self {
        Self(Box::new(manager))
    }

    /// The backend's name: `process`, `docker`, or what another backend calls itself.
    pub(crate) fn backend_kind(&self) -> &'static str {
        self.0.kind()
    }

    /// What the manager knows of its live instances.
    pub(crate) fn instances(&self) -> Vec<InstanceRecord> {
        self.0.instances()
    }
}

/// An instance of a function: what the gateway reads of every instance, and the backend's own
/// instance.
pub(crate) struct AnyInstance {
    id: InstanceId,
    endpoint: Endpoint,
    created_at: SystemTime,
    /// The backend's `Instance<B::Details>`.
    inner: Box<dyn Any + Send + Sync>,
}

impl AnyInstance {
    fn new<D: fmt::Debug + Send + Sync + 'static>(instance: Instance<D>) -> Self {
        Self {
            id: instance.id(),
            endpoint: instance.endpoint(),
            created_at: instance.created_at(),
            inner: Box::new(instance),
        }
    }

    /// Where it takes requests.
    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// When it became ready.
    pub(crate) fn created_at(&self) -> SystemTime {
        self.created_at
    }
}

impl fmt::Debug for AnyInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyInstance")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A [`FunctionManager`] with its backend's type erased.
#[async_trait]
trait ErasedManager: fmt::Debug + Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn instances(&self) -> Vec<InstanceRecord>;
    async fn create(&self, id: InstanceId) -> Result<AnyInstance, BackendError>;
    fn leased(&self, instance: &AnyInstance);
    async fn check(&self, instance: &AnyInstance) -> Result<(), BackendError>;
    async fn destroy(&self, instance: AnyInstance, grace: Duration);
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
impl<B: Backend> ErasedManager for FunctionManager<B> {
    fn kind(&self) -> &'static str {
        self.backend().kind()
    }

    fn instances(&self) -> Vec<InstanceRecord> {
        FunctionManager::instances(self)
    }

    async fn create(&self, id: InstanceId) -> Result<AnyInstance, BackendError> {
        Manager::create(self, id).await.map(AnyInstance::new)
    }

    fn leased(&self, instance: &AnyInstance) {
        if let Some(instance) = instance.inner.downcast_ref::<Instance<B::Details>>() {
            Manager::leased(self, instance);
        }
    }

    async fn check(&self, instance: &AnyInstance) -> Result<(), BackendError> {
        match instance.inner.downcast_ref::<Instance<B::Details>>() {
            Some(instance) => Manager::check(self, instance).await,
            None => Err(foreign()),
        }
    }

    async fn destroy(&self, instance: AnyInstance, grace: Duration) {
        let id = instance.id;
        match instance.inner.downcast::<Instance<B::Details>>() {
            Ok(instance) => Manager::destroy(self, *instance, grace).await,
            Err(_) => {
                tracing::error!(instance = %id, "an instance of another backend was not destroyed");
            }
        }
    }
}

#[async_trait]
impl Manager for AnyManager {
    type Instance = AnyInstance;
    type Error = BackendError;

    async fn create(&self, id: InstanceId) -> Result<AnyInstance, BackendError> {
        self.0.create(id).await
    }

    fn leased(&self, instance: &AnyInstance) {
        self.0.leased(instance);
    }

    async fn check(&self, instance: &AnyInstance) -> Result<(), BackendError> {
        self.0.check(instance).await
    }

    async fn destroy(&self, instance: AnyInstance, grace: Duration) {
        self.0.destroy(instance, grace).await;
    }
}

/// A backend, type-erased so that the gateway can reap every one it runs on the same way:
/// built-in or brought by the program.
#[async_trait]
pub(crate) trait Reapable: fmt::Debug + Send + Sync + 'static {
    /// The backend, as a pointer that tells two functions on one backend apart from two
    /// backends.
    fn identity(&self) -> *const ();
    fn kind(&self) -> &'static str;
    async fn reap_orphans(&self) -> Result<pool_core::Reaped, BackendError>;
}

#[async_trait]
impl<B: Backend> Reapable for Arc<B> {
    fn identity(&self) -> *const () {
        Arc::as_ptr(self).cast()
    }

    fn kind(&self) -> &'static str {
        Backend::kind(self.as_ref())
    }

    async fn reap_orphans(&self) -> Result<pool_core::Reaped, BackendError> {
        Backend::reap_orphans(self.as_ref()).await
    }
}
