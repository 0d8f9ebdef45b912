//! [`Manager`]: how a pool creates, checks and destroys its instances.

use std::any::Any;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::error::Elapsed;

use crate::error::{ManagerError, ManagerPanic};
use crate::status::InstanceId;

/// Creates, checks and destroys the instances of one [`Pool`](crate::Pool).
///
/// The pool decides *when*; the manager knows *how*. Every method may take as long as it needs:
/// the pool bounds `create` with `create_timeout` and `check` with `health_check_timeout`, and
/// runs all three off the acquire path. A method that panics counts as failed (see
/// [`ManagerPanic`]); `leased` runs on the acquiring task, so its panic reaches that task, and
/// the lease goes back to the pool as it unwinds.
#[async_trait]
pub trait Manager: Send + Sync + 'static {
    /// What the pool hands out: a connection, a process, a container...
    type Instance: Send + Sync + 'static;
    /// What `create` and `check` fail with; it reaches the waiters as the source of
    /// [`Error::Create`](crate::Error::Create).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates a new instance, ready to be leased. `id` is the id the pool will know it by, in
    /// its events and on its leases; a manager that labels what it creates can use it.
    async fn create(&self, id: InstanceId) -> Result<Self::Instance, Self::Error>;

    /// Called as an acquire receives a lease on `instance`, on the acquiring task and outside
    /// the pool's lock; a manager that keeps usage statistics on its instances updates them
    /// here. The default does nothing.
    fn leased(&self, instance: &Self::Instance) {
        let _ = instance;
    }

    /// Checks that an idle instance is still alive and fit for reuse; an error destroys it.
    /// Called in the background every `health_check_interval`, never on the acquire path.
    /// The default accepts every instance.
    async fn check(&self, instance: &Self::Instance) -> Result<(), Self::Error> {
        let _ = instance;
        Ok(())
    }

    /// Tears an instance down: ask it to stop, give it `grace` to do so, then force it.
    /// The default drops it.
    ///
    /// The pool does not cut a destroy short — cancelling it could leave the instance behind —
    /// and [`Pool::shutdown`](crate::Pool::shutdown) returns only once every destroy has: a
    /// destroy must end on its own, bounding whatever it waits for after `grace`.
    async fn destroy(&self, instance: Self::Instance, grace: Duration) {
        let _ = grace;
        drop(instance);
    }
}

/// Runs one call of `method` of a manager; a panic in it comes back as a [`ManagerPanic`]
/// instead of ending the pool's task half way, which would leave a create counted forever or a
/// destroy that shutdown waits for in vain. The call is dropped as soon as it ends, and a
/// panic in its drop is caught too.
pub(crate) async fn guarded<T>(
    method: &'static str,
    call: impl Future<Output = T>,
) -> Result<T, ManagerPanic> {
    let mut call = pin!(Some(call));
    poll_fn(|cx| {
        let running = call.as_mut().as_pin_mut().expect("polled again after it ended");
        let outcome = match catch_unwind(AssertUnwindSafe(|| running.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(value)) => Ok(value),
            Err(payload) => Err(ManagerPanic { method, message: message(&*payload) }),
        };
        // Ended, or never polled again once it has panicked: it goes now, and a panic as it
        // goes changes nothing of the outcome.
        let _ = catch_unwind(AssertUnwindSafe(|| call.set(None)));
        Poll::Ready(outcome)
    })
    .await
}

/// [`guarded`] for a method that can fail, cut short after `limit`: its error and its panic
/// both come back as the [`ManagerError`] the pool reports, and running out of time as
/// `Elapsed`, even when the call panics as the limit drops it.
pub(crate) async fn guarded_within<T, E>(
    method: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<Result<T, ManagerError>, Elapsed>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match guarded(method, tokio::time::timeout(limit, call)).await {
        Ok(Ok(Ok(value))) => Ok(Ok(value)),
        Ok(Ok(Err(error))) => Ok(Err(ManagerError::new(error))),
        Ok(Err(elapsed)) => Err(elapsed),
        Err(panic) => Ok(Err(ManagerError::new(panic))),
    }
}

/// The message of a panic's payload: `panic!` makes a `&str` or a `String`.
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
