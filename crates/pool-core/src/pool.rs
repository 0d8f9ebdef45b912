//! [`Pool`]: the async side of the engine — acquires, background work, shutdown.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{PoolConfig, validate_size};
use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::mailbox::Mailbox;
use crate::manager::{Manager, guarded, guarded_within};
use crate::state::{Delivery, Effects, Grant, Priority, RareEffects, Returned, State, WaiterId};
use crate::status::{InstanceId, InstanceStatus, PoolEvent, PoolStatus};

/// Events kept for a subscriber that falls behind; older ones are dropped for it (it then
/// receives `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 1024;

/// A pool of instances made by a [`Manager`].
///
/// Cheap to clone: clones share one pool. When the last clone is dropped, the background task
/// stops, idle instances are destroyed in the background and leased ones when their leases
/// return; call [`Pool::shutdown`] instead to wait for all of that.
pub struct Pool<M: Manager> {
    handle: Arc<Handle<M>>,
}

/// Owns the background task; dropped with the last `Pool` clone.
struct Handle<M: Manager> {
    inner: Arc<Inner<M>>,
    maintenance: JoinHandle<()>,
}

impl<M: Manager> Drop for Handle<M> {
    fn drop(&mut self) {
        self.maintenance.abort();
        let mut effects = Effects::default();
        self.inner.lock().close(&mut effects);
        self.inner.apply(effects);
    }
}

/// The shared core: leases, create and destroy tasks hold it too.
///
/// `repr(C)` keeps the lock and the front of the state (see [`State`]) together, right after
/// the reference counts that every lease changes, and `waiters_present` away from them.
#[repr(C)]
pub(crate) struct Inner<M: Manager> {
    state: Mutex<State<M::Instance>>,
    pub(crate) manager: M,
    events: broadcast::Sender<PoolEvent>,
    /// Wakes the maintenance task when a deadline may have moved closer.
    wake: Notify,
    /// Signals a returned lease, a finished create or destroy, for `shutdown`.
    changed: Notify,
    /// Whether acquires read the clock (for `max_lifetime` or leak detection).
    clock_on_acquire: bool,
    /// Whether releases read the clock (for `idle_timeout` or `max_lifetime`).
    clock_on_release: bool,
    /// Whether acquires wait, as the last unlock left it (see [`StateGuard`]). While some do,
    /// acquires (which will queue) and releases (which will serve one) read the clock before
    /// taking the lock. It sits among fields that do not change, and changes only when the
    /// queue empties or stops being empty, so that reading it before locking finds it in the
    /// reader's cache instead of taking a line from the other worker.
    waiters_present: AtomicBool,
    /// The config's fixed timings, readable without the lock.
    timings: Timings,
    /// The id of the next instance to create; ids are handed out as creates start.
    next_instance: AtomicU64,
    runtime: runtime::Handle,
}

/// The parts of the config that never change, copied out of the lock.
#[derive(Debug, Clone, Copy)]
struct Timings {
    acquire_timeout: Option<Duration>,
    create_timeout: Duration,
    health_check_timeout: Duration,
    destroy_grace: Duration,
}

/// What [`Pool::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Acquires that were waiting and got [`Error::ShuttingDown`].
    pub waiters_rejected: usize,
    /// Leases held when the shutdown began.
    pub leases_outstanding: usize,
    /// Of those, how many were returned before the deadline.
    pub leases_returned: usize,
    /// Leases still held at the deadline: their instances are destroyed when they return.
    pub leases_abandoned: usize,
    /// Instances destroyed during the shutdown.
    pub destroyed: u64,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl<M: Manager> Pool<M> {
    /// Starts a pool: validates `config`, then creates `min` instances in the background.
    ///
    /// Must be called inside a Tokio runtime, which runs the pool's background work.
    pub fn new(manager: M, config: PoolConfig) -> Result<Self> {
        config.validate()?;
        let runtime = runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let clock_on_acquire = config.max_lifetime.is_some() || config.leak_threshold.is_some();
        let clock_on_release = config.max_lifetime.is_some() || config.idle_timeout.is_some();
        let timings = Timings {
            acquire_timeout: config.acquire_timeout,
            create_timeout: config.create_timeout,
            health_check_timeout: config.health_check_timeout,
            destroy_grace: config.destroy_grace,
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let state = State::new(config, Instant::now());
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            manager,
            events,
            wake: Notify::new(),
            changed: Notify::new(),
            clock_on_acquire,
            clock_on_release,
            waiters_present: AtomicBool::new(false),
            timings,
            next_instance: AtomicU64::new(0),
            runtime,
        });
        let maintenance = inner.runtime.spawn(maintain(inner.clone()));
        Ok(Self { handle: Arc::new(Handle { inner, maintenance }) })
    }

    fn inner(&self) -> &Arc<Inner<M>> {
        &self.handle.inner
    }

    /// The manager that makes this pool's instances.
    pub fn manager(&self) -> &M {
        &self.inner().manager
    }

    /// Leases an instance at [`Priority::Normal`], waiting at most `acquire_timeout`, or for as
    /// long as it takes when that is `None`.
    pub fn acquire(&self) -> Acquire<'_, M> {
        let timeout = self.inner().timings.acquire_timeout;
        Acquire { inner: self.inner(), stage: Stage::Start { priority: Priority::Normal, timeout } }
    }

    /// Leases an instance, waiting at most `timeout` behind the waiters of equal or higher
    /// priority that came first.
    ///
    /// Fails at once with [`Error::QueueFull`] when the queue is full and with
    /// [`Error::ShuttingDown`] once the pool is closing; with [`Error::Create`] when the create
    /// it was counting on fails, and at once with the last create's error while creates fail
    /// and the pool backs off with no instance to offer; with [`Error::Timeout`] when `timeout`
    /// passes. A `timeout` too long to add to the present moment, such as [`Duration::MAX`],
    /// waits for as long as it takes.
    pub fn acquire_with(&self, priority: Priority, timeout: Duration) -> Acquire<'_, M> {
        Acquire { inner: self.inner(), stage: Stage::Start { priority, timeout: Some(timeout) } }
    }

    /// A snapshot of sizes, counters and wait times.
    pub fn status(&self) -> PoolStatus {
        self.inner().lock().status()
    }

    /// Every live instance: its id, state, leases, uses and age, oldest first.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        self.inner().lock().instances(Instant::now())
    }

    /// The pool's config, with `min` and `max` as last resized.
    pub fn config(&self) -> PoolConfig {
        self.inner().lock().config.clone()
    }

    /// Events from now on. A subscriber that falls more than 1024 events behind loses the
    /// oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.inner().events.subscribe()
    }

    /// Changes the limits: growing creates what waiters or the new minimum need; shrinking
    /// destroys idle instances first and busy ones when their leases return.
    pub fn resize(&self, min: usize, max: usize) -> Result<()> {
        validate_size(min, max)?;
        let inner = self.inner();
        let mut effects = Effects::default();
        inner.lock().resize(min, max, Instant::now(), &mut effects);
        inner.apply(effects);
        Ok(())
    }

    /// Shuts the pool down: refuses new acquires and fails waiting ones, waits up to `deadline`
    /// for outstanding leases, and destroys every instance concurrently, each with the
    /// configured grace period; it returns when every destroy has returned (see
    /// [`Manager::destroy`]). Leases still held at the deadline are counted as abandoned and
    /// their instances destroyed when they return. A `deadline` too long to add to the present
    /// moment waits for every lease. Calling it again waits again.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = self.inner();
        let started = Instant::now();
        let mut effects = Effects::default();
        let (closing, destroyed_before) = {
            let mut state = inner.lock();
            let destroyed_before = state.counters.destroyed;
            (state.close(&mut effects), destroyed_before)
        };
        inner.apply(effects);

        let leases_returned_in_time =
            inner.wait_until(|state| state.leased == 0, started.checked_add(deadline)).await;
        let leases_abandoned = if leases_returned_in_time { 0 } else { inner.lock().leased };
        inner.wait_until(State::drained, None).await;

        let destroyed = inner.lock().counters.destroyed - destroyed_before;
        ShutdownReport {
            waiters_rejected: closing.waiters_rejected,
            leases_outstanding: closing.leases_outstanding,
            leases_returned: closing.leases_outstanding.saturating_sub(leases_abandoned),
            leases_abandoned,
            destroyed,
            elapsed: started.elapsed(),
        }
    }
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone() }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        f.debug_struct("Pool")
            .field("size", &status.size)
            .field("leased", &status.leased)
            .field("waiting", &status.waiting)
            .field("closed", &status.closed)
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Inner<M> {
    /// Carries out what the state asked for once its lock was released.
    #[inline]
    pub(crate) fn apply(self: &Arc<Self>, effects: Effects<M::Instance>) {
        let Effects { delivery, rare } = effects;
        // Outcomes go out after the lock is released; a grant whose acquire was dropped
        // meanwhile comes back.
        if let Some(delivery) = delivery {
            self.deliver(delivery);
        }
        if let Some(rare) = rare {
            self.apply_rare(*rare);
        }
    }

    #[inline]
    fn deliver(self: &Arc<Self>, (mailbox, outcome): Delivery<M::Instance>) {
        if let Some(grant) = mailbox.deliver(outcome) {
            drop(Lease::new(self.clone(), grant));
        }
    }

    #[cold]
    fn apply_rare(self: &Arc<Self>, rare: RareEffects<M::Instance>) {
        for _ in 0..rare.creates {
            self.runtime.spawn(self.clone().create_one());
        }
        for (id, instance, reason) in rare.destroy {
            let inner = self.clone();
            self.runtime.spawn(async move {
                match Arc::try_unwrap(instance) {
                    Ok(instance) => {
                        let destroy = inner.manager.destroy(instance, inner.timings.destroy_grace);
                        // A panicking destroy still counts as done: the instance is gone.
                        let _ = guarded("destroy", destroy).await;
                    }
                    // Unreachable: an idle instance has no other owner. Dropping it is the
                    // only safe thing left.
                    Err(shared) => drop(shared),
                }
                inner.lock().destroying -= 1;
                let _ = inner.events.send(PoolEvent::Destroyed { instance: id, reason });
                inner.changed.notify_waiters();
            });
        }
        for (slot, instance) in rare.checks {
            self.runtime.spawn(self.clone().check_one(slot, instance));
        }
        for event in rare.events {
            let _ = self.events.send(event);
        }
        if rare.wake_maintenance {
            self.wake.notify_one();
        }
        for delivery in rare.deliveries {
            self.deliver(delivery);
        }
    }

    async fn create_one(self: Arc<Self>) {
        let timeout = self.timings.create_timeout;
        let id = InstanceId(self.next_instance.fetch_add(1, Ordering::Relaxed));
        let result = guarded_within("create", timeout, self.manager.create(id)).await;
        let now = Instant::now();
        let mut effects = Effects::default();
        {
            let mut state = self.lock();
            match result {
                Ok(Ok(instance)) => state.created(id, instance, now, &mut effects),
                Ok(Err(error)) => state.create_failed(Error::Create(error), now, &mut effects),
                Err(_) => state.create_failed(Error::CreateTimeout { timeout }, now, &mut effects),
            }
        }
        self.apply(effects);
        self.changed.notify_waiters();
    }

    async fn check_one(self: Arc<Self>, slot: u32, instance: Arc<M::Instance>) {
        let timeout = self.timings.health_check_timeout;
        let check = guarded_within("check", timeout, self.manager.check(&instance));
        let failure = match check.await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("the health check took longer than {timeout:?}")),
        };
        drop(instance);
        let mut effects = Effects::default();
        self.lock().checked(slot, failure, Instant::now(), &mut effects);
        self.apply(effects);
        self.changed.notify_waiters();
    }

    /// Locks the state; unlocking publishes whether acquires wait.
    pub(crate) fn lock(&self) -> StateGuard<'_, M::Instance> {
        StateGuard { guard: self.state.lock(), waiters_present: &self.waiters_present }
    }

    /// Whether acquires waited at the last unlock: a hint, read without the lock.
    fn someone_waits(&self) -> bool {
        self.waiters_present.load(Ordering::Relaxed)
    }

    /// A lease came back.
    #[inline]
    pub(crate) fn release(self: &Arc<Self>, returned: Returned<M::Instance>) {
        let now = (self.clock_on_release || self.someone_waits()).then(Instant::now);
        let mut effects = Effects::default();
        let closed = {
            let mut state = self.lock();
            state.release(returned, now, &mut effects);
            state.closed
        };
        self.apply(effects);
        if closed {
            self.changed.notify_waiters();
        }
    }

    /// Takes a leased instance out of the pool; `false` when another lease shares it.
    pub(crate) fn detach(self: &Arc<Self>, slot: u32, record: Option<u32>) -> bool {
        let mut effects = Effects::default();
        let detached = self.lock().detach(slot, record, Instant::now(), &mut effects);
        self.apply(effects);
        self.changed.notify_waiters();
        detached
    }

    /// Waits until `done` holds or `deadline` passes; says whether `done` held.
    async fn wait_until(
        &self,
        done: impl Fn(&State<M::Instance>) -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if done(&self.lock()) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return done(&self.lock());
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// The pool's state, locked; dropping it publishes whether acquires wait, for
/// [`Inner::someone_waits`], and unlocks.
pub(crate) struct StateGuard<'a, T> {
    guard: parking_lot::MutexGuard<'a, State<T>>,
    waiters_present: &'a AtomicBool,
}

impl<T> std::ops::Deref for StateGuard<'_, T> {
    type Target = State<T>;

    fn deref(&self) -> &State<T> {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for StateGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut State<T> {
        &mut self.guard
    }
}

impl<T> Drop for StateGuard<'_, T> {
    fn drop(&mut self) {
        // Stored only when it changes: every store takes the line from the other worker.
        let present = self.guard.waiting() > 0;
        if self.waiters_present.load(Ordering::Relaxed) != present {
            self.waiters_present.store(present, Ordering::Relaxed);
        }
    }
}

/// The background work of a pool: warm minimum, idle eviction, lifetimes, health checks,
/// leak detection and creates after a backoff. Ends when the pool closes; aborted when it is
/// dropped.
async fn maintain<M: Manager>(inner: Arc<Inner<M>>) {
    loop {
        let mut woken = pin!(inner.wake.notified());
        woken.as_mut().enable();
        let mut effects = Effects::default();
        let (next, closed) = {
            let mut state = inner.lock();
            (state.maintain(Instant::now(), &mut effects), state.closed)
        };
        inner.apply(effects);
        if closed {
            return;
        }
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, woken).await;
            }
            None => woken.await,
        }
    }
}

/// The future of [`Pool::acquire`] and [`Pool::acquire_with`]: resolves to a [`Lease`].
///
/// Its first poll takes an instance or joins the queue, in one lock; once queued, it waits on
/// its mailbox for the outcome — a lease, or the error that ended its wait — without touching
/// the pool's lock. Dropping it while queued leaves the queue, or returns a lease that arrived and was
/// never collected.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    stage: Stage<M::Instance>,
}

enum Stage<T> {
    /// Not polled yet; `timeout` is `None` for an acquire that waits as long as it takes.
    Start {
        priority: Priority,
        timeout: Option<Duration>,
    },
    Queued {
        id: WaiterId,
        mailbox: Arc<Mailbox<T>>,
    },
    Done,
}

impl<M: Manager> Future for Acquire<'_, M> {
    type Output = Result<Lease<M>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &this.stage {
            Stage::Queued { mailbox, .. } => match mailbox.poll(cx.waker()) {
                None => Poll::Pending,
                Some(outcome) => this.finish(outcome),
            },
            &Stage::Start { priority, timeout } => this.start(priority, timeout, cx),
            Stage::Done => this.finish(Err(Error::ShuttingDown)),
        }
    }
}

impl<M: Manager> Acquire<'_, M> {
    /// The first poll: takes an instance, or joins the queue with `cx`'s waker. Kept apart
    /// from the polls that follow, which only look at the mailbox.
    #[inline(never)]
    fn start(
        &mut self,
        priority: Priority,
        timeout: Option<Duration>,
        cx: &Context<'_>,
    ) -> Poll<Result<Lease<M>>> {
        let now = (self.inner.clock_on_acquire || self.inner.someone_waits()).then(Instant::now);
        let mut effects = Effects::default();
        let taken = {
            let mut state = self.inner.lock();
            if state.closed {
                Err(Error::ShuttingDown)
            } else if let Some(grant) =
                state.may_take().then(|| state.try_take(now, &mut effects)).flatten()
            {
                Ok(Some(grant))
            } else {
                let now = now.unwrap_or_else(Instant::now);
                let waker = cx.waker().clone();
                let deadline = timeout.and_then(|timeout| now.checked_add(timeout));
                state.enqueue(priority, now, deadline, waker, &mut effects).map(|(id, mailbox)| {
                    self.stage = Stage::Queued { id, mailbox };
                    None
                })
            }
        };
        self.inner.apply(effects);
        match taken {
            Ok(Some(grant)) => self.finish(Ok(grant)),
            Err(error) => self.finish(Err(error)),
            // Queued, with this task's waker in the mailbox.
            Ok(None) => Poll::Pending,
        }
    }

    fn finish(&mut self, outcome: Result<Grant<M::Instance>>) -> Poll<Result<Lease<M>>> {
        let mailbox = match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Queued { mailbox, .. } => Some(mailbox),
            Stage::Start { .. } | Stage::Done => None,
        };
        Poll::Ready(outcome.map(|grant| {
            // Made first, so that the lease goes back to the pool should the manager panic.
            let lease = Lease::new(self.inner.clone(), grant).with_mailbox(mailbox);
            self.inner.manager.leased(&lease);
            lease
        }))
    }
}

impl<M: Manager> fmt::Debug for Acquire<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Start { .. } => "start",
            Stage::Queued { .. } => "queued",
            Stage::Done => "done",
        };
        f.debug_struct("Acquire").field("stage", &stage).finish_non_exhaustive()
    }
}

impl<M: Manager> Drop for Acquire<'_, M> {
    fn drop(&mut self) {
        let Stage::Queued { id, mailbox } = &self.stage else { return };
        if self.inner.lock().abandon_wait(*id) {
            return;
        }
        // Served already: the outcome is in the mailbox, or the pool is about to deliver it.
        // Closing makes a later delivery hand the grant back to the pool; one delivered
        // before is returned here.
        if let Some(Ok(grant)) = mailbox.close() {
            drop(Lease::new(self.inner.clone(), grant));
        }
    }
}
