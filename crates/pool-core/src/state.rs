//! The bookkeeping of a pool, all under one lock: slots, the available set, the waiter queue,
//! counters. Nothing here awaits or spawns; what must happen outside the lock is returned as
//! [`Effects`] for the pool to carry out.

use std::collections::VecDeque;
use std::sync::Arc;

use std::task::Waker;

use tokio::time::Instant;

use crate::config::{PoolConfig, Selection};
use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, Mailboxes};
use crate::status::{
    DestroyReason, InstanceId, InstanceState, InstanceStatus, PoolCounters, PoolEvent, PoolStatus,
    WaitHistogram,
};

/// How urgently an acquire wants an instance: waiters of a higher priority are served first,
/// and in arrival order within a priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Served before everything else.
    High,
    /// The priority of [`Pool::acquire`](crate::Pool::acquire).
    #[default]
    Normal,
    /// Served when no other acquire waits.
    Low,
}

/// A lease in the making: everything a [`Lease`](crate::Lease) needs, without its `Drop`.
#[derive(Debug)]
pub(crate) struct Grant<T> {
    pub(crate) slot: u32,
    pub(crate) id: InstanceId,
    pub(crate) instance: Arc<T>,
    /// Whether the lease owns the instance (concurrency 1) rather than sharing it.
    pub(crate) exclusive: bool,
    /// The lease's record for leak detection, when that is on.
    pub(crate) record: Option<u32>,
}

/// The waiter queue: FIFO within each priority. A waiter's cell holds its deadline, if any, and
/// the mailbox of its outcome; the outcome is delivered once the lock is released (see
/// [`Effects`]), so a woken acquire collects it without taking the pool's lock again.
///
/// Laid out for the waited checkout, which takes the pool's lock on one worker and then on
/// another: the counts and the normal-priority queue sit together at the front, and the queues
/// of the other priorities, which it does not touch, are elsewhere.
#[derive(Debug)]
#[repr(C)]
struct Waiters<T> {
    /// Waiters in all queues, kept with every change.
    len: usize,
    next_token: u64,
    normal: VecDeque<WaiterCell<T>>,
    mailboxes: Mailboxes<T>,
    /// The `High` and `Low` queues.
    others: Box<[VecDeque<WaiterCell<T>>; 2]>,
}

/// One waiting acquire.
#[derive(Debug)]
struct WaiterCell<T> {
    /// Tells this waiter from every other; grows along each queue.
    token: u64,
    enqueued: Instant,
    /// `None` waits until served.
    deadline: Option<Instant>,
    mailbox: Arc<Mailbox<T>>,
}

/// A lease coming back to the pool.
#[derive(Debug)]
pub(crate) struct Returned<T> {
    pub(crate) slot: u32,
    /// The instance, when the lease owned it (concurrency 1).
    pub(crate) instance: Option<Arc<T>>,
    pub(crate) broken: bool,
    pub(crate) record: Option<u32>,
    /// The mailbox of the acquire that waited for this lease, to reuse.
    pub(crate) mailbox: Option<Arc<Mailbox<T>>>,
}

/// Identifies a queued acquire: its queue and the token it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaiterId {
    priority: Priority,
    token: u64,
}

/// An outcome on its way to the acquire that waits for it.
pub(crate) type Delivery<T> = (Arc<Mailbox<T>>, Result<Grant<T>>);

impl<T> Waiters<T> {
    fn new() -> Self {
        Self {
            len: 0,
            next_token: 0,
            normal: VecDeque::new(),
            mailboxes: Mailboxes::default(),
            others: Box::default(),
        }
    }

    fn queue_mut(&mut self, priority: Priority) -> &mut VecDeque<WaiterCell<T>> {
        match priority {
            Priority::High => &mut self.others[0],
            Priority::Normal => &mut self.normal,
            Priority::Low => &mut self.others[1],
        }
    }

    /// Every queue, the first served first.
    fn queues_mut(&mut self) -> [&mut VecDeque<WaiterCell<T>>; 3] {
        let [high, low] = &mut *self.others;
        [high, &mut self.normal, low]
    }

    #[inline]
    fn push(
        &mut self,
        priority: Priority,
        enqueued: Instant,
        deadline: Option<Instant>,
        waker: Waker,
    ) -> (WaiterId, Arc<Mailbox<T>>) {
        let mailbox = self.mailboxes.lend(waker);
        let token = self.next_token;
        self.next_token += 1;
        let waiter = WaiterCell { token, enqueued, deadline, mailbox: mailbox.clone() };
        self.queue_mut(priority).push_back(waiter);
        self.len += 1;
        (WaiterId { priority, token }, mailbox)
    }

    /// The next waiter to serve, out of the queue. Always inlined: on the hand-off of a
    /// returned lease a call costs more than its few lines.
    #[inline(always)]
    fn pop(&mut self) -> Option<WaiterCell<T>> {
        // Only the normal queue is looked at while no other priority waits.
        let waiter = if self.normal.len() == self.len {
            self.normal.pop_front()
        } else {
            self.queues_mut().into_iter().find_map(VecDeque::pop_front)
        }?;
        self.len -= 1;
        Some(waiter)
    }

    /// Takes a waiter out of the queue; `None` when it was already served.
    fn remove(&mut self, id: WaiterId) -> Option<WaiterCell<T>> {
        let queue = self.queue_mut(id.priority);
        let position = queue.binary_search_by_key(&id.token, |waiter| waiter.token).ok()?;
        let waiter = queue.remove(position)?;
        self.len -= 1;
        Some(waiter)
    }

    /// Takes out every waiter whose deadline has passed; returns the earliest deadline left.
    fn expire(&mut self, now: Instant, expired: &mut Vec<WaiterCell<T>>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let before = expired.len();
        for queue in self.queues_mut() {
            let mut position = 0;
            while position < queue.len() {
                match queue[position].deadline {
                    Some(deadline) if deadline <= now => expired.extend(queue.remove(position)),
                    Some(deadline) => {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                        position += 1;
                    }
                    None => position += 1,
                }
            }
        }
        self.len -= expired.len() - before;
        next
    }
}

/// One live instance and what the pool knows of it.
#[derive(Debug)]
struct Slot<T> {
    id: InstanceId,
    /// Held here while idle or shared; an exclusive lease takes it out.
    instance: Option<Arc<T>>,
    in_use: usize,
    uses: u64,
    created_at: Instant,
    idle_since: Instant,
    /// A health check has the instance: it cannot be leased meanwhile.
    checking: bool,
    /// Set once the instance must go: no new leases, destroyed when the last one returns.
    retire: Option<DestroyReason>,
    /// Whether the slot's index is in `State::available`.
    in_available: bool,
}

/// A lease watched for leaks.
#[derive(Debug)]
struct LeaseRecord {
    instance: InstanceId,
    since: Instant,
    reported: bool,
}

/// What the pool must do once the lock is released. The common case — nothing, or one
/// waiter to serve — fits inline; everything else is boxed, so the acquire and release paths
/// build, move and drop a few words.
#[derive(Debug)]
pub(crate) struct Effects<T> {
    /// The outcome of one waiter, to send.
    pub(crate) delivery: Option<Delivery<T>>,
    pub(crate) rare: Option<Box<RareEffects<T>>>,
}

/// The less frequent things to do after the lock is released.
#[derive(Debug)]
pub(crate) struct RareEffects<T> {
    /// Instances to hand to `Manager::destroy`, with the reason.
    pub(crate) destroy: Vec<(InstanceId, Arc<T>, DestroyReason)>,
    /// Creates to start (already counted in `creating`).
    pub(crate) creates: usize,
    /// Idle instances to health-check (already marked `checking`).
    pub(crate) checks: Vec<(u32, Arc<T>)>,
    pub(crate) events: Vec<PoolEvent>,
    /// Wake the maintenance task (a deadline may have moved closer).
    pub(crate) wake_maintenance: bool,
    /// Outcomes of further waiters.
    pub(crate) deliveries: Vec<Delivery<T>>,
}

impl<T> Default for Effects<T> {
    fn default() -> Self {
        Self { delivery: None, rare: None }
    }
}

impl<T> Default for RareEffects<T> {
    fn default() -> Self {
        Self {
            destroy: Vec::new(),
            creates: 0,
            checks: Vec::new(),
            events: Vec::new(),
            wake_maintenance: false,
            deliveries: Vec::new(),
        }
    }
}

impl<T> Effects<T> {
    #[cold]
    fn rare(&mut self) -> &mut RareEffects<T> {
        self.rare.get_or_insert_with(Box::default)
    }

    fn add_creates(&mut self, creates: usize) {
        if creates > 0 {
            self.rare().creates += creates;
        }
    }

    #[inline]
    fn deliver(&mut self, waiter: WaiterCell<T>, outcome: Result<Grant<T>>) {
        let delivery = (waiter.mailbox, outcome);
        if self.delivery.is_none() {
            self.delivery = Some(delivery);
        } else {
            self.rare().deliveries.push(delivery);
        }
    }
}

/// What the waiters and the warm minimum need created.
#[derive(Debug, Clone, Copy)]
enum Creates {
    /// This many creates to start now (already counted as running).
    Start(usize),
    /// Some, once the create backoff ends at this moment.
    After(Instant),
}

/// Counts at the moment the pool closed, for the shutdown report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    pub(crate) leases_outstanding: usize,
    pub(crate) waiters_rejected: usize,
}

/// Everything the pool's lock guards.
///
/// A waited checkout takes the lock on one worker and then on the other, and each line of
/// memory it touches moves between their caches. The fields it reads and writes come first, in
/// as few lines as they fit (the layout is kept by `repr(C)`); the rest follows.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct State<T> {
    pub(crate) leased: usize,
    /// Live slots, counting busy, checking and retiring ones.
    size: usize,
    /// Live slots marked to retire.
    retiring: usize,
    pub(crate) creating: usize,
    /// When the maintenance task will next run on its own; an earlier waiter deadline wakes it.
    maintenance_due: Option<Instant>,
    pub(crate) closed: bool,
    waiters: Waiters<T>,
    waits: WaitHistogram,
    // Touched by a waited checkout only in their own allocations, or not at all.
    slots: Slab<Slot<T>>,
    /// Slots that can take a lease, in selection order (the back is the most recent).
    available: VecDeque<u32>,
    pub(crate) config: PoolConfig,
    /// While creates fail (cleared by a success): when the next may start, and the last one's
    /// error.
    /// A pause too long to add to the present moment (`None`) lasts as long as the pool.
    backoff: Option<(Option<Instant>, Error)>,
    pub(crate) counters: PoolCounters,
    pub(crate) destroying: usize,
    consecutive_failures: u32,
    lease_records: Slab<LeaseRecord>,
    next_health_check: Option<Instant>,
}

impl<T> State<T> {
    pub(crate) fn new(config: PoolConfig, now: Instant) -> Self {
        let next_health_check =
            config.health_check_interval.and_then(|interval| now.checked_add(interval));
        Self {
            config,
            slots: Slab::default(),
            available: VecDeque::new(),
            waiters: Waiters::new(),
            size: 0,
            retiring: 0,
            creating: 0,
            destroying: 0,
            leased: 0,
            consecutive_failures: 0,
            backoff: None,
            closed: false,
            counters: PoolCounters::default(),
            waits: WaitHistogram::default(),
            lease_records: Slab::default(),
            next_health_check,
            maintenance_due: None,
        }
    }

    /// The creates' backoff (when it ends, and the error that started it), while it runs.
    fn backing_off(&self, now: Instant) -> Option<&(Option<Instant>, Error)> {
        self.backoff.as_ref().filter(|(until, _)| until.is_none_or(|until| now < until))
    }

    /// Acquires in the queue.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len
    }

    /// Whether an acquire may look for an instance to take at once: none waits, since nobody
    /// may overtake a waiter, and some instance can take a lease.
    #[inline]
    pub(crate) fn may_take(&self) -> bool {
        self.waiters.len == 0 && !self.available.is_empty()
    }

    fn slot(&self, index: u32) -> &Slot<T> {
        self.slots.get(index).expect("a slot index held by a lease or queue is live")
    }

    fn slot_mut(&mut self, index: u32) -> &mut Slot<T> {
        self.slots.get_mut(index).expect("a slot index held by a lease or queue is live")
    }

    // -----------------------------------------------------------------------------------------
    // Acquire

    /// Takes a lease on an available instance, retiring expired ones on the way.
    /// `now` is only needed when `max_lifetime` or leak detection is on.
    pub(crate) fn try_take(
        &mut self,
        now: Option<Instant>,
        effects: &mut Effects<T>,
    ) -> Option<Grant<T>> {
        loop {
            let index = self.pick_available()?;
            if let (Some(lifetime), Some(now)) = (self.config.max_lifetime, now)
                && now.duration_since(self.slot(index).created_at) >= lifetime
            {
                // Too old for another lease: gone now if idle, else once its leases return.
                if self.slot(index).in_use == 0 {
                    self.retire(index, DestroyReason::MaxLifetime, effects);
                    self.start_creates(now, effects);
                } else {
                    self.mark_retiring(index, DestroyReason::MaxLifetime);
                }
                continue;
            }
            self.waits.record_immediate();
            let grant = self.lease_slot(index, now);
            self.refresh_availability(index);
            return Some(grant);
        }
    }

    /// Removes the chosen slot from the available set.
    fn pick_available(&mut self) -> Option<u32> {
        let index = match self.config.selection {
            Selection::MostRecent => self.available.pop_back()?,
            Selection::RoundRobin => self.available.pop_front()?,
            Selection::LeastLoaded => {
                let slots = &self.slots;
                let load = |index: &u32| slots.get(*index).map_or(0, |slot| slot.in_use);
                let (position, _) =
                    self.available.iter().enumerate().min_by_key(|(_, index)| load(index))?;
                self.available.remove(position)?
            }
        };
        self.slot_mut(index).in_available = false;
        Some(index)
    }

    /// Leases `index`, which can take one more lease and is not in the available set; the
    /// caller puts it back there when it still has room.
    #[inline]
    fn lease_slot(&mut self, index: u32, now: Option<Instant>) -> Grant<T> {
        let exclusive = self.config.concurrency == 1;
        let slot = self.slot_mut(index);
        slot.in_use += 1;
        let instance = if exclusive { slot.instance.take() } else { slot.instance.clone() }
            .expect("a slot that can take a lease holds its instance");
        let id = self.count_use(index);
        self.leased += 1;
        let record = self.record_lease(id, now);
        Grant { slot: index, id, instance, exclusive, record }
    }

    /// Counts a lease on `index`, marking the slot to retire once it reaches `max_uses`;
    /// returns the instance's id.
    #[inline]
    fn count_use(&mut self, index: u32) -> InstanceId {
        let max_uses = self.config.max_uses;
        let slot = self.slot_mut(index);
        slot.uses += 1;
        let id = slot.id;
        if max_uses.is_some_and(|max| slot.uses >= max) && slot.retire.is_none() {
            slot.retire = Some(DestroyReason::MaxUses);
            self.retiring += 1;
        }
        id
    }

    /// The leak-detection record of a new lease on `id`, when leak detection is on (the
    /// acquire then read the clock: `now` is set).
    #[inline]
    fn record_lease(&mut self, id: InstanceId, now: Option<Instant>) -> Option<u32> {
        match (self.config.leak_threshold, now) {
            (Some(_), Some(since)) => Some(self.add_record(id, since)),
            _ => None,
        }
    }

    fn add_record(&mut self, instance: InstanceId, since: Instant) -> u32 {
        self.lease_records.insert(LeaseRecord { instance, since, reported: false })
    }

    fn can_lease(&self, slot: &Slot<T>) -> bool {
        slot.retire.is_none()
            && !slot.checking
            && slot.in_use < self.config.concurrency
            && slot.instance.is_some()
    }

    /// Puts the slot in the available set or takes it out, as its state says.
    fn refresh_availability(&mut self, index: u32) {
        let slot = self.slot(index);
        let should = self.can_lease(slot);
        match (should, slot.in_available) {
            (true, false) => {
                self.available.push_back(index);
                self.slot_mut(index).in_available = true;
            }
            (false, true) => self.take_out_of_available(index),
            _ => {}
        }
    }

    /// Queues an acquire that waits until `deadline`, or until served when there is none;
    /// fails with `QueueFull` when the queue is at its limit.
    #[inline]
    pub(crate) fn enqueue(
        &mut self,
        priority: Priority,
        now: Instant,
        deadline: Option<Instant>,
        waker: Waker,
        effects: &mut Effects<T>,
    ) -> Result<(WaiterId, Arc<Mailbox<T>>)> {
        if self.queue_is_full() {
            self.counters.queue_full += 1;
            return Err(Error::QueueFull { limit: self.config.queue_limit, max: self.config.max });
        }
        // Nothing could serve it before the backoff ends — no instance, none being created —
        // and creates keep failing: waiting would end in a timeout that hides why. Say why now.
        if let Some((_, error)) = self.backing_off(now)
            && self.size == self.retiring
            && self.creating == 0
        {
            return Err(error.clone());
        }
        let queued = self.waiters.push(priority, now, deadline, waker);
        // The maintenance task times waiters out.
        if let Some(deadline) = deadline {
            self.maintain_by(deadline, effects);
        }
        self.start_creates(now, effects);
        Ok(queued)
    }

    /// Whether no acquire may join the queue. The limit is on acquires waiting for a busy
    /// instance to come back: those that the creates running or still to start will serve do
    /// not count against it, so a burst on a cold pool is never refused while the pool may
    /// still grow for it.
    fn queue_is_full(&self) -> bool {
        let served_by_creates =
            (self.creating + self.room()).saturating_mul(self.config.concurrency);
        self.waiters.len >= self.config.queue_limit.saturating_add(served_by_creates)
    }

    /// The most acquires that can ever wait at once: the queue, and a full pool's leases.
    fn most_waiting(&self) -> usize {
        let leases = self.config.max.saturating_mul(self.config.concurrency);
        self.config.queue_limit.saturating_add(leases)
    }

    /// Instances that may still be created under `max`.
    fn room(&self) -> usize {
        self.config.max.saturating_sub(self.size + self.creating)
    }

    /// A queued acquire was dropped: leave the queue. `false` when it was already served (its
    /// outcome is then in its mailbox, or about to be).
    pub(crate) fn abandon_wait(&mut self, id: WaiterId) -> bool {
        self.waiters.remove(id).is_some()
    }

    /// Hands leases on `index` to waiters while it has room, then updates its availability.
    #[inline]
    fn serve_waiters(&mut self, index: u32, now: Instant, effects: &mut Effects<T>) {
        if self.waiters.len > 0 && self.slot(index).in_available {
            // Leasing expects the slot out of the available set; it goes back if it has room.
            self.take_out_of_available(index);
        }
        while self.waiters.len > 0 && self.can_lease(self.slot(index)) {
            let waiter = self.waiters.pop().expect("the queue is not empty");
            let grant = self.lease_slot(index, Some(now));
            self.waits.record(now.saturating_duration_since(waiter.enqueued));
            effects.deliver(waiter, Ok(grant));
        }
        self.refresh_availability(index);
    }

    #[inline]
    fn take_out_of_available(&mut self, index: u32) {
        if let Some(position) = self.available.iter().position(|&i| i == index) {
            self.available.remove(position);
        }
        self.slot_mut(index).in_available = false;
    }

    fn remove_record(&mut self, record: u32) {
        self.lease_records.remove(record);
    }

    // -----------------------------------------------------------------------------------------
    // Release

    /// A lease came back: return the instance, or retire it when it must go.
    #[inline]
    pub(crate) fn release(
        &mut self,
        returned: Returned<T>,
        now: Option<Instant>,
        effects: &mut Effects<T>,
    ) {
        let Returned { slot: index, instance, broken, record, mailbox } = returned;
        if let Some(mailbox) = mailbox {
            let keep = self.most_waiting();
            self.waiters.mailboxes.give_back(mailbox, keep);
        }
        if let Some(record) = record {
            self.remove_record(record);
        }
        // The common hand-off: an exclusive lease comes back whole while acquires wait, and
        // nothing retires the instance. It goes straight to the first waiter without becoming
        // idle, which is what `settle` below would do, with less bookkeeping.
        if let Some(now) = now
            && !broken
            && self.waiters.len > 0
            && self.retire_reason(index, || now).is_none()
            && let Some(instance) = instance
        {
            let waiter = self.waiters.pop().expect("the queue is not empty");
            let id = self.count_use(index);
            let record = self.record_lease(id, Some(now));
            self.waits.record(now.saturating_duration_since(waiter.enqueued));
            let grant = Grant { slot: index, id, instance, exclusive: true, record };
            effects.deliver(waiter, Ok(grant));
            return;
        }
        self.leased -= 1;
        let slot = self.slot_mut(index);
        slot.in_use -= 1;
        if instance.is_some() {
            slot.instance = instance;
        }
        if let (0, Some(now)) = (slot.in_use, now) {
            slot.idle_since = now;
        }
        if broken {
            self.mark_retiring(index, DestroyReason::Broken);
        }
        self.settle(index, now, effects);
    }

    /// Decides what becomes of a slot whose leases or check changed: destroy it when it is
    /// idle and must go, otherwise serve waiters from it. `now` may be `None` when neither
    /// `idle_timeout` nor `max_lifetime` is set: the clock is then read only if needed.
    #[inline]
    fn settle(&mut self, index: u32, now: Option<Instant>, effects: &mut Effects<T>) {
        let clock = || now.unwrap_or_else(Instant::now);
        let slot = self.slot(index);
        if slot.in_use == 0
            && !slot.checking
            && let Some(reason) = self.retire_reason(index, clock)
        {
            self.retire(index, reason, effects);
            self.start_creates(clock(), effects);
            return;
        }
        if self.waiters.len > 0 {
            self.serve_waiters(index, clock(), effects);
        } else {
            self.refresh_availability(index);
        }
    }

    /// Why the slot at `index`, once idle, must go rather than serve again, if it must: it is
    /// marked to retire, the pool is closing, it is past its `max_lifetime` (on `clock`), or
    /// the pool is above `max` after a resize down.
    #[inline]
    fn retire_reason(&self, index: u32, clock: impl FnOnce() -> Instant) -> Option<DestroyReason> {
        let slot = self.slot(index);
        if let Some(reason) = slot.retire {
            Some(reason)
        } else if self.closed {
            Some(DestroyReason::Shutdown)
        } else if self
            .config
            .max_lifetime
            .is_some_and(|lifetime| clock().duration_since(slot.created_at) >= lifetime)
        {
            Some(DestroyReason::MaxLifetime)
        } else if self.size - self.retiring > self.config.max {
            Some(DestroyReason::Resized)
        } else {
            None
        }
    }

    fn mark_retiring(&mut self, index: u32, reason: DestroyReason) {
        let slot = self.slot_mut(index);
        if slot.retire.is_none() {
            slot.retire = Some(reason);
            self.retiring += 1;
        }
        self.refresh_availability(index);
    }

    /// Removes an idle slot and queues its instance for destruction.
    fn retire(&mut self, index: u32, reason: DestroyReason, effects: &mut Effects<T>) {
        let slot = self.remove_slot(index);
        debug_assert_eq!(slot.in_use, 0, "only idle instances are destroyed");
        self.destroying += 1;
        self.counters.destroyed += 1;
        // An idle slot always holds its instance: exclusive leases have given it back.
        if let Some(instance) = slot.instance {
            effects.rare().destroy.push((slot.id, instance, reason));
        }
    }

    /// Takes a slot out of the pool's accounting; the instance goes with it.
    fn remove_slot(&mut self, index: u32) -> Slot<T> {
        if self.slot(index).in_available {
            self.take_out_of_available(index);
        }
        let slot = self.slots.remove(index).expect("a removed slot is live");
        if slot.retire.is_some() {
            self.retiring -= 1;
        }
        self.size -= 1;
        slot
    }

    // -----------------------------------------------------------------------------------------
    // Creates

    /// Starts the creates the waiters and the warm minimum need now, counting them as running.
    /// While a backoff holds them back, makes sure the maintenance task runs when it ends:
    /// nothing else may call for them then.
    #[inline]
    fn start_creates(&mut self, now: Instant, effects: &mut Effects<T>) {
        // Acquires wait on a full pool, which starts none: that is asked before any call.
        if self.may_create() {
            self.start_needed_creates(now, effects);
        }
    }

    /// [`start_creates`](State::start_creates) on a pool that may create: out of line, off the
    /// path of acquires on a full pool.
    #[inline(never)]
    fn start_needed_creates(&mut self, now: Instant, effects: &mut Effects<T>) {
        match self.creates_needed(now) {
            Creates::Start(starts) => effects.add_creates(starts),
            Creates::After(until) => self.maintain_by(until, effects),
        }
    }

    /// Whether the pool may start a create at all: open, and with room under `max`.
    fn may_create(&self) -> bool {
        !self.closed && self.room() > 0
    }

    /// What the waiters and the warm minimum need created now, on a pool that
    /// [may create](State::may_create); counts the creates to start as running.
    fn creates_needed(&mut self, now: Instant) -> Creates {
        let concurrency = self.config.concurrency;
        let live = self.size - self.retiring;
        let for_waiters = self.waiters.len.div_ceil(concurrency).saturating_sub(self.creating);
        let for_min = self.config.min.saturating_sub(live + self.creating);
        let wanted = for_waiters.max(for_min);
        if let Some(&(until, _)) = self.backing_off(now) {
            return match until {
                Some(until) if wanted > 0 => Creates::After(until),
                _ => Creates::Start(0),
            };
        }
        let parallel = self.config.max_concurrent_creates.saturating_sub(self.creating);
        let starts = wanted.min(self.room()).min(parallel);
        self.creating += starts;
        Creates::Start(starts)
    }

    /// Wakes the maintenance task if it would not otherwise run by `at`.
    #[inline]
    fn maintain_by(&mut self, at: Instant, effects: &mut Effects<T>) {
        if self.maintenance_due.is_none_or(|due| at < due) {
            self.maintenance_due = Some(at);
            effects.rare().wake_maintenance = true;
        }
    }

    /// A create succeeded: add the instance and serve waiters from it.
    pub(crate) fn created(
        &mut self,
        id: InstanceId,
        instance: T,
        now: Instant,
        effects: &mut Effects<T>,
    ) {
        self.creating -= 1;
        self.consecutive_failures = 0;
        self.backoff = None;
        self.counters.created += 1;
        let slot = Slot {
            id,
            instance: Some(Arc::new(instance)),
            in_use: 0,
            uses: 0,
            created_at: now,
            idle_since: now,
            checking: false,
            retire: None,
            in_available: false,
        };
        let index = self.slots.insert(slot);
        self.size += 1;
        effects.rare().events.push(PoolEvent::Created { instance: id });
        self.settle(index, Some(now), effects);
        self.start_creates(now, effects);
    }

    /// A create failed: back off, and fail the waiters that were counting on it.
    pub(crate) fn create_failed(&mut self, error: Error, now: Instant, effects: &mut Effects<T>) {
        self.creating -= 1;
        self.consecutive_failures += 1;
        self.counters.create_failures += 1;
        let backoff = self.config.backoff_after(self.consecutive_failures);
        // The waiters this create would have served: those beyond what the creates still
        // running can serve, at most one instance's worth, in service order.
        let concurrency = self.config.concurrency;
        let covered = self.creating.saturating_mul(concurrency);
        let counting_on_it = self.waiters.len.saturating_sub(covered).min(concurrency);
        for _ in 0..counting_on_it {
            if let Some(waiter) = self.waiters.pop() {
                effects.deliver(waiter, Err(error.clone()));
            }
        }
        let text = match &error {
            Error::Create(source) => source.to_string(),
            other => other.to_string(),
        };
        effects.rare().events.push(PoolEvent::CreateFailed {
            error: text,
            consecutive_failures: self.consecutive_failures,
            backoff,
        });
        effects.rare().wake_maintenance = true;
        self.backoff = Some((now.checked_add(backoff), error));
    }

    // -----------------------------------------------------------------------------------------
    // Health checks

    /// A health check ended: destroy the instance if it failed, otherwise put it back to work.
    pub(crate) fn checked(
        &mut self,
        index: u32,
        failure: Option<String>,
        now: Instant,
        effects: &mut Effects<T>,
    ) {
        self.slot_mut(index).checking = false;
        if let Some(error) = failure {
            self.counters.health_check_failures += 1;
            let instance = self.slot(index).id;
            effects.rare().events.push(PoolEvent::HealthCheckFailed { instance, error });
            self.mark_retiring(index, DestroyReason::HealthCheckFailed);
        }
        self.settle(index, Some(now), effects);
    }

    // -----------------------------------------------------------------------------------------
    // Maintenance

    /// Evicts, checks, reports leaks and starts creates as due at `now`; returns when it is due
    /// next.
    pub(crate) fn maintain(&mut self, now: Instant, effects: &mut Effects<T>) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut next: Option<Instant> = None;
        // A moment too far to represent (`None`) never comes.
        let mut due = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };

        // Retire idle instances past their lifetime, then those idle too long, oldest first,
        // never going below `min`.
        let mut idle: Vec<(Instant, u32)> = Vec::new();
        for index in self.slots.indices() {
            let Some(slot) = self.slots.get(index) else { continue };
            let idle_now = slot.in_use == 0 && !slot.checking && slot.retire.is_none();
            let (created_at, idle_since, retiring) =
                (slot.created_at, slot.idle_since, slot.retire.is_some());
            if let Some(end) = self.config.max_lifetime.and_then(|l| created_at.checked_add(l)) {
                if idle_now && now >= end {
                    self.retire(index, DestroyReason::MaxLifetime, effects);
                    continue;
                }
                // A busy instance past its lifetime is retired when it comes back, not here.
                if !retiring && end > now {
                    due(Some(end));
                }
            }
            if idle_now {
                idle.push((idle_since, index));
            }
        }
        if let Some(timeout) = self.config.idle_timeout {
            idle.sort_unstable();
            for (since, index) in idle {
                if self.size - self.retiring <= self.config.min {
                    break;
                }
                match since.checked_add(timeout) {
                    Some(end) if now >= end => {
                        self.retire(index, DestroyReason::IdleTimeout, effects);
                    }
                    end => {
                        due(end);
                        break;
                    }
                }
            }
            // An instance that goes idle later expires no sooner than this.
            due(now.checked_add(timeout));
        }
        if let Some(lifetime) = self.config.max_lifetime {
            due(now.checked_add(lifetime));
        }

        // Health checks of idle instances.
        if let (Some(interval), Some(at)) =
            (self.config.health_check_interval, self.next_health_check)
        {
            if now >= at {
                for index in self.slots.indices() {
                    let Some(slot) = self.slots.get(index) else { continue };
                    if slot.in_use == 0 && !slot.checking && slot.retire.is_none() {
                        let instance =
                            slot.instance.clone().expect("an idle slot holds its instance");
                        self.slot_mut(index).checking = true;
                        self.refresh_availability(index);
                        effects.rare().checks.push((index, instance));
                    }
                }
                self.next_health_check = now.checked_add(interval);
            }
            due(self.next_health_check);
        }

        // Leases held too long.
        if let Some(threshold) = self.config.leak_threshold {
            for record in self.lease_records.iter_mut() {
                if record.reported {
                    continue;
                }
                let held = now.saturating_duration_since(record.since);
                if held >= threshold {
                    record.reported = true;
                    self.counters.leaks_suspected += 1;
                    let event = PoolEvent::LeakSuspected { instance: record.instance, held };
                    effects.rare().events.push(event);
                } else {
                    due(record.since.checked_add(threshold));
                }
            }
            due(now.checked_add(threshold));
        }

        // Acquires that waited until their deadline.
        if self.waiters.len > 0 {
            let mut expired = Vec::new();
            due(self.waiters.expire(now, &mut expired));
            for waiter in expired {
                self.counters.timeouts += 1;
                let error = Error::Timeout {
                    waited: now.saturating_duration_since(waiter.enqueued),
                    max: self.config.max,
                    concurrency: self.config.concurrency,
                };
                effects.deliver(waiter, Err(error));
            }
        }

        // Creates for the waiters and the warm minimum, after the backoff if one runs.
        if self.may_create() {
            match self.creates_needed(now) {
                Creates::Start(starts) => effects.add_creates(starts),
                Creates::After(until) => due(Some(until)),
            }
        }
        self.maintenance_due = next;
        next
    }

    // -----------------------------------------------------------------------------------------
    // Resize, shutdown, status

    /// Changes `min` and `max`: retires idle instances above the new max first, then marks
    /// busy ones to retire when their leases return.
    pub(crate) fn resize(
        &mut self,
        min: usize,
        max: usize,
        now: Instant,
        effects: &mut Effects<T>,
    ) {
        self.config.min = min;
        self.config.max = max;
        let mut excess = (self.size - self.retiring).saturating_sub(max);
        // The least recently returned go first: the front of the available set.
        let idle: Vec<u32> =
            self.available.iter().copied().filter(|&index| self.slot(index).in_use == 0).collect();
        for index in idle {
            if excess == 0 {
                break;
            }
            self.retire(index, DestroyReason::Resized, effects);
            excess -= 1;
        }
        for index in self.slots.indices() {
            if excess == 0 {
                break;
            }
            if self.slots.get(index).is_some_and(|slot| slot.retire.is_none()) {
                self.mark_retiring(index, DestroyReason::Resized);
                excess -= 1;
            }
        }
        effects.rare().events.push(PoolEvent::Resized { min, max });
        self.start_creates(now, effects);
        effects.rare().wake_maintenance = true;
    }

    /// Stops taking acquires: fails the waiters, destroys idle instances and marks the rest to
    /// be destroyed when their leases return or their check ends.
    pub(crate) fn close(&mut self, effects: &mut Effects<T>) -> Closing {
        if self.closed {
            return Closing { leases_outstanding: self.leased, waiters_rejected: 0 };
        }
        self.closed = true;
        let mut waiters_rejected = 0;
        while let Some(waiter) = self.waiters.pop() {
            waiters_rejected += 1;
            effects.deliver(waiter, Err(Error::ShuttingDown));
        }
        for index in self.slots.indices() {
            let Some(slot) = self.slots.get(index) else { continue };
            if slot.in_use == 0 && !slot.checking {
                let reason = slot.retire.unwrap_or(DestroyReason::Shutdown);
                self.retire(index, reason, effects);
            } else {
                self.mark_retiring(index, DestroyReason::Shutdown);
            }
        }
        effects.rare().wake_maintenance = true;
        Closing { leases_outstanding: self.leased, waiters_rejected }
    }

    /// Whether everything a shutdown waits for after the leases is done: no create running,
    /// no destroy running, and no live instance but those still leased.
    pub(crate) fn drained(&self) -> bool {
        self.creating == 0 && self.destroying == 0 && self.slots.iter().all(|slot| slot.in_use > 0)
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let busy = self.slots.iter().filter(|slot| slot.in_use > 0).count();
        PoolStatus {
            min: self.config.min,
            max: self.config.max,
            size: self.size,
            idle: self.size - busy,
            busy,
            retiring: self.retiring,
            leased: self.leased,
            creating: self.creating,
            waiting: self.waiters.len,
            closed: self.closed,
            // Every lease handed out is one recorded wait (zero for an immediate one).
            counters: PoolCounters {
                acquired: self.waits.count(),
                waited: self.waits.waited(),
                ..self.counters.clone()
            },
            wait: self.waits.summary(),
        }
    }

    /// One line per live instance, oldest first.
    pub(crate) fn instances(&self, now: Instant) -> Vec<InstanceStatus> {
        let mut instances: Vec<InstanceStatus> = self
            .slots
            .iter()
            .map(|slot| InstanceStatus {
                id: slot.id,
                state: if slot.retire.is_some() {
                    InstanceState::Retiring
                } else if slot.checking {
                    InstanceState::Checking
                } else if slot.in_use > 0 {
                    InstanceState::Busy
                } else {
                    InstanceState::Idle
                },
                leases: slot.in_use,
                uses: slot.uses,
                age: now.saturating_duration_since(slot.created_at),
            })
            .collect();
        instances.sort_by_key(|instance| instance.id);
        instances
    }

    /// Takes an instance out of the pool for good, if `index` has no other lease.
    pub(crate) fn detach(
        &mut self,
        index: u32,
        record: Option<u32>,
        now: Instant,
        effects: &mut Effects<T>,
    ) -> bool {
        if self.slot(index).in_use != 1 {
            return false;
        }
        // The slot's own reference (shared leases) goes with it.
        drop(self.remove_slot(index));
        self.leased -= 1;
        if let Some(record) = record {
            self.remove_record(record);
        }
        self.start_creates(now, effects);
        true
    }
}

/// A vector of entries addressed by index, reusing freed indices.
#[derive(Debug)]
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self { entries: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.entries[index as usize] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, index: u32) -> Option<T> {
        let value = self.entries.get_mut(index as usize)?.take()?;
        self.free.push(index);
        Some(value)
    }

    fn get(&self, index: u32) -> Option<&T> {
        self.entries.get(index as usize)?.as_ref()
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    /// Every index that may hold an entry; `get` says which do.
    fn indices(&self) -> std::ops::Range<u32> {
        0..self.entries.len() as u32
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().flatten()
    }
}
