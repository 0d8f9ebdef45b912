//! [`Mailbox`]: where a waiting acquire receives its outcome. Mailboxes are reused, so waiting
//! allocates nothing once the pool has seen its peak number of waiters.

use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;

use crate::error::Result;
use crate::state::Grant;

/// One waiter's outcome — a grant, or the error that ended its wait — and its waker.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    slot: Mutex<Slot<T>>,
}

#[derive(Debug)]
struct Slot<T> {
    outcome: Option<Result<Grant<T>>>,
    waker: Option<Waker>,
    /// The acquire gave up: a late outcome goes back to the pool.
    closed: bool,
}

impl<T> Mailbox<T> {
    fn new(waker: Waker) -> Self {
        Self { slot: Mutex::new(Slot { outcome: None, waker: Some(waker), closed: false }) }
    }

    /// Makes a mailbox ready for a new wait.
    #[inline]
    fn reset(slot: &mut Slot<T>, waker: Waker) {
        slot.outcome = None;
        slot.waker = Some(waker);
        slot.closed = false;
    }

    /// Hands the outcome to the waiting acquire and wakes it; gives the grant back when the
    /// acquire is gone.
    #[inline]
    pub(crate) fn deliver(&self, outcome: Result<Grant<T>>) -> Option<Grant<T>> {
        let waker = {
            let mut slot = self.slot.lock();
            if slot.closed {
                return outcome.ok();
            }
            slot.outcome = Some(outcome);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        None
    }

    /// The outcome once it is there; until then remembers `waker`.
    #[inline]
    pub(crate) fn poll(&self, waker: &Waker) -> Option<Result<Grant<T>>> {
        let mut slot = self.slot.lock();
        if let Some(outcome) = slot.outcome.take() {
            return Some(outcome);
        }
        match &slot.waker {
            Some(known) if known.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        None
    }

    /// The acquire gives up: later deliveries are refused; returns one that came before.
    pub(crate) fn close(&self) -> Option<Result<Grant<T>>> {
        let mut slot = self.slot.lock();
        slot.closed = true;
        slot.waker = None;
        slot.outcome.take()
    }
}

/// Mailboxes free to lend. A lease from a waited acquire carries its mailbox and gives it back
/// when it is returned (under the pool's lock, which the return takes anyway); a mailbox whose
/// acquire failed or was dropped is simply freed.
#[derive(Debug)]
pub(crate) struct Mailboxes<T> {
    /// The last one given back, kept next to the pool's other hot fields.
    spare: Option<Arc<Mailbox<T>>>,
    free: Vec<Arc<Mailbox<T>>>,
}

impl<T> Default for Mailboxes<T> {
    fn default() -> Self {
        Self { spare: None, free: Vec::new() }
    }
}

impl<T> Mailboxes<T> {
    /// Lends a mailbox for a new wait, waking `waker` when its outcome arrives.
    #[inline]
    pub(crate) fn lend(&mut self, waker: Waker) -> Arc<Mailbox<T>> {
        match self.spare.take().or_else(|| self.free.pop()) {
            Some(mut mailbox) => {
                // Usually nobody else holds it any more and its lock can be skipped; a delivery
                // that has just finished may still hold a reference for a moment.
                match Arc::get_mut(&mut mailbox) {
                    Some(unique) => Mailbox::reset(unique.slot.get_mut(), waker),
                    None => Mailbox::reset(&mut mailbox.slot.lock(), waker),
                }
                mailbox
            }
            None => Arc::new(Mailbox::new(waker)),
        }
    }

    /// Takes a mailbox back, keeping at most `keep` of them.
    #[inline]
    pub(crate) fn give_back(&mut self, mailbox: Arc<Mailbox<T>>, keep: usize) {
        if self.spare.is_none() && keep > 0 {
            self.spare = Some(mailbox);
        } else if self.free.len() + 1 < keep {
            self.free.push(mailbox);
        }
    }
}
