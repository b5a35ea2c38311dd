//! The host executor for [`Placement::Cpu`](crate::Placement::Cpu). Where the
//! processor has AVX-512F or AVX2 with FMA, each layer's weights are packed once for
//! the crate's kernel ([`packed`]) and a run's work (the members, and a member's
//! layers in blocks of columns where there are more threads than members) is shared
//! by the calling thread and the executor's helper threads ([`team`]). Elsewhere
//! the members run side by side on a `rayon` pool of the crate's own ([`pool`]),
//! each layer through a GEMM crate (`gemm` for batches of at most 8 rows,
//! `matrixmultiply` above, its columns split in blocks when a member has more than
//! one thread to itself), and for one or two rows as dot products of each weight row
//! with the input, spread over threads.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub(crate) mod forward;
pub(crate) mod packed;
pub(crate) mod team;

use forward::{dense, round_f16, threads, Layers};
use rayon::prelude::*;

use crate::aggregate::{accumulate, Mode};
use crate::error::Result;
use crate::exec::{DeviceOutput, Executor, Handles, Loss, MemberSpec, Wants};
use crate::model::Dense;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::uncertainty::Moments;

struct CpuMember {
    index: usize,
    weight: f32,
    layers: Layers,
    /// Its share of a stack's blender (see `MemberSpec::blend`).
    blend: Option<Arc<Dense>>,
}

/// Runs the members placed on the host CPU. A run changes nothing it holds, so clones
/// (which share the packed weights) run on any threads at once.
#[derive(Clone)]
pub(crate) struct CpuExecutor {
    members: Arc<[CpuMember]>,
    mode: Mode,
    output_width: usize,
    /// Round layer inputs to f16 (weights are rounded once, at build).
    f16: bool,
    /// Every member's layers are packed ([`Layers::Packed`]): the run shares its
    /// work with the helpers ([`team`]) on the calling thread; else it goes to
    /// [`pool`], where the GEMM crates' rayon calls run.
    packed: bool,
}

impl CpuExecutor {
    /// With [`Precision::F16`] or `F16CoopMatrix` the weights are rounded to f16 here
    /// and every layer's input as it is read, the rounding of the GPU kernels.
    pub(crate) fn new(
        members: &[MemberSpec],
        mode: Mode,
        output_width: usize,
        precision: Precision,
    ) -> Self {
        let f16 = precision.is_f16();
        let members: Arc<[CpuMember]> = members
            .iter()
            .map(|s| CpuMember {
                index: s.index,
                weight: s.weight,
                blend: s.blend.clone(),
                layers: Layers::new(if f16 {
                    Arc::new(s.model.map_weights(round_f16))
                } else {
                    Arc::clone(&s.model)
                }),
            })
            .collect::<Vec<_>>()
            .into();
        Self {
            packed: members
                .iter()
                .all(|m| matches!(m.layers, Layers::Packed { .. })),
            members,
            mode,
            output_width,
            f16,
        }
    }
}

/// Drops the hidden outputs' buffers kept for later runs ([`forward::spare`]), when
/// a packed model is dropped ([`ReleaseKept`]): the buffers are sized for the models
/// run so far, and one of them is gone; the next runs of a model still alive keep
/// new ones.
pub(crate) fn release_kept() {
    #[cfg(test)]
    tests::RELEASED_HERE.with(|n| n.set(n.get() + 1));
    forward::spare::clear();
}

/// Held by each packed model: its drop calls [`release_kept`].
pub(crate) struct ReleaseKept;

impl Drop for ReleaseKept {
    fn drop(&mut self) {
        release_kept();
    }
}

impl CpuExecutor {
    /// [`Executor::run`] on this thread (on [`pool`] for the GEMM crates, by `run`).
    fn run_here(&self, input: &Tensor, wants: Wants, skip: &[usize]) -> Result<DeviceOutput> {
        let started = Instant::now();
        let rows = input.shape().first().copied().unwrap_or(0);
        let input = input.as_slice();
        let mut partial: Option<Vec<f32>> = None;
        let mut members = Vec::new();
        let mut present = Vec::new();
        // The members side by side, each with its share of the threads; their outputs
        // are combined in the members' order, so the sums do not depend on timing.
        let active: Vec<&CpuMember> = self
            .members
            .iter()
            .filter(|m| !skip.contains(&m.index))
            .collect();
        let f16 = self.f16;
        let outputs: Vec<Vec<f32>> = if self.packed {
            let width = team::width();
            let parts = (width / active.len().max(1)).max(1);
            let slots: Vec<OnceLock<Vec<f32>>> = active.iter().map(|_| OnceLock::new()).collect();
            team::for_each(active.len(), width, |i| {
                let _ = slots[i].set(active[i].layers.forward(input, rows, f16, parts));
            });
            // Every task ran (a panic would have been raised again above).
            slots
                .into_iter()
                .map(|s| s.into_inner().unwrap_or_default())
                .collect()
        } else {
            let parts = (threads() / active.len().max(1)).max(1);
            active
                .par_iter()
                .map(|m| m.layers.forward(input, rows, f16, parts))
                .collect()
        };
        let shares: Vec<Share> = active
            .iter()
            .zip(&outputs)
            .map(|(m, y)| (y.as_slice(), m.weight, m.blend.as_deref()))
            .collect();
        let (blend, moments) =
            blend_and_statistics(&shares, rows, self.output_width, wants.moments);
        let moments: Vec<Moments> = moments.into_iter().collect();
        for (m, mut y) in active.into_iter().zip(outputs) {
            present.push(m.index);
            match &mut partial {
                // The first member's weighted output is the partial sum (0 + w·y is
                // w·y): no buffer of zeros and no pass to add to it.
                None if self.mode == Mode::Values && !wants.members => {
                    if m.weight != 1.0 {
                        y.iter_mut().for_each(|v| *v *= m.weight);
                    }
                    partial = Some(y);
                }
                _ => {
                    let sum = partial.get_or_insert_with(|| vec![0.0; rows * self.output_width]);
                    accumulate(sum, &y, self.output_width, m.weight, self.mode);
                    if wants.members {
                        members.push((m.index, y));
                    }
                }
            }
        }
        Ok(DeviceOutput {
            partial: partial.unwrap_or_else(|| vec![0.0; rows * self.output_width]),
            members,
            blend,
            moments,
            present,
            failed: Vec::new(),
            elapsed: started.elapsed(),
            device_time: None,
        })
    }
}

/// A member's output, its aggregate weight and its share of a stack's blender.
pub(crate) type Share<'a> = (&'a [f32], f32, Option<&'a Dense>);

/// What a device sends besides its members' sum: a stack's blender's first layer
/// summed over the members in their order, and (where `moments`) the uncertainty
/// statistics of those of positive weight (a member of weight 0 adds nothing to the
/// aggregate or to them). Both go through rayon, so on [`pool`]: handed off only
/// when there is any, and at once from the pool's own threads.
pub(crate) fn blend_and_statistics(
    shares: &[Share],
    rows: usize,
    output_width: usize,
    moments: bool,
) -> (Vec<f32>, Option<Moments>) {
    let weighted: Vec<(&[f32], f32)> = shares
        .iter()
        .filter(|(_, w, _)| moments && *w > 0.0)
        .map(|&(y, w, _)| (y, w))
        .collect();
    if weighted.is_empty() && shares.iter().all(|(_, _, b)| b.is_none()) {
        return (Vec::new(), None);
    }
    on_pool(|| {
        let mut blend: Vec<f32> = Vec::new();
        for &(y, _, block) in shares {
            if let Some(block) = block {
                let z = dense(block, y, rows, threads());
                if blend.is_empty() {
                    blend = z;
                } else {
                    blend.iter_mut().zip(&z).for_each(|(a, v)| *a += v);
                }
            }
        }
        let statistics = (!weighted.is_empty()).then(|| Moments::of(&weighted, rows, output_width));
        (blend, statistics)
    })
}

/// [`pool`], once started (`None` in it: it could not be).
static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();

/// The threads of the host's work that goes through rayon (the GEMM crates' path,
/// a stack's blender's share, the uncertainty statistics): a `rayon` pool of the
/// crate's own, as many threads as rayon's global pool would have
/// (`RAYON_NUM_THREADS`, else one per core); `None` if it could not be started (the
/// global pool then runs them). Not the global pool, where callers of
/// [`Session::run`](crate::Session::run) or [`Pipeline::recv`](crate::Pipeline::recv)
/// on rayon's threads (a parallel loop of runs) would block the very threads a CPU
/// worker's layers wait for.
pub(crate) fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(host_threads())
            .thread_name(|i| format!("wgpu-ensemble cpu {i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The threads the host runs on, [`pool`]'s and the caller's with the helpers
/// ([`team::width`]): `RAYON_NUM_THREADS` where it is a positive number (as rayon
/// reads it), else one per processor this process may use.
pub(crate) fn host_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

/// Runs `job` on [`pool`] (at once when already on it), the caller waiting.
pub(crate) fn on_pool<T: Send>(job: impl FnOnce() -> T + Send) -> T {
    match pool() {
        Some(pool) => pool.install(job),
        None => job(),
    }
}

impl Executor for CpuExecutor {
    fn run(&mut self, input: &Tensor, wants: Wants, skip: &[usize]) -> Result<DeviceOutput> {
        let this = &*self;
        if this.packed {
            // The packed kernel's work is shared by this thread and the helpers
            // (`team`), with no hand-off.
            this.run_here(input, wants, skip)
        } else {
            on_pool(|| this.run_here(input, wants, skip))
        }
    }

    fn concurrent(&self) -> Option<Handles> {
        let this = self.clone();
        Some(Arc::new(move || {
            Box::new(this.clone()) as Box<dyn Executor>
        }))
    }

    /// The host cannot be lost: its members fail the job instead.
    fn lose_device(&mut self, _permanently: bool) -> Loss {
        Loss::NoDevice
    }

    /// Nothing outlives a run on the host.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, PoisonError};

    /// The tests that fill and empty the kept buffers, one at a time: each would see
    /// the other's.
    static KEPT: Mutex<()> = Mutex::new(());

    /// The kept buffers' releases, buffers given to be kept and takes from them in
    /// this process (by every test running), each counted under the list's lock.
    pub(super) static RELEASES: AtomicUsize = AtomicUsize::new(0);
    pub(super) static GIVES: AtomicUsize = AtomicUsize::new(0);
    pub(super) static TAKES: AtomicUsize = AtomicUsize::new(0);

    std::thread_local! {
        /// Calls of [`release_kept`] on this thread.
        pub(super) static RELEASED_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// `attempt`'s result from a try during which no other test gave, took or
    /// released kept buffers (other tests' runs and dropped models do): tries for
    /// up to 20 s. Each try gives one buffer, takes `takes` and releases once itself.
    fn undisturbed<T>(takes: usize, mut attempt: impl FnMut() -> T) -> T {
        let counts = || [&RELEASES, &GIVES, &TAKES].map(|c| c.load(Ordering::SeqCst));
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            let [releases, gives, taken] = counts();
            let result = attempt();
            if counts() == [releases + 1, gives + 1, taken + takes] {
                return result;
            }
            std::thread::yield_now();
        }
        panic!("other tests gave, took or released kept buffers during every try for 20 s");
    }

    /// A model packed for this processor (`None`, said, where it has no packed
    /// kernel).
    fn packed(model: &Arc<crate::Model>) -> Option<Layers> {
        let layers = Layers::new(Arc::clone(model));
        if matches!(layers, Layers::Packed { .. }) {
            Some(layers)
        } else {
            eprintln!("skipped: no packed kernel for this processor");
            None
        }
    }

    /// A run keeps its hidden output's buffer, and dropping a packed model drops
    /// the kept buffers.
    #[test]
    fn dropping_a_packed_model_releases_the_kept_buffers() {
        let _one = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let model = Arc::new(
            crate::Model::random(
                &[64, 1024, 8],
                &[crate::Activation::Relu, crate::Activation::Identity],
                3,
            )
            .unwrap(),
        );
        let Some(probe) = packed(&model) else {
            return;
        };
        drop(probe);
        let (kept, after) = undisturbed(1, || {
            let layers = Layers::new(Arc::clone(&model));
            // 256 rows × 1024 hidden values: a 1 MiB buffer, given back after the
            // second layer has read it.
            let x = vec![0.5f32; 256 * 64];
            layers.forward(&x, 256, false, 2);
            let kept = forward::spare::kept_bytes();
            let before = RELEASED_HERE.with(std::cell::Cell::get);
            drop(layers);
            let released = RELEASED_HERE.with(std::cell::Cell::get) - before;
            assert_eq!(released, 1, "releases when one packed model was dropped");
            (kept, forward::spare::kept_bytes())
        });
        assert!(kept >= 1 << 20, "{kept} bytes kept after a run");
        assert_eq!(after, 0, "bytes kept after the model was dropped");
    }

    /// A release drops every kept buffer.
    #[test]
    fn a_release_drops_the_kept_buffers() {
        let _one = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let (filled, after) = undisturbed(0, || {
            forward::spare::give(Vec::with_capacity(1 << 18));
            let filled = forward::spare::kept_bytes();
            release_kept();
            (filled, forward::spare::kept_bytes())
        });
        assert!(filled >= 1 << 20, "kept {filled} bytes after a give");
        assert_eq!(after, 0, "bytes kept after the release");
    }

    /// With the packed kernel, the thread that calls a run works on it (rather than
    /// hand it to a pool and wait).
    #[test]
    fn a_packed_run_works_on_the_calling_thread() {
        let model = Arc::new(
            crate::Model::random(
                &[32, 64, 4],
                &[crate::Activation::Relu, crate::Activation::Identity],
                7,
            )
            .unwrap(),
        );
        if packed(&model).is_none() || team::width() < 2 {
            eprintln!("skipped: no packed kernel, or one thread for the host");
            return;
        }
        let specs: Vec<MemberSpec> = (0..4)
            .map(|index| MemberSpec {
                index,
                name: format!("m{index}"),
                model: Arc::clone(&model),
                weight: 1.0,
                blend: None,
                first_layer: 0,
            })
            .collect();
        let mut executor = CpuExecutor::new(&specs, Mode::Values, 4, Precision::F32);
        let x = Tensor::matrix(8, 32, vec![0.25; 8 * 32]).unwrap();
        let before = team::TASKS_HERE.get();
        for _ in 0..20 {
            executor.run(&x, Wants::default(), &[]).unwrap();
        }
        let here = team::TASKS_HERE.get() - before;
        assert!(
            here > 0,
            "no member of 20 runs of 4 ran on the calling thread"
        );
    }
}
