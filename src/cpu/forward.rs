//! The forward pass on the host: each layer as dot products (one or two rows), the
//! `gemm` crate's small-matrix kernels (up to 8 rows) or `matrixmultiply` (above,
//! single-threaded on blocks of columns), then the bias and activation with the WGSL
//! kernels' formulas.

use std::sync::Arc;

use super::packed::{Isa, PackedLayer};
use super::ReleaseKept;
use crate::model::{Activation, Dense, Model};

/// Rows up to which a layer runs as dot products, each weight row with each input
/// row, the outputs split among threads: the weights stream from memory once, at its
/// bandwidth. The GEMM crates are slower there, about even at 4 rows
/// (benches/results/cpu-2026-11-26/NOTES.md).
const DOT_ROWS: usize = 2;

/// Outputs per task of the dot-product path.
const DOT_CHUNK: usize = 64;

/// Rows up to which the `gemm` crate's small-matrix kernels run a layer; above,
/// `matrixmultiply`. Single-threaded, with the members side by side, they are even at
/// 8 rows (E1's layers: 0.70 / 0.71 ms a run), `gemm` ahead below (0.59 / 0.77 ms at
/// 3 rows) and `matrixmultiply` above (0.62 / 0.91 ms at 16 rows); 2-core Xeon,
/// 2026-12-05.
const SMALL_ROWS: usize = 8;

/// A member's layers in the form the host runs them.
pub(crate) enum Layers {
    /// Packed for the AVX-512 or AVX2 kernel ([`packed`](super::packed)); when
    /// dropped, the buffers kept for hidden outputs ([`spare`]) are dropped.
    Packed {
        layers: Vec<PackedLayer>,
        _release: ReleaseKept,
    },
    /// As the model holds them, for the GEMM crates.
    Plain(Arc<Model>),
}

impl Layers {
    /// The packed form where the processor runs the packed kernel (AVX-512F, or AVX2
    /// with FMA); else the model as it is. `WGPU_ENSEMBLE_CPU_KERNEL` chooses for a
    /// comparison: `portable` (the GEMM crates), `avx2` (where it runs), `auto` (the
    /// default); another value is reported once on stderr and not taken.
    pub(crate) fn new(model: Arc<Model>) -> Self {
        let choice = std::env::var("WGPU_ENSEMBLE_CPU_KERNEL").unwrap_or_default();
        let isa = match choice.as_str() {
            "portable" => None,
            "avx2" if Isa::Avx2.runs_here() => Some(Isa::Avx2),
            "" | "auto" => Isa::detect(),
            other => {
                // A knob for comparisons, read at every session build: say once that
                // the value was not taken, rather than fail a session over it.
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "wgpu-ensemble: WGPU_ENSEMBLE_CPU_KERNEL={other:?} not taken (expected \
                         auto, portable, or avx2 on a processor with AVX2 and FMA); using \
                         the best kernel this processor runs"
                    );
                });
                Isa::detect()
            }
        };
        match isa {
            Some(isa) => Layers::Packed {
                layers: model
                    .layers()
                    .iter()
                    .map(|l| PackedLayer::new(l, isa))
                    .collect(),
                _release: ReleaseKept,
            },
            None => Layers::Plain(model),
        }
    }

    /// The forward pass on `rows` rows of `x` with all of the host's threads: the
    /// packed kernel's on this thread and the helpers ([`team`](super::team)), the
    /// GEMM crates' on [`pool`](super::pool).
    pub(crate) fn forward_all(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self {
            Layers::Packed { .. } => self.forward(x, rows, false, super::team::width()),
            Layers::Plain(_) => super::on_pool(|| self.forward(x, rows, false, threads())),
        }
    }

    /// The forward pass on `rows` rows of `x`; `f16` rounds each layer's input to f16
    /// first; each layer's GEMM uses up to `parts` threads.
    pub(crate) fn forward(&self, x: &[f32], rows: usize, f16: bool, parts: usize) -> Vec<f32> {
        match self {
            Layers::Plain(model) => forward(model, x, rows, f16, parts),
            Layers::Packed { layers, .. } => {
                let mut current: Option<Vec<f32>> = None;
                for (i, layer) in layers.iter().enumerate() {
                    let input = current.as_deref().unwrap_or(x);
                    // A hidden layer's output goes into a kept buffer; the last layer's
                    // leaves the executor, in one of its own size.
                    let y = if i + 1 < layers.len() {
                        spare::take(rows * layer.out_features())
                    } else {
                        Vec::new()
                    };
                    let next = if f16 {
                        let rounded: Vec<f32> = input.iter().map(|&v| round_f16(v)).collect();
                        layer.run_into(&rounded, rows, parts, y)
                    } else {
                        layer.run_into(input, rows, parts, y)
                    };
                    // The layer before's output is spent: the next run's layers reuse it.
                    if let Some(spent) = current.replace(next) {
                        spare::give(spent);
                    }
                }
                current.unwrap_or_default()
            }
        }
    }
}

/// Buffers of hidden layers' outputs kept for the next runs, of any thread: a fresh
/// buffer of megabytes comes from the system zeroed page by page as the kernel first
/// writes it (5 % of a run of E1 at batch 1024, in page faults). When a packed model
/// is dropped, they are dropped ([`clear`], by
/// [`release_kept`](super::release_kept)): they are sized for the models run so far.
pub(crate) mod spare {
    use std::sync::{Mutex, PoisonError};

    /// Bytes kept in all: a run holds two buffers per member at work (a layer's
    /// input and output), and E2 at batch 1024 has hidden outputs of 16 MiB.
    const KEPT_BYTES: usize = 256 << 20;

    /// Smaller buffers are left to the allocator, which keeps them itself.
    const MIN_BYTES: usize = 256 << 10;

    static SPARE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

    fn kept() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
        SPARE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty buffer with room for `len` values: the smallest kept one large
    /// enough, else an empty one (which the layer sizes).
    pub(crate) fn take(len: usize) -> Vec<f32> {
        if len * 4 < MIN_BYTES {
            return Vec::new();
        }
        let mut spare = kept();
        #[cfg(test)]
        super::super::tests::TAKES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let best = spare
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut buffer = spare.swap_remove(i);
                buffer.clear();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// Drops the kept buffers.
    pub(crate) fn clear() {
        let dropped = {
            let mut spare = kept();
            #[cfg(test)]
            super::super::tests::RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *spare)
        };
        // Dropped after the lock is let go.
        drop(dropped);
    }

    /// Bytes of the kept buffers.
    #[cfg(test)]
    pub(crate) fn kept_bytes() -> usize {
        kept().iter().map(|b| b.capacity() * 4).sum()
    }

    /// Keeps `buffer` for a later [`take`]: the largest buffers, up to
    /// [`KEPT_BYTES`] in all.
    pub(crate) fn give(buffer: Vec<f32>) {
        if !(MIN_BYTES..=KEPT_BYTES).contains(&(buffer.capacity() * 4)) {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut spare = kept();
            #[cfg(test)]
            super::super::tests::GIVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            spare.push(buffer);
            let mut bytes: usize = spare.iter().map(|b| b.capacity() * 4).sum();
            if bytes > KEPT_BYTES {
                spare.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
                while bytes > KEPT_BYTES {
                    let Some(last) = spare.pop() else { break };
                    bytes -= last.capacity() * 4;
                    dropped.push(last);
                }
            }
        }
        drop(dropped);
    }
}

/// The threads of [`pool`](super::pool), over which the GEMM crates' path spreads a
/// run (the packed kernel's spreads over [`team::width`](super::team::width)). (Not
/// `available_parallelism`, which reads the cgroup files on every call: 3 % of a run
/// of E1 at batch 1.)
pub(crate) fn threads() -> usize {
    super::pool().map_or_else(
        rayon::current_num_threads,
        rayon::ThreadPool::current_num_threads,
    )
}

/// A model's forward pass on `rows` rows of `x`; `f16` rounds each layer's input to
/// f16 first.
pub(crate) fn forward(model: &Model, x: &[f32], rows: usize, f16: bool, parts: usize) -> Vec<f32> {
    let mut current: Option<Vec<f32>> = None;
    for layer in model.layers() {
        let input = current.as_deref().unwrap_or(x);
        current = Some(if f16 {
            let rounded: Vec<f32> = input.iter().map(|&v| round_f16(v)).collect();
            dense(layer, &rounded, rows, parts)
        } else {
            dense(layer, input, rows, parts)
        });
    }
    current.unwrap_or_default()
}

/// The f32 value nearest to `v` that f16 can hold.
pub(crate) fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// `act(x · Wᵀ + b)` for one layer. `parts` is how many threads the GEMM paths may
/// use: the session runs a device's members side by side, so each member's layer
/// gets its share of the threads rather than all of them.
pub(crate) fn dense(layer: &Dense, x: &[f32], rows: usize, parts: usize) -> Vec<f32> {
    let (k, n) = (layer.in_features(), layer.out_features());
    let mut y = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        y.extend_from_slice(layer.bias());
    }
    let w = layer.weight().as_slice();
    debug_assert!(x.len() >= rows * k && w.len() == n * k);
    if rows <= DOT_ROWS {
        dot_rows(layer, x, rows, &mut y);
    } else if rows <= SMALL_ROWS {
        // SAFETY: x is [rows, k] row-major (row stride k), W is [n, k] row-major, read
        // as Wᵀ [k, n] with row stride 1 and column stride k, y is [rows, n]
        // row-major; the lengths are checked when the model and the input are built,
        // so every access stays inside the three slices.
        // `gemm` takes (column, row) strides and computes dst = 1·dst + 1·lhs·rhs.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                if parts > 1 {
                    gemm::Parallelism::Rayon(parts)
                } else {
                    gemm::Parallelism::None
                },
            );
        }
    } else {
        gemm_columns(w, x, rows, k, n, &mut y, parts);
    }
    activate(layer.activation(), &mut y, n);
    y
}

/// Columns per block of [`gemm_columns`]: a multiple of the widest kernels' 16.
const COLUMN_ALIGN: usize = 16;

/// A pointer to `y` that blocks of columns share across threads; each block writes
/// only its own columns.
#[derive(Clone, Copy)]
struct Columns(*mut f32);
// SAFETY: the blocks of `gemm_columns` write disjoint columns of one buffer that
// outlives them (the scope of the parallel loop).
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    /// Column `c` of the first row (a method, so that closures take the whole `Columns`).
    fn at(self, c: usize) -> *mut f32 {
        self.0.wrapping_add(c)
    }
}

/// `y += x · Wᵀ` by `matrixmultiply` (single-threaded), the outputs split into
/// `parts` blocks of columns run side by side by `rayon`: a block's weights are rows
/// `c0..c1` of W, contiguous, and it writes columns `c0..c1` of y.
fn gemm_columns(
    w: &[f32],
    x: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    parts: usize,
) {
    use rayon::prelude::*;
    let block = n
        .div_ceil(parts.max(1))
        .next_multiple_of(COLUMN_ALIGN)
        .min(n)
        .max(1);
    let out = Columns(y.as_mut_ptr());
    debug_assert!(y.len() == rows * n && w.len() == n * k && x.len() >= rows * k);
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let c0 = b * block;
        let cols = block.min(n - c0);
        // SAFETY: x is [rows, k] row-major; W's rows c0..c0+cols are read as a
        // [k, cols] matrix with row stride 1 and column stride k; y's columns
        // c0..c0+cols of [rows, n] (row stride n) are written by this block only.
        // Every access stays inside the slices, whose lengths are checked when the
        // model and the input are built.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr().add(c0 * k),
                1,
                k as isize,
                1.0,
                out.at(c0),
                n as isize,
                1,
            );
        }
    });
}

/// `y[r, o] += x[r, ..] · W[o, ..]` for the few rows of `x`: every weight row is read
/// once and multiplied with each input row, tasks of `DOT_CHUNK` outputs spread over
/// threads.
fn dot_rows(layer: &Dense, x: &[f32], rows: usize, y: &mut [f32]) {
    use rayon::prelude::*;
    let (k, n) = (layer.in_features(), layer.out_features());
    if rows == 0 {
        return;
    }
    let w = layer.weight().as_slice();
    // Outputs first ([n, rows]), so that a task owns a contiguous part: y itself for
    // one row, else a transposed copy added to y after.
    let mut transposed = Vec::new();
    let by_output: &mut [f32] = if rows == 1 {
        y
    } else {
        transposed.resize(n * rows, 0.0);
        &mut transposed
    };
    by_output
        .par_chunks_mut(DOT_CHUNK * rows)
        .zip(w.par_chunks(DOT_CHUNK * k))
        .for_each(|(out, w)| {
            for (o, w_row) in out.chunks_mut(rows).zip(w.chunks(k)) {
                for (r, v) in o.iter_mut().enumerate() {
                    *v += dot(w_row, &x[r * k..(r + 1) * k]);
                }
            }
        });
    for (o, dots) in transposed.chunks(rows).enumerate() {
        for (r, d) in dots.iter().enumerate() {
            y[r * n + o] += d;
        }
    }
}

/// `a · b` over eight running sums (which the compiler keeps in vector registers).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (p, q) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += p[i] * q[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Applies an activation in place to `[rows, cols]` values, with the formulas of
/// `shaders/lib/activation.wgsl` and `shaders/softmax.wgsl`.
pub(crate) fn activate(act: Activation, y: &mut [f32], cols: usize) {
    match act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Gelu => y
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
        Activation::Softmax => y.chunks_mut(cols).for_each(softmax),
    }
}

fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), as in
/// `shaders/lib/activation.wgsl`.
pub(crate) fn erf(v: f32) -> f32 {
    let a = v.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * (-a * a).exp()).copysign(v)
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `act(x · Wᵀ + b)` in f64, the reference of the host's kernels (ReLU or none).
    pub(crate) fn reference(layer: &Dense, x: &[f32], rows: usize) -> Vec<f64> {
        let (k, n) = (layer.in_features(), layer.out_features());
        let w = layer.weight().as_slice();
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i]))
                    .sum();
                let v = dot + f64::from(layer.bias()[o]);
                y[r * n + o] = match layer.activation() {
                    Activation::Relu => v.max(0.0),
                    _ => v,
                };
            }
        }
        y
    }

    /// Every path (dot products, `gemm`, column blocks of `matrixmultiply`) and every
    /// split of the columns among threads agree with the f64 reference, with widths
    /// that are not multiples of the blocks.
    #[test]
    fn every_path_and_split_matches_the_reference() {
        let model = Model::random(&[19, 37], &[Activation::Identity], 3).expect("a valid model");
        let layer = &model.layers()[0];
        for rows in [1, 2, 3, 8, 9, 20] {
            let x: Vec<f32> = (0..rows * 19)
                .map(|i| ((i * 7) % 13) as f32 / 6.5 - 1.0)
                .collect();
            let want = reference(layer, &x, rows);
            for parts in [1, 2, 3, 5, 64] {
                let got = dense(layer, &x, rows, parts);
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        approx::relative_eq!(
                            f64::from(*g),
                            *w,
                            epsilon = 1e-5,
                            max_relative = 1e-5
                        ),
                        "rows {rows}, parts {parts}, index {i}: got {g}, want {w}"
                    );
                }
            }
        }
    }
}
