//! Offload: groups of tensors kept in host memory and moved to the device on demand,
//! within a device budget.
//!
//! Input: groups (their bytes, written once into one host pool allocated up front), a
//! [`Backend`], a budget in bytes and a [`Policy`]. Output: device buffers for the groups
//! in use, loaded asynchronously and evicted when room is needed. Invariants, checked by
//! the randomized stress test after every step: resident plus in-flight bytes never exceed
//! the budget; a group in use, in flight or pinned is never evicted; frozen weights are
//! never written back (eviction just drops the device copy).

mod backend;
mod error;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use backend::{Backend, HostBackend, HostTicket};
pub use error::Error;

pub type GroupId = usize;

/// How a victim is chosen when room is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The least recently used group.
    Lru,
    /// Record the access order of the first pass; afterwards evict the group whose next use
    /// in that order is farthest away, and prefetch the next groups. In a cyclic sweep
    /// plain LRU evicts exactly the group needed next.
    OrderAware,
}

enum State<B: Backend> {
    Host,
    Loading(B::Ticket),
    Resident(B::Buffer),
}

struct Group<B: Backend> {
    name: String,
    range: std::ops::Range<usize>,
    state: State<B>,
    pinned: bool,
    users: u32,
    last_use: u64,
}

/// Counters a runtime can report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Acquires that found the group resident or already on its way (prefetched); how much
    /// of a prefetch's copy was not hidden shows in `waited`.
    pub hits: u64,
    /// Acquires that had to start the copy themselves.
    pub misses: u64,
    pub bytes_moved: u64,
    pub evictions: u64,
    pub prefetches: u64,
    pub waited: Duration,
}

// Field order matters: the backend (which may have page-locked the host pool) drops
// before the pool does.
pub struct Manager<B: Backend> {
    backend: B,
    host: Arc<Vec<u8>>,
    groups: Vec<Group<B>>,
    budget: u64,
    policy: Policy,
    clock: u64,
    /// The first pass's access order, and whether it is complete.
    order: Vec<GroupId>,
    order_done: bool,
    /// Where in the recorded order the last access was.
    position: usize,
    /// How many groups ahead order-aware prefetch loads.
    pub lookahead: usize,
    pub stats: Stats,
}

impl<B: Backend> Manager<B> {
    /// Lays out the groups (name, bytes) in one host pool of their total size.
    pub fn new(backend: B, groups: &[(String, usize)], budget: u64, policy: Policy) -> Manager<B> {
        let mut at = 0;
        let groups: Vec<Group<B>> = groups
            .iter()
            .map(|(name, bytes)| {
                let g = Group {
                    name: name.clone(),
                    range: at..at + bytes,
                    state: State::Host,
                    pinned: false,
                    users: 0,
                    last_use: 0,
                };
                at += bytes;
                g
            })
            .collect();
        Manager {
            backend,
            host: Arc::new(vec![0u8; at]),
            groups,
            budget,
            policy,
            clock: 0,
            order: Vec::new(),
            order_done: false,
            position: 0,
            lookahead: 2,
            stats: Stats::default(),
        }
    }

    /// Bytes of the host pool (all groups).
    pub fn host_bytes(&self) -> u64 {
        self.host.len() as u64
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn name(&self, g: GroupId) -> &str {
        &self.groups[g].name
    }

    pub fn find(&self, name: &str) -> Option<GroupId> {
        self.groups.iter().position(|x| x.name == name)
    }

    /// Faults the host pool's pages in on several threads, then lets the backend ready it
    /// (page-lock it), before the pool is filled. The kernel zeroes each new page; one
    /// thread does that at a few GB/s, so a multi-GB pool is faulted in parallel.
    pub fn prepare_host(&mut self) -> Result<(), Error> {
        if let Some(host) = Arc::get_mut(&mut self.host) {
            crate::load::touch_pages(host);
        }
        self.backend.prepare(&self.host)
    }

    /// The host storage of a group, to fill once before the first load.
    pub fn host_mut(&mut self, g: GroupId) -> Result<&mut [u8], Error> {
        let range = self.groups[g].range.clone();
        Arc::get_mut(&mut self.host)
            .map(|h| &mut h[range])
            .ok_or(Error::Internal(
                "host storage is shared with a copy in flight",
            ))
    }

    fn bytes(&self, g: GroupId) -> u64 {
        self.groups[g].range.len() as u64
    }

    /// Bytes resident or in flight on the device.
    pub fn device_bytes(&self) -> u64 {
        (0..self.groups.len())
            .filter(|&g| !matches!(self.groups[g].state, State::Host))
            .map(|g| self.bytes(g))
            .sum()
    }

    pub fn is_resident(&self, g: GroupId) -> bool {
        matches!(self.groups[g].state, State::Resident(_))
    }

    pub fn is_loading(&self, g: GroupId) -> bool {
        matches!(self.groups[g].state, State::Loading(_))
    }

    pub fn users(&self, g: GroupId) -> u32 {
        self.groups[g].users
    }

    pub fn is_pinned(&self, g: GroupId) -> bool {
        self.groups[g].pinned
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Keeps a group resident for good (it still counts against the budget).
    pub fn pin(&mut self, g: GroupId) -> Result<(), Error> {
        self.start_load(g, true)?;
        self.finish_load(g)?;
        self.groups[g].pinned = true;
        Ok(())
    }

    /// Starts loading `g` if it is not on the device. Returns false when there is no room
    /// without evicting something in use (a prefetch then simply does not happen).
    pub fn prefetch(&mut self, g: GroupId) -> Result<bool, Error> {
        if !matches!(self.groups[g].state, State::Host) {
            return Ok(true);
        }
        let started = self.start_load(g, false)?;
        if started {
            self.stats.prefetches += 1;
        }
        Ok(started)
    }

    /// Marks `g` in use, loading it (and waiting) if needed; returns its device buffer.
    /// Every `acquire` needs a matching [`Manager::release`].
    pub fn acquire(&mut self, g: GroupId) -> Result<&B::Buffer, Error> {
        self.record(g);
        // A prefetch whose copy has finished is a hit: the copy was hidden.
        let arrived = match &mut self.groups[g].state {
            State::Loading(t) => self.backend.is_done(t),
            _ => false,
        };
        if arrived {
            self.finish_load(g)?;
        }
        match self.groups[g].state {
            State::Resident(_) | State::Loading(_) => self.stats.hits += 1,
            State::Host => {
                self.stats.misses += 1;
                if !self.start_load(g, true)? {
                    return Err(Error::DoesNotFit {
                        group: self.groups[g].name.clone(),
                        bytes: self.bytes(g),
                        budget: self.budget,
                    });
                }
            }
        }
        self.finish_load(g)?;
        self.clock += 1;
        let grp = &mut self.groups[g];
        grp.users += 1;
        grp.last_use = self.clock;
        if self.policy == Policy::OrderAware && self.order_done {
            self.prefetch_ahead()?;
        }
        match &self.groups[g].state {
            State::Resident(b) => Ok(b),
            _ => Err(Error::Internal("a loaded group is not resident")),
        }
    }

    pub fn release(&mut self, g: GroupId) {
        let grp = &mut self.groups[g];
        grp.users = grp.users.saturating_sub(1);
    }

    /// Drops the device copy of `g` if nothing uses it (frozen: nothing to write back).
    pub fn unload(&mut self, g: GroupId) -> Result<bool, Error> {
        let grp = &self.groups[g];
        if grp.users > 0 || grp.pinned {
            return Ok(false);
        }
        if let State::Loading(_) = grp.state {
            self.finish_load(g)?;
        }
        self.groups[g].state = State::Host;
        Ok(true)
    }

    /// Completes loads that have finished, without blocking.
    pub fn poll(&mut self) {
        for g in 0..self.groups.len() {
            let done = match &mut self.groups[g].state {
                State::Loading(t) => self.backend.is_done(t),
                _ => false,
            };
            if done {
                let _ = self.finish_load(g);
            }
        }
    }

    fn record(&mut self, g: GroupId) {
        if self.policy != Policy::OrderAware {
            return;
        }
        if !self.order_done {
            // Several tensors of one group read back to back (an expert's gate_up, then
            // its down) are one use of the group, not the end of the first pass.
            if self.order.last() == Some(&g) {
                return;
            }
            if self.order.first() == Some(&g) {
                self.order_done = true;
            } else {
                self.order.push(g);
                self.position = self.order.len() - 1;
                return;
            }
        }
        // Find g at or after the current position in the cyclic order.
        let n = self.order.len();
        if let Some(k) = (0..n)
            .map(|k| (self.position + k) % n)
            .find(|&i| self.order[i] == g)
        {
            self.position = k;
        }
    }

    /// Distance (in accesses) from the current position to `g`'s next use in the recorded
    /// order; groups never seen are the farthest.
    fn next_use(&self, g: GroupId) -> usize {
        let n = self.order.len();
        (1..=n)
            .find(|&k| self.order[(self.position + k) % n] == g)
            .unwrap_or(usize::MAX)
    }

    fn prefetch_ahead(&mut self) -> Result<(), Error> {
        let n = self.order.len();
        for k in 1..=self.lookahead.min(n) {
            let g = self.order[(self.position + k) % n];
            if matches!(self.groups[g].state, State::Host) && !self.start_load(g, false)? {
                break;
            }
            if matches!(self.groups[g].state, State::Loading(_)) {
                self.stats.prefetches += 1;
            }
        }
        Ok(())
    }

    /// Makes room and starts the copy. `must` allows evicting any idle group; a prefetch
    /// only evicts groups needed later than the one it brings in.
    fn start_load(&mut self, g: GroupId, must: bool) -> Result<bool, Error> {
        if !matches!(self.groups[g].state, State::Host) {
            return Ok(true);
        }
        let need = self.bytes(g);
        if need > self.budget {
            return Ok(false);
        }
        while self.device_bytes() + need > self.budget {
            match self.victim(g, must) {
                Some(v) => {
                    self.groups[v].state = State::Host;
                    self.stats.evictions += 1;
                }
                None => {
                    // A demand load may wait for a copy in flight, which then becomes
                    // evictable; a prefetch gives up instead.
                    let in_flight = (0..self.groups.len())
                        .find(|&v| v != g && matches!(self.groups[v].state, State::Loading(_)));
                    match in_flight {
                        Some(v) if must => self.finish_load(v)?,
                        _ => return Ok(false),
                    }
                }
            }
        }
        let ticket = self
            .backend
            .start_copy(&self.host, self.groups[g].range.clone())?;
        self.groups[g].state = State::Loading(ticket);
        self.stats.bytes_moved += need;
        Ok(true)
    }

    /// An idle resident group to evict: never in use, in flight, pinned, or `for_g` itself.
    fn victim(&self, for_g: GroupId, must: bool) -> Option<GroupId> {
        let idle = (0..self.groups.len()).filter(|&v| {
            let grp = &self.groups[v];
            v != for_g && grp.users == 0 && !grp.pinned && matches!(grp.state, State::Resident(_))
        });
        if self.policy == Policy::OrderAware && self.order_done {
            let mine = self.next_use(for_g);
            idle.map(|v| (self.next_use(v), v))
                .filter(|(d, _)| must || *d > mine)
                .max()
                .map(|(_, v)| v)
        } else if must {
            idle.min_by_key(|&v| self.groups[v].last_use)
        } else {
            None
        }
    }

    fn finish_load(&mut self, g: GroupId) -> Result<(), Error> {
        if let State::Loading(_) = self.groups[g].state {
            let t0 = Instant::now();
            let State::Loading(ticket) = std::mem::replace(&mut self.groups[g].state, State::Host)
            else {
                return Ok(());
            };
            let buf = self.backend.wait(ticket)?;
            self.stats.waited += t0.elapsed();
            self.groups[g].state = State::Resident(buf);
        }
        Ok(())
    }

    /// The device buffer of a resident group.
    pub fn buffer(&self, g: GroupId) -> Option<&B::Buffer> {
        match &self.groups[g].state {
            State::Resident(b) => Some(b),
            _ => None,
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}
