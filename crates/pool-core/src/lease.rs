//! [`Lease`]: an instance on loan from a pool.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::mailbox::Mailbox;
use crate::manager::Manager;
use crate::pool::Inner;
use crate::state::{Grant, Returned};
use crate::status::InstanceId;

/// An instance on loan from a [`Pool`](crate::Pool).
///
/// Derefs to the instance. Dropping the lease returns the instance to the pool;
/// [`mark_broken`](Lease::mark_broken) has it destroyed instead, and
/// [`detach`](Lease::detach) takes it out of the pool for good.
#[must_use = "dropping a lease returns the instance at once"]
pub struct Lease<M: Manager> {
    pool: Arc<Inner<M>>,
    /// `Some` until the lease is dropped or detached.
    instance: Option<Arc<M::Instance>>,
    slot: u32,
    id: InstanceId,
    exclusive: bool,
    broken: bool,
    record: Option<u32>,
    /// The mailbox the lease arrived in, when its acquire waited: given back for reuse.
    mailbox: Option<Arc<Mailbox<M::Instance>>>,
}

impl<M: Manager> Lease<M> {
    pub(crate) fn new(pool: Arc<Inner<M>>, grant: Grant<M::Instance>) -> Self {
        Self {
            pool,
            instance: Some(grant.instance),
            slot: grant.slot,
            id: grant.id,
            exclusive: grant.exclusive,
            broken: false,
            record: grant.record,
            mailbox: None,
        }
    }

    pub(crate) fn with_mailbox(mut self, mailbox: Option<Arc<Mailbox<M::Instance>>>) -> Self {
        self.mailbox = mailbox;
        self
    }

    /// The leased instance's id, as events name it.
    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// Has the instance destroyed instead of reused when this lease (and, with
    /// `concurrency` above 1, every other lease on it) is returned. No new lease is given on it
    /// meanwhile.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether [`mark_broken`](Lease::mark_broken) was called.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The instance, mutably: with `concurrency` 1 always, as the lease is its only holder.
    /// A shared lease (`concurrency` above 1) never gets it (`None`), even when it is the only
    /// one held: the pool keeps the instance to lease again.
    pub fn get_mut(&mut self) -> Option<&mut M::Instance> {
        self.instance.as_mut().and_then(Arc::get_mut)
    }

    /// Takes the instance out of the pool: it is no longer counted, managed or destroyed by
    /// the pool, which creates a replacement if its minimum needs one. Fails, giving the lease
    /// back, while another lease shares the instance.
    pub fn detach(mut self) -> Result<M::Instance, Self> {
        if !self.pool.detach(self.slot, self.record) {
            return Err(self);
        }
        let instance = self.instance.take().expect("a live lease holds its instance");
        // The pool dropped its own reference when it let go of the slot.
        Ok(Arc::into_inner(instance).expect("a detached instance has no other holder"))
    }
}

impl<M: Manager> Deref for Lease<M> {
    type Target = M::Instance;

    fn deref(&self) -> &M::Instance {
        self.instance.as_deref().expect("a live lease holds its instance")
    }
}

impl<M: Manager> Drop for Lease<M> {
    fn drop(&mut self) {
        let Some(instance) = self.instance.take() else { return };
        // A shared instance stays in its slot: drop this reference before returning, so that
        // the last lease back leaves the pool as the only holder.
        let returned = if self.exclusive {
            Some(instance)
        } else {
            drop(instance);
            None
        };
        self.pool.release(Returned {
            slot: self.slot,
            instance: returned,
            broken: self.broken,
            record: self.record,
            mailbox: self.mailbox.take(),
        });
    }
}

impl<M: Manager> fmt::Debug for Lease<M>
where
    M::Instance: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("instance", &self.instance)
            .field("broken", &self.broken)
            .finish()
    }
}
