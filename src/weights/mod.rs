//! Weights: the name → tensor store a training runtime reads its frozen weights from.
//!
//! Input: loaded tensors (quantized or full precision, from [`crate::quant::QuantStore`])
//! and the plan's offload groups. Output: `get(name)` → a bf16 view, dequantized lazily
//! into a pooled buffer (same-shape buffers are reused); tensors of an offload group live
//! in the [`crate::offload::Manager`]'s host pool and are brought in on demand or by
//! `prefetch_group`. Slices of a stacked tensor with per-slice groups (the experts of a
//! layer) are stored and fetched one by one. Statistics: hits, misses, bytes moved, time
//! waited, buffer reuse.

mod error;
mod pack;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use half::bf16;

use crate::offload::{Backend, GroupId, Manager, Policy};
use crate::plan::{Offload, Plan};
use crate::quant::Stored;

pub use error::Error;
pub use pack::{dequantize_into, full_slice_range, Packed, QuantDesc, QuantLayout};

/// Reusable bf16 buffers, by shape.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<BTreeMap<Vec<u64>, Vec<Vec<bf16>>>>,
    pub reused: std::sync::atomic::AtomicU64,
    pub allocated: std::sync::atomic::AtomicU64,
}

/// A dequantized tensor; its buffer returns to the pool when dropped.
pub struct View {
    pub shape: Vec<u64>,
    data: Vec<bf16>,
    pool: Arc<BufferPool>,
}

impl std::ops::Deref for View {
    type Target = [bf16];
    fn deref(&self) -> &[bf16] {
        &self.data
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if let Ok(mut free) = self.pool.free.lock() {
            free.entry(self.shape.clone()).or_default().push(data);
        }
    }
}

impl BufferPool {
    fn take(self: &Arc<Self>, shape: &[u64]) -> View {
        use std::sync::atomic::Ordering::Relaxed;
        let n = shape.iter().product::<u64>() as usize;
        let reused = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.get_mut(shape).and_then(Vec::pop));
        let data = match reused {
            Some(d) => {
                self.reused.fetch_add(1, Relaxed);
                d
            }
            None => {
                self.allocated.fetch_add(1, Relaxed);
                vec![bf16::ZERO; n]
            }
        };
        View {
            shape: shape.to_vec(),
            data,
            pool: self.clone(),
        }
    }
}

/// Where one stored tensor (or slice) lives: resident as `R` (host `Stored` here, a device
/// tensor on the GPU), or packed at `offset` in an offload group's storage.
pub enum Home<R> {
    Resident(R),
    Offloaded {
        group: GroupId,
        offset: usize,
        packed: Packed,
    },
}

/// The home of every key: the resident ones as given, then the offloaded ones of a placement.
pub fn homes<R>(
    resident: impl IntoIterator<Item = (String, R)>,
    offloaded: BTreeMap<String, (GroupId, usize, Packed)>,
) -> BTreeMap<String, Home<R>> {
    let mut homes: BTreeMap<String, Home<R>> = resident
        .into_iter()
        .map(|(k, v)| (k, Home::Resident(v)))
        .collect();
    for (key, (group, offset, packed)) in offloaded {
        homes.insert(
            key,
            Home::Offloaded {
                group,
                offset,
                packed,
            },
        );
    }
    homes
}

pub struct WeightsManager<B: Backend<Buffer = Vec<u8>>> {
    pub offload: Manager<B>,
    homes: BTreeMap<String, Home<Stored>>,
    pool: Arc<BufferPool>,
}

/// One offloaded tensor or expert slice: where its bytes come from and where they go.
struct Place {
    target: String,
    key: String,
    group: String,
    slice: Option<usize>,
    packed: Packed,
}

/// A loaded tensor as [`place`] sees it: its layout (whole, or one leading slice when its
/// storage allows) and a way to put its bytes at that layout's offsets in the host pool.
/// Host tensors copy; device tensors enqueue copies into the page-locked pool, which the
/// caller waits for before the pool is read.
pub trait Placeable {
    /// The layout of the whole tensor (`slice` `None`) or of leading slice `i`; `None`
    /// when the tensor cannot be packed (a tie) or sliced.
    fn packed(&self, slice: Option<usize>) -> Option<Packed>;
    /// Writes the tensor (or its slice) in `packed`'s layout into `out`, exactly
    /// [`Packed::len`] bytes of the host pool.
    fn write(&self, packed: &Packed, slice: Option<usize>, out: &mut [u8]) -> Result<(), Error>;
}

impl Placeable for Stored {
    fn packed(&self, slice: Option<usize>) -> Option<Packed> {
        match slice {
            None => Some(Packed::of(self)),
            Some(i) => Packed::of_slice(self, i),
        }
    }

    fn write(&self, packed: &Packed, slice: Option<usize>, out: &mut [u8]) -> Result<(), Error> {
        match packed.write(self, slice, out) {
            true => Ok(()),
            false => Err(Error::Internal("a tensor does not fit its packed layout")),
        }
    }
}

/// Loaded tensors split between the device (resident) and offload groups in host memory.
pub struct Placement<B: Backend, S = Stored> {
    pub offload: Manager<B>,
    pub resident: BTreeMap<String, S>,
    /// key → (group, byte offset in the group, layout).
    pub offloaded: BTreeMap<String, (GroupId, usize, Packed)>,
}

/// Places every loaded tensor: targets without an offload group (or that cannot be packed,
/// a tie) stay resident; the others go to their group's host storage (stacked tensors
/// slice by slice when their format allows, else whole under the first slice's group).
/// The pool is page-locked before it is filled, so a device source copies straight in.
pub fn place<B: Backend, S: Placeable>(
    backend: B,
    plan: &Plan,
    mut tensors: BTreeMap<String, S>,
    budget: u64,
    policy: Policy,
) -> Result<Placement<B, S>, Error> {
    let (placed, group_sizes) = layouts(plan, &tensors);
    // Pass 2: straight into the host pool, each tensor freed once its bytes are there,
    // so host memory peaks near the pool's size, not twice it.
    let names: Vec<(String, usize)> = group_sizes.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut offload = Manager::new(backend, &names, budget, policy);
    offload.prepare_host()?;
    let ids: BTreeMap<&str, GroupId> = names
        .iter()
        .filter_map(|(n, _)| Some((n.as_str(), offload.find(n)?)))
        .collect();
    let mut fill: BTreeMap<GroupId, usize> = BTreeMap::new();
    let mut offloaded = BTreeMap::new();
    let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &placed {
        *remaining.entry(p.target.as_str()).or_default() += 1;
    }
    for p in &placed {
        let g = *ids
            .get(p.group.as_str())
            .ok_or(Error::Internal("an offload group vanished"))?;
        let at = fill.entry(g).or_default();
        let len = p.packed.len();
        let stored = tensors
            .get(&p.target)
            .ok_or(Error::Internal("an offloaded tensor vanished"))?;
        let out = offload
            .host_mut(g)?
            .get_mut(*at..*at + len)
            .ok_or(Error::Internal("a group's storage is too small"))?;
        stored.write(&p.packed, p.slice, out)?;
        offloaded.insert(p.key.clone(), (g, *at, p.packed.clone()));
        *at += len;
        if let Some(n) = remaining.get_mut(p.target.as_str()) {
            *n -= 1;
            if *n == 0 {
                tensors.remove(&p.target);
            }
        }
    }
    // Every tensor placed is gone from `tensors`; what is left stays resident.
    Ok(Placement {
        offload,
        resident: tensors,
        offloaded,
    })
}

/// Pass 1 of [`place`], layouts only: each offloaded tensor (or expert slice) and its group,
/// and each group's size. Targets without an offload group, and tensors that cannot be
/// packed (a tie), are not placed: they stay resident.
fn layouts<S: Placeable>(
    plan: &Plan,
    tensors: &BTreeMap<String, S>,
) -> (Vec<Place>, BTreeMap<String, usize>) {
    let mut group_sizes: BTreeMap<String, usize> = BTreeMap::new();
    let mut placed: Vec<Place> = Vec::new();
    for t in &plan.targets {
        let (Some(offload), Some(stored)) = (&t.offload, tensors.get(&t.name)) else {
            continue;
        };
        let Some(whole) = stored.packed(None) else {
            continue;
        };
        let mut put = |key: String, group: &String, slice: Option<usize>, packed: Packed| {
            *group_sizes.entry(group.clone()).or_default() += packed.len();
            placed.push(Place {
                target: t.name.clone(),
                key,
                group: group.clone(),
                slice,
                packed,
            });
        };
        match offload {
            Offload::Group(g) => put(t.name.clone(), g, None, whole),
            Offload::PerSlice(groups) => {
                let slices: Option<Vec<Packed>> =
                    (0..groups.len()).map(|i| stored.packed(Some(i))).collect();
                match (slices, groups.first()) {
                    (Some(slices), _) => {
                        for (i, (p, g)) in slices.into_iter().zip(groups).enumerate() {
                            put(slice_key(&t.name, i), g, Some(i), p);
                        }
                    }
                    (None, Some(first)) => put(t.name.clone(), first, None, whole),
                    (None, None) => {}
                }
            }
        }
    }
    (placed, group_sizes)
}

/// The key of slice `i` of a stacked tensor stored per slice.
pub fn slice_key(name: &str, i: usize) -> String {
    format!("{name}[{i}]")
}

impl<B: Backend<Buffer = Vec<u8>>> WeightsManager<B> {
    /// Places every loaded tensor: targets without an offload group stay resident; the
    /// others go to their group's host storage (stacked tensors slice by slice when their
    /// format allows, else whole under the first slice's group).
    pub fn new(
        backend: B,
        plan: &Plan,
        tensors: BTreeMap<String, Stored>,
        budget: u64,
        policy: Policy,
    ) -> Result<Self, Error> {
        let p = place(backend, plan, tensors, budget, policy)?;
        Ok(WeightsManager {
            offload: p.offload,
            homes: homes(p.resident, p.offloaded),
            pool: Arc::new(BufferPool::default()),
        })
    }

    /// Names (and slice keys) of everything stored.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.homes.keys().map(String::as_str)
    }

    /// A resident tensor as loaded (quantized or full precision), without a copy; `None`
    /// for an unknown or offloaded name. Homes are fixed at construction, so the bytes
    /// stay where they are while the manager lives.
    pub fn resident(&self, name: &str) -> Option<&Stored> {
        match self.homes.get(name)? {
            Home::Resident(s) => Some(s),
            Home::Offloaded { .. } => None,
        }
    }

    /// The group a tensor belongs to, if it is offloaded.
    pub fn group_of(&self, name: &str) -> Option<GroupId> {
        match self.homes.get(name)? {
            Home::Offloaded { group, .. } => Some(*group),
            Home::Resident(_) => None,
        }
    }

    /// A bf16 view of `name` (or of `slice_key(name, i)`), loading its group if needed.
    pub fn get(&mut self, name: &str) -> Result<View, Error> {
        let home = self
            .homes
            .get(name)
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))?;
        match home {
            Home::Resident(stored) => {
                let shape = pack::shape_of(stored);
                let mut view = self.pool.take(&shape);
                pack::dequantize_into(stored, &mut view.data);
                Ok(view)
            }
            Home::Offloaded {
                group,
                offset,
                packed,
            } => {
                let (g, off) = (*group, *offset);
                let packed = packed.clone();
                let buf = self.offload.acquire(g)?;
                let stored = packed.unpack(&buf[off..off + packed.len()]);
                let mut view = self.pool.take(&pack::shape_of(&stored));
                pack::dequantize_into(&stored, &mut view.data);
                self.offload.release(g);
                Ok(view)
            }
        }
    }

    /// Starts bringing a group's tensors to the device.
    pub fn prefetch_group(&mut self, g: GroupId) -> Result<bool, Error> {
        Ok(self.offload.prefetch(g)?)
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }
}
