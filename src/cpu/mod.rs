//! The host executor for [`Placement::Cpu`](crate::Placement::Cpu): the members run
//! side by side on `rayon`'s threads, each layer through a GEMM crate (`gemm` for
//! batches of at most 8 rows, `matrixmultiply` above, its columns split in blocks
//! when a member has more than one thread to itself), and for one or two rows as dot
//! products of each weight row with the input, spread over threads.

use std::sync::Arc;
use std::time::Instant;

pub(crate) mod forward;
pub(crate) mod packed;

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
        Self {
            members: members
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
                .into(),
            mode,
            output_width,
            f16,
        }
    }
}

/// The pool's threads drop the hidden outputs' buffers they keep
/// ([`forward::spare`]), when a packed model is dropped ([`ReleaseKept`]): the buffers
/// are sized for the models run so far, and one of them is gone; the next run of a
/// model still alive keeps new ones. Queued, not waited for: a run that starts
/// meanwhile only finds fewer buffers kept. Does not start the pool where it has not
/// started; where it could not be started, runs keep their buffers on the threads
/// that called them, which this does not reach.
pub(crate) fn release_kept() {
    #[cfg(test)]
    tests::RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(pool) = POOL.get().and_then(Option::as_ref) {
        pool.spawn_broadcast(|_| forward::spare::clear());
    }
}

/// Held by each packed model: its drop calls [`release_kept`].
pub(crate) struct ReleaseKept;

impl Drop for ReleaseKept {
    fn drop(&mut self) {
        release_kept();
    }
}

impl CpuExecutor {
    /// [`Executor::run`] on this thread (on [`pool`], by `run`).
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
        let parts = (threads() / active.len().max(1)).max(1);
        let f16 = self.f16;
        let outputs: Vec<Vec<f32>> = active
            .par_iter()
            .map(|m| m.layers.forward(input, rows, f16, parts))
            .collect();
        // The uncertainty statistics of the members that ran (those of positive weight:
        // a member of weight 0 adds nothing to the aggregate or to them).
        let moments: Vec<Moments> = if wants.moments {
            let weighted: Vec<(&[f32], f32)> = active
                .iter()
                .zip(&outputs)
                .filter(|(m, _)| m.weight > 0.0)
                .map(|(m, y)| (y.as_slice(), m.weight))
                .collect();
            if weighted.is_empty() {
                Vec::new()
            } else {
                vec![Moments::of(&weighted, rows, self.output_width)]
            }
        } else {
            Vec::new()
        };
        // A stack's blender's first layer, summed over the members in their order.
        let mut blend: Vec<f32> = Vec::new();
        for (m, y) in active.iter().zip(&outputs) {
            if let Some(block) = &m.blend {
                let z = dense(block, y, rows, threads());
                if blend.is_empty() {
                    blend = z;
                } else {
                    blend.iter_mut().zip(&z).for_each(|(a, v)| *a += v);
                }
            }
        }
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

/// [`pool`], once started (`None` in it: it could not be).
static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();

/// The threads the host CPU's members run on: a `rayon` pool of the crate's own, as
/// many threads as rayon's global pool would have (`RAYON_NUM_THREADS`, else one per
/// core); `None` if it could not be started (the global pool then runs them). Not the
/// global pool, where callers of [`Session::run`](crate::Session::run) or
/// [`Pipeline::recv`](crate::Pipeline::recv) on rayon's threads (a parallel loop of
/// runs) would block the very threads a CPU worker's layers wait for.
pub(crate) fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("wgpu-ensemble cpu {i}"))
            .build()
            .ok()
    })
    .as_ref()
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
        on_pool(|| this.run_here(input, wants, skip))
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

    /// The tests that fill and empty the pool's kept buffers, one at a time: each
    /// would see the other's.
    static KEPT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The pool, for one of the tests of the kept buffers at a time (`None`, said, if
    /// it could not be started).
    fn kept_test() -> Option<(
        std::sync::MutexGuard<'static, ()>,
        &'static rayon::ThreadPool,
    )> {
        let one = KEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(pool) = pool() else {
            eprintln!("skipped: the CPU pool could not be started");
            return None;
        };
        Some((one, pool))
    }

    /// Calls of [`release_kept`] in this process.
    pub(super) static RELEASES: AtomicUsize = AtomicUsize::new(0);

    /// `attempt`'s result from a try during which no other test released the kept
    /// buffers (another test's packed model dropped meanwhile releases them too): up
    /// to 50 tries.
    fn undisturbed<T>(mut attempt: impl FnMut() -> T) -> T {
        for _ in 0..50 {
            let releases = RELEASES.load(Ordering::SeqCst);
            let result = attempt();
            if RELEASES.load(Ordering::SeqCst) == releases {
                return result;
            }
        }
        panic!("other tests released the kept buffers during each of 50 tries");
    }

    /// Bytes kept on each of the pool's threads.
    fn kept(pool: &rayon::ThreadPool) -> Vec<usize> {
        pool.broadcast(|_| forward::spare::kept_bytes())
    }

    /// Dropping a packed model has the pool's threads drop the buffers they kept for
    /// its hidden outputs.
    #[test]
    fn dropping_a_packed_model_releases_the_kept_buffers() {
        let Some((_one, pool)) = kept_test() else {
            return;
        };
        let model = Arc::new(
            crate::Model::random(
                &[64, 1024, 8],
                &[crate::Activation::Relu, crate::Activation::Identity],
                3,
            )
            .unwrap(),
        );
        if !matches!(Layers::new(Arc::clone(&model)), Layers::Packed { .. }) {
            eprintln!("skipped: no packed kernel for this processor");
            return;
        }
        let (layers, bytes) = undisturbed(|| {
            let layers = Layers::new(Arc::clone(&model));
            // 256 rows × 1024 hidden values: a 1 MiB buffer, kept by the thread that
            // ran it.
            let x = vec![0.5f32; 256 * 64];
            on_pool(|| layers.forward(&x, 256, false, 2));
            let bytes: usize = kept(pool).iter().sum();
            (layers, bytes)
        });
        assert!(bytes >= 1 << 20, "{bytes} bytes kept after a run");
        drop(layers);
        // Queued after the release on every thread, so run after it.
        let after = kept(pool);
        assert!(
            after.iter().all(|&a| a == 0),
            "kept after the model was dropped: {after:?} bytes"
        );
    }

    /// The pool's threads drop their kept buffers when asked.
    #[test]
    fn released_buffers_leave_the_pools_threads() {
        let Some((_one, pool)) = kept_test() else {
            return;
        };
        let filled = undisturbed(|| {
            pool.broadcast(|_| forward::spare::give(Vec::with_capacity(1 << 18)));
            kept(pool)
        });
        for (thread, f) in filled.iter().enumerate() {
            assert!(
                *f >= 1 << 20,
                "thread {thread}: kept {f} bytes after a give"
            );
        }
        release_kept();
        // Queued after the release on every thread, so run after it.
        let after = kept(pool);
        assert!(
            after.iter().all(|&a| a == 0),
            "kept after the release: {after:?} bytes"
        );
    }
}
