//! Load: execute a plan — read, convert, fuse/stack/slice — and hand each target to a sink.
//!
//! Input: a [`Plan`], its [`Checkpoint`] and a [`Sink`]. Output: every target, assembled in
//! the runtime layout, delivered once; tied targets are delivered as ties (no second read,
//! no second copy). Streaming: targets are assembled on all cores, each into a buffer
//! taken from a pool that sinks hand buffers back to, so memory in flight is bounded by
//! threads × the largest target, whatever the checkpoint's size (a sink that keeps the
//! tensors, like [`HostStore`], holds what it keeps). A sink that quantizes takes a
//! quantizable target whose recipe only reads ([`Runs`]) straight from the checkpoint, a
//! cache-sized piece at a time, so its full-precision bytes need no buffer of their own
//! ([`Sink::takes_runs`]). Before a byte is read, every target's peak (its buffer plus
//! the scratch its recipe needs) is checked against the memory budget, so a 1 TiB tensor
//! is a coded E0515, never an aborted allocation.
//! Knows nothing of architectures.

mod assemble;
mod convert;
mod fp8_rows;
mod memory;
pub mod output;
pub mod prequant;
mod runs;
mod sink;
mod write;

use std::time::{Duration, Instant};

use rayon::prelude::*;

pub use convert::{convert, convertible, e4m3_to_f32, e5m2_to_f32, is_training_float};
pub use memory::{bytes_of, physical_memory, reserve_populated, touch_pages, try_zeroed, zeroed};
pub use runs::Runs;
pub use sink::{tie, HostStore, HostTensor, Sink};
pub use write::{Entry, FileLayout, SafetensorsWriter};

use crate::checkpoint::Checkpoint;
use crate::diag::{Code, Diagnostic};
use crate::plan::{Plan, Recipe, Target};

/// How a load runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Worker threads; 0 uses every core.
    pub threads: usize,
    /// The most bytes one target may need while assembled; `None`: physical memory.
    pub memory_budget: Option<u64>,
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tensors: usize,
    pub tied: usize,
    /// Checkpoint bytes read.
    pub bytes_read: u64,
    /// Bytes delivered to the sink (tied targets not counted).
    pub bytes_out: u64,
    pub elapsed: Duration,
}

impl Stats {
    /// Read throughput in GB/s (10^9 bytes).
    pub fn gbps(&self) -> f64 {
        self.bytes_read as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Bytes of a target that passed [`memory::check_target`], so within 64 bits.
fn target_bytes(t: &Target) -> u64 {
    bytes_of(&t.shape, t.dtype).unwrap_or(u64::MAX)
}

/// Checkpoint bytes a target's recipe reads.
pub fn read_bytes(t: &Target) -> u64 {
    t.recipe.read_bytes()
}

/// Assembles one target into `out` (its exact bytes in its dtype) on the CPU.
pub fn fill_target(ckpt: &Checkpoint, target: &Target, out: &mut [u8]) -> Result<(), Diagnostic> {
    assemble::fill(ckpt, &target.recipe, target.dtype, out)
}

/// A buffer of exactly `n` bytes: the smallest pooled one that fits, else the largest
/// pooled one grown to fit, else a new one. So the pool never holds more buffers than
/// run at once, and its memory is bounded by threads × the largest target. Old contents
/// are left in place: `fill` writes every byte of a target.
fn take_buffer(
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    n: usize,
    name: &str,
) -> Result<Vec<u8>, Diagnostic> {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    let fits = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= n)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    let pick = fits.or_else(|| {
        pool.iter()
            .enumerate()
            .max_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
    });
    let taken = pick.map(|i| pool.swap_remove(i));
    drop(pool);
    let Some(mut b) = taken else {
        // Nothing pooled: fresh zeroed pages, populated, with no second write of zeros.
        return try_zeroed(n).ok_or_else(|| {
            memory::too_large(
                name,
                format!("a {n}-byte buffer, which cannot be allocated"),
            )
        });
    };
    if b.len() > n {
        b.truncate(n);
    } else {
        let more = n - b.len();
        reserve_populated(&mut b, more).map_err(|e| {
            memory::too_large(
                name,
                format!("a {n}-byte buffer, which cannot be allocated: {e}"),
            )
        })?;
        b.resize(n, 0);
    }
    Ok(b)
}

/// Runs the plan. `progress` is called with the bytes read after each target.
pub fn execute(
    plan: &Plan,
    ckpt: &Checkpoint,
    sink: &dyn Sink,
    options: Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Stats, Diagnostic> {
    let start = Instant::now();
    let mut stats = Stats::default();
    // Buffers handed back by the sink, reused for later targets.
    let pool: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let (ties, owned): (Vec<&Target>, Vec<&Target>) = plan
        .targets
        .iter()
        .partition(|t| matches!(t.recipe, Recipe::Tied { .. }));
    let budget = options.memory_budget.unwrap_or_else(physical_memory);
    let sizes = owned
        .iter()
        .map(|t| memory::check_target(t, budget))
        .collect::<Result<Vec<usize>, Diagnostic>>()?;
    let run = || {
        owned
            .par_iter()
            .zip(&sizes)
            .with_max_len(1)
            .map(|(t, &n)| {
                if let Some(q) = prequant::stored_as(ckpt, t, sink.quantizes_to())? {
                    sink.stored_quantized(t, q)?;
                    progress(read_bytes(t));
                    return Ok(());
                }
                if sink.takes_runs(t) {
                    let runs = Runs::of(ckpt, &t.recipe, t.dtype);
                    if let Some(runs) = runs.filter(|r| r.len() == n as u64) {
                        sink.tensor_runs(t, &runs)?;
                        progress(read_bytes(t));
                        return Ok(());
                    }
                }
                let mut data = take_buffer(&pool, n, &t.name)?;
                assemble::fill(ckpt, &t.recipe, t.dtype, &mut data)?;
                if let Some(back) = sink.tensor(t, data)? {
                    pool.lock().unwrap_or_else(|p| p.into_inner()).push(back);
                }
                progress(read_bytes(t));
                Ok(())
            })
            .collect::<Result<Vec<()>, Diagnostic>>()
    };
    match options.threads {
        0 => run()?,
        n => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Diagnostic::new(Code::E0901, format!("cannot start {n} threads: {e}")))?
            .install(run)?,
    };
    for t in &owned {
        stats.tensors += 1;
        stats.bytes_read += read_bytes(t);
        stats.bytes_out += target_bytes(t);
    }
    for t in ties {
        if let Recipe::Tied { target } = &t.recipe {
            sink.tied(t, target)?;
            stats.tensors += 1;
            stats.tied += 1;
        }
    }
    sink.finish()?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}
