//! The forward pass on the host: each layer as dot products (one or two rows), the
//! `gemm` crate's small-matrix kernels (up to 16 rows) or `matrixmultiply` (above),
//! then the bias and activation with the WGSL kernels' formulas.

use crate::model::{Activation, Dense, Model};

/// Rows up to which a layer runs as dot products, each weight row with each input
/// row, the outputs split among threads: the weights stream from memory once, at its
/// bandwidth. The GEMM crates are slower there, about even at 4 rows
/// (benches/results/cpu-2026-11-26/NOTES.md).
const DOT_ROWS: usize = 2;

/// Outputs per task of the dot-product path.
const DOT_CHUNK: usize = 64;

/// Rows up to which a layer is a matrix-vector product in all but name: the `gemm`
/// crate's small-matrix kernels read the weights once and beat `matrixmultiply`'s
/// packing there; above, `matrixmultiply` is faster on the machines measured
/// (benches/results/cpu-2026-11-26/NOTES.md).
const SMALL_ROWS: usize = 16;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A model's forward pass on `rows` rows of `x`; `f16` rounds each layer's input to
/// f16 first.
pub(crate) fn forward(model: &Model, x: &[f32], rows: usize, f16: bool) -> Vec<f32> {
    let mut current: Option<Vec<f32>> = None;
    for layer in model.layers() {
        let input = current.as_deref().unwrap_or(x);
        current = Some(if f16 {
            let rounded: Vec<f32> = input.iter().map(|&v| round_f16(v)).collect();
            dense(layer, &rounded, rows)
        } else {
            dense(layer, input, rows)
        });
    }
    current.unwrap_or_default()
}

/// The f32 value nearest to `v` that f16 can hold.
pub(crate) fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// `act(x · Wᵀ + b)` for one layer.
fn dense(layer: &Dense, x: &[f32], rows: usize) -> Vec<f32> {
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
        // SAFETY (both calls): x is [rows, k] row-major (row stride k), W is [n, k]
        // row-major, read as Wᵀ [k, n] with row stride 1 and column stride k, y is
        // [rows, n] row-major; the lengths are checked when the model and the input
        // are built, so every access stays inside the three slices.
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
                gemm::Parallelism::Rayon(threads()),
            );
        }
    } else {
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                1.0,
                y.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    activate(layer.activation(), &mut y, n);
    y
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
fn activate(act: Activation, y: &mut [f32], cols: usize) {
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
fn erf(v: f32) -> f32 {
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
