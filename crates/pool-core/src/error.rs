//! The one error type of pool-core.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `Result` with pool-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a pool operation, with the limits involved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The waiter queue was full, so the acquire failed at once instead of waiting.
    #[error(
        "the pool's waiter queue is full ({limit} waiting for a busy instance, all {max} instances busy or being created)"
    )]
    QueueFull {
        /// The configured `queue_limit`.
        limit: usize,
        /// The configured `max` instances.
        max: usize,
    },
    /// No instance became available within the acquire timeout.
    #[error(
        "no instance became available within {waited:?} (max {max} instances, concurrency {concurrency})"
    )]
    Timeout {
        /// How long the acquire waited.
        waited: Duration,
        /// The configured `max` instances.
        max: usize,
        /// The configured leases per instance.
        concurrency: usize,
    },
    /// Creating the instance this acquire was counting on failed; the manager's error is the
    /// source.
    #[error("creating an instance failed")]
    Create(#[source] ManagerError),
    /// Creating the instance this acquire was counting on took longer than `create_timeout`.
    #[error("creating an instance took longer than the create timeout of {timeout:?}")]
    CreateTimeout {
        /// The configured `create_timeout`.
        timeout: Duration,
    },
    /// The pool is shutting down (or was dropped) and takes no new acquires.
    #[error("the pool is shutting down and takes no new acquires")]
    ShuttingDown,
    /// A config value is out of range; the message names the field and the value.
    #[error("invalid pool config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The pool was created outside a Tokio runtime, which it needs for its background work.
    #[error("a pool must be created inside a Tokio runtime (it runs background tasks)")]
    NoRuntime,
}

/// A [`Manager`](crate::Manager) method that panicked. The pool counts the call as failed with
/// this error — a create's waiters get it as the source of [`Error::Create`], a health check
/// fails with its message — and carries on: the panic does not end the pool's work half done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the manager's `{method}` panicked: {message}")]
pub struct ManagerPanic {
    /// `create`, `check` or `destroy`.
    pub method: &'static str,
    /// The panic's message, when it had one.
    pub message: String,
}

/// An error returned by a [`Manager`](crate::Manager), shared by every waiter it reaches.
///
/// It displays as the manager's error and hands out that error as its
/// [`source`](StdError::source)'s origin through [`ManagerError::downcast_ref`].
#[derive(Clone)]
pub struct ManagerError(Arc<dyn StdError + Send + Sync + 'static>);

impl ManagerError {
    pub(crate) fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The manager's error as its concrete type, when it is an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }

    /// The manager's error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for ManagerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
