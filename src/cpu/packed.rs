//! A dense layer whose weights are packed once, when the session is built, for an
//! AVX-512 kernel: panels of [`NR`] output columns, each panel `k` rows of `NR`
//! weights (`W[j0..j0 + NR, kk]` for every `kk`), 64-byte aligned, the last panel
//! padded with zeros. A run streams every panel once per block of rows, with the
//! bias added as the accumulators start and ReLU applied as they are stored, so a
//! layer is one pass over its weights and its output.
//!
//! The GEMM crates pack the weights again on every call, which on E2 (8 × 25 M
//! weights, more than the last-level cache) cost as much memory traffic as the
//! multiplication itself; ONNX Runtime packs its constant weights once, as here.

use crate::model::{Activation, Dense};

/// Output columns per panel: two 16-lane registers.
pub(crate) const NR: usize = 32;

/// Greatest depth of a block of the reduction when there is more than one tile of
/// rows: a panel's block (`KC × NR` floats, 128 KiB) stays in the 2 MiB L2 cache while
/// every tile of rows uses it, and the output is read and written once per block. 1024
/// ran 15–18 % faster than 256 (a block in L1, the output four to sixteen times over)
/// at 1024 × 1024 × 1024 and 1024 × 4096 × 4096 and even elsewhere (one thread, CPU
/// time, 2026-12-06). With one tile of rows there is no reuse and the whole depth runs
/// at once, the accumulators never leaving the registers.
const KC: usize = 1024;

/// Bytes of input rows a block of rows holds at most where the size of the L2 cache
/// is not known (see [`x_block_bytes`]).
const X_BLOCK_BYTES: usize = 384 << 10;

/// Steps of the reduction per turn of the AVX-512 kernel's loop (a multiple of
/// every number of accumulator sets).
const UNROLL: usize = 4;

/// How far ahead of the kernel the weights are prefetched, in floats (2 KiB): the
/// panels stream from memory or the last-level cache when a layer's weights are
/// larger than L2.
const PREFETCH: usize = 512;

/// Sixteen floats on a 64-byte boundary: the unit the panels are allocated in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lane([f32; 16]);

/// The instruction sets the packed kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F: tiles of up to 12 rows × 2 registers of 16.
    Avx512,
    /// AVX2 with FMA: tiles of up to 3 rows × 4 registers of 8.
    Avx2,
}

impl Isa {
    /// The best this processor runs, if any.
    pub(crate) fn detect() -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.runs_here())
    }

    /// Whether this processor runs `self`.
    pub(crate) fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Rows per register tile.
    fn rows(self) -> usize {
        match self {
            Isa::Avx512 => 12,
            Isa::Avx2 => 3,
        }
    }
}

/// One layer in the packed form.
pub(crate) struct PackedLayer {
    k: usize,
    n: usize,
    /// `panels × k × NR` weights.
    panels: Vec<Lane>,
    /// The bias, padded with zeros to `panels × NR`.
    bias: Vec<f32>,
    activation: Activation,
    isa: Isa,
}

impl PackedLayer {
    /// Packs `layer`'s weights (`[n, k]` row-major) for `isa`, which the caller has
    /// checked this processor runs ([`Isa::runs_here`]).
    pub(crate) fn new(layer: &Dense, isa: Isa) -> Self {
        let (k, n) = (layer.in_features(), layer.out_features());
        let count = n.div_ceil(NR);
        let w = layer.weight().as_slice();
        let mut panels = vec![Lane([0.0; 16]); count * k * NR / 16];
        let flat: &mut [f32] = bytemuck_lanes(&mut panels);
        for p in 0..count {
            let panel = &mut flat[p * k * NR..(p + 1) * k * NR];
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        }
        let mut bias = layer.bias().to_vec();
        bias.resize(count * NR, 0.0);
        Self {
            k,
            n,
            panels,
            bias,
            activation: layer.activation(),
            isa,
        }
    }

    /// Values per output row.
    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// `act(x · Wᵀ + b)` for `rows` rows of `x` (`[rows, k]`), the panels split into
    /// `parts` blocks run side by side.
    #[cfg(test)]
    pub(crate) fn run(&self, x: &[f32], rows: usize, parts: usize) -> Vec<f32> {
        self.run_into(x, rows, parts, Vec::new())
    }

    /// `act(x · Wᵀ + b)` for `rows` rows of `x` (`[rows, k]`), the panels split into
    /// `parts` blocks run side by side, into `y`'s allocation (its values dropped,
    /// grown where too small): a buffer kept from an earlier run
    /// ([`forward::spare`](super::forward::spare)) or a new one.
    pub(crate) fn run_into(
        &self,
        x: &[f32],
        rows: usize,
        parts: usize,
        mut y: Vec<f32>,
    ) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(
            x.len() >= rows * k,
            "packed layer: input of {} values, {rows} rows of {k} expected",
            x.len()
        );
        // Not zeroed: the first block of the reduction starts every tile from the bias
        // and writes all of its outputs, and a layer with no inputs writes its bias.
        y.clear();
        y.reserve_exact(rows * n);
        let count = n.div_ceil(NR);
        let per = count.div_ceil(parts.clamp(1, count.max(1))).max(1);
        let out = Out(y.as_mut_ptr());
        let run = |p0: usize| {
            let p1 = (p0 + per).min(count);
            // SAFETY: the layer was packed for an instruction set this processor runs
            // (`new`'s contract); x holds rows × k values (asserted above), the panels
            // count × k × NR, the bias count × NR, and y has room for rows × n, of which
            // this block writes only the columns of panels p0..p1.
            unsafe { self.block(x, rows, p0, p1, out) }
        };
        super::team::for_each(count.div_ceil(per), parts, |b| run(b * per));
        // SAFETY: the blocks above wrote every one of the rows × n values (each panel
        // of every row, the columns beyond n masked off).
        unsafe { y.set_len(rows * n) };
        if !matches!(self.activation, Activation::Relu | Activation::Identity) {
            super::forward::activate(self.activation, &mut y, n);
        }
        y
    }

    /// Panels `p0..p1` of every row.
    ///
    /// # Safety
    /// `self.isa` runs on this processor; `x` holds `rows × k` values and `out`
    /// `rows × n`, of which this writes only the columns of panels `p0..p1`.
    unsafe fn block(&self, x: &[f32], rows: usize, p0: usize, p1: usize, out: Out) {
        let (k, n) = (self.k, self.n);
        let relu = self.activation == Activation::Relu;
        let mr = self.isa.rows();
        // Blocks of at most KC, of equal depth: 1100 is 2 × 550, not 1024 and a block
        // of 76 that would read and write the whole output once more for little.
        let kc = if rows <= mr {
            k.max(1)
        } else {
            k.div_ceil(k.div_ceil(KC).max(1)).max(1)
        };
        let panels = bytemuck_lanes_ref(&self.panels).as_ptr();
        let tiles = tiles(self.isa);
        let mut k0 = 0;
        while k0 < k {
            let depth = kc.min(k - k0);
            let first = k0 == 0;
            let last = k0 + depth == k;
            // Rows in blocks whose inputs (`block_rows × depth`) stay in L2 while every
            // panel passes over them, rather than all the rows read again per panel.
            let block_rows = (x_block_bytes() / (4 * depth)).max(1).next_multiple_of(mr);
            let mut b0 = 0;
            while b0 < rows {
                let b1 = (b0 + block_rows).min(rows);
                // While the tiles of rows pass over a panel's block (from L2 after the
                // first), the next panel's block comes into L2, a share for each tile:
                // else the first tile of every panel waits for memory, which cost
                // 10–25 % at 16–256 rows × 4096 × 4096 (one thread, 2026-12-06). With
                // one tile of rows the panels stream in order and the prefetch ahead
                // of the kernel is enough.
                let tiles_here = (b1 - b0).div_ceil(mr);
                let lines = depth * NR * 4 / 64;
                let per_tile = lines.div_ceil(tiles_here);
                for p in p0..p1 {
                    let w = panels.add(p * k * NR + k0 * NR);
                    let cols = NR.min(n - p * NR);
                    let bias = self.bias.as_ptr().add(p * NR);
                    let next = panels.wrapping_add((p + 1) * k * NR + k0 * NR);
                    let mut r0 = b0;
                    let mut tile = 0;
                    while r0 < b1 {
                        let from = (tile * per_tile).min(lines);
                        let upto = ((tile + 1) * per_tile).min(lines);
                        tile += 1;
                        let ahead_lines = if p + 1 < p1 && tiles_here > 1 {
                            upto - from
                        } else {
                            0
                        };
                        let m = mr.min(b1 - r0);
                        // The tile after this one: the next rows of this panel, else the
                        // first of the next panel, else of the next block of rows, else
                        // of the next block of the reduction. None for shallow blocks,
                        // whose tiles are short and whose outputs are mostly only
                        // written once.
                        let (next_r, next_p, next_b1) = if r0 + m < b1 {
                            (r0 + m, p, b1)
                        } else if p + 1 < p1 {
                            (b0, p + 1, b1)
                        } else if b1 < rows {
                            (b1, p0, (b1 + block_rows).min(rows))
                        } else if !last {
                            (0, p0, block_rows.min(rows))
                        } else {
                            (rows, p0, rows)
                        };
                        let next_y = out.0.wrapping_add(next_r * n + next_p * NR);
                        let next_rows = if depth < 64 {
                            0
                        } else {
                            mr.min(next_b1 - next_r)
                        };
                        let t = Tile {
                            x: x.as_ptr().add(r0 * k + k0),
                            ldx: k,
                            w,
                            depth,
                            y: out.0.add(r0 * n + p * NR),
                            ldy: n,
                            cols,
                            bias: first.then_some(bias),
                            relu: relu && last,
                            ahead: next.wrapping_add(from * 16),
                            ahead_lines,
                            next_y,
                            next_rows,
                        };
                        (tiles[m - 1])(&t);
                        r0 += m;
                    }
                }
                b0 = b1;
            }
            k0 += depth;
        }
        // A layer with no inputs is its bias (and activation).
        if k == 0 {
            for r in 0..rows {
                for c in p0 * NR..(p1 * NR).min(n) {
                    let b = self.bias[c];
                    *out.0.add(r * n + c) = if relu { b.max(0.0) } else { b };
                }
            }
        }
    }
}

/// Bytes of input rows a block of rows holds at most (see `PackedLayer::block`): half
/// of a core's L2 cache, the other half for the panel's block of weights and the
/// outputs. Each block of rows reads every panel from memory (or the last-level cache)
/// once, and the first tile of rows waits for it, so the larger the block the fewer
/// the passes over weights beyond L2: on E2 at batch 256 (weights of 64 MiB a layer),
/// 1 MiB blocks ran 5–10 % faster than 384 KiB on the 2 MiB L2 of the development
/// machine (two cores, 2026-12-06). Where the size is unknown, [`X_BLOCK_BYTES`].
fn x_block_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        l2_bytes().map_or(X_BLOCK_BYTES, |bytes| (bytes / 2).clamp(128 << 10, 4 << 20))
    })
}

/// The size of the level-2 cache of the core this runs on, from the processor's
/// deterministic cache parameters (CPUID leaf 4 on Intel, 0x8000_001D on AMD).
#[cfg(target_arch = "x86_64")]
fn l2_bytes() -> Option<usize> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: every x86_64 processor has CPUID; a leaf beyond the highest it reports
    // is not asked.
    #[allow(unused_unsafe)]
    let (basic, extended) = unsafe { (__cpuid(0).eax, __cpuid(0x8000_0000).eax) };
    let leaves = [(4, basic >= 4), (0x8000_001D, extended >= 0x8000_001D)];
    for (leaf, _) in leaves.into_iter().filter(|(_, there)| *there) {
        for sub in 0..16 {
            // SAFETY: as above; the leaf is at most the highest reported.
            #[allow(unused_unsafe)]
            let r = unsafe { __cpuid_count(leaf, sub) };
            let kind = r.eax & 0x1f;
            if kind == 0 {
                break;
            }
            // Level 2, data (1) or unified (3).
            if (r.eax >> 5) & 0x7 == 2 && (kind == 1 || kind == 3) {
                let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
                let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
                let line = (r.ebx & 0xfff) as usize + 1;
                let sets = r.ecx as usize + 1;
                return Some(ways * partitions * line * sets);
            }
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn l2_bytes() -> Option<usize> {
    None
}

/// A register tile's kernel, by its number of rows (index 0: one row).
type TileFn = unsafe fn(&Tile);

#[cfg(target_arch = "x86_64")]
fn tiles(isa: Isa) -> &'static [TileFn] {
    match isa {
        // With few rows, more sets of accumulators give more independent FMA chains
        // (an FMA waits four cycles for the one before on its register).
        Isa::Avx512 => &[
            tile512::<1, 4>,
            tile512::<2, 2>,
            tile512::<3, 2>,
            tile512::<4, 1>,
            tile512::<5, 1>,
            tile512::<6, 1>,
            tile512::<7, 1>,
            tile512::<8, 1>,
            tile512::<9, 1>,
            tile512::<10, 1>,
            tile512::<11, 1>,
            tile512::<12, 1>,
        ],
        Isa::Avx2 => &[tile256::<1, 2>, tile256::<2, 1>, tile256::<3, 1>],
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn tiles(_: Isa) -> &'static [TileFn] {
    &[]
}

/// The output shared by the blocks of panels; each writes only its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the blocks of `PackedLayer::run` write disjoint columns of one buffer that
// outlives them (the scope of the parallel loop).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

fn bytemuck_lanes(lanes: &mut [Lane]) -> &mut [f32] {
    bytemuck::cast_slice_mut(lanes)
}

fn bytemuck_lanes_ref(lanes: &[Lane]) -> &[f32] {
    bytemuck::cast_slice(lanes)
}

// SAFETY: `Lane` is sixteen f32 with no padding (64 bytes, aligned to 64).
unsafe impl bytemuck::Zeroable for Lane {}
unsafe impl bytemuck::Pod for Lane {}

/// One register tile's operands: `M` rows of `x` from `x` (row stride `ldx`), a
/// panel's `depth` rows of `NR` weights from `w`, `M × cols` outputs at `y` (row
/// stride `ldy`), started from the bias (the first block of the reduction) or from
/// `y`, with ReLU as they are stored (the last block).
struct Tile {
    x: *const f32,
    ldx: usize,
    w: *const f32,
    depth: usize,
    y: *mut f32,
    ldy: usize,
    cols: usize,
    bias: Option<*const f32>,
    relu: bool,
    /// Weights to bring into L2 while this tile runs (a share of the next panel's
    /// block): `ahead_lines` cache lines from `ahead`, spread over the loop's turns.
    ahead: *const f32,
    ahead_lines: usize,
    /// The next tile's outputs (`next_rows` rows from `next_y`, stride `ldy`), brought
    /// into L2 while this one runs ([`Tile::prefetch_next`]).
    next_y: *const f32,
    next_rows: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Brings the next tile's outputs into L2: in every block of the reduction after
    /// the first the tile starts from them, and a row block's outputs (`block_rows ×
    /// n`) are beyond L2 on large layers, so the tile's first loads waited for memory;
    /// in the first its stores need the lines. 2–3 % on E2's layers at 1024 rows, both
    /// cores busy (AMD EPYC, 2026-12-06).
    #[inline(always)]
    fn prefetch_next(&self) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for r in 0..self.next_rows {
            let y = self.next_y.wrapping_add(r * self.ldy);
            // SAFETY: a prefetch reads nothing and cannot fault; the pointers move by
            // wrapping arithmetic. The tile's NR values span at most three lines.
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(y.cast());
                _mm_prefetch::<_MM_HINT_T1>(y.wrapping_add(16).cast());
                _mm_prefetch::<_MM_HINT_T1>(y.wrapping_add(NR - 1).cast());
            }
        }
    }
}

/// Brings the cache lines of a tile's `ahead` into L2, `rate` a turn of its loop.
#[cfg(target_arch = "x86_64")]
struct Ahead {
    at: *const f32,
    left: usize,
    rate: usize,
}

#[cfg(target_arch = "x86_64")]
impl Ahead {
    fn new(t: &Tile, turns: usize) -> Self {
        Self {
            at: t.ahead,
            left: t.ahead_lines,
            rate: t.ahead_lines.div_ceil(turns.max(1)),
        }
    }

    /// One turn's share.
    #[inline(always)]
    fn turn(&mut self) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for _ in 0..self.rate.min(self.left) {
            // SAFETY: a prefetch reads nothing and cannot fault; the pointer moves by
            // wrapping arithmetic.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.at.cast()) };
            self.at = self.at.wrapping_add(16);
        }
        self.left -= self.rate.min(self.left);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile512<const M: usize, const S: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let lo: __mmask16 = if t.cols >= 16 {
        0xffff
    } else {
        ((1u32 << t.cols) - 1) as u16
    };
    let hi: __mmask16 = if t.cols >= 32 {
        0xffff
    } else if t.cols > 16 {
        ((1u32 << (t.cols - 16)) - 1) as u16
    } else {
        0
    };
    // Accumulators: `S` sets of `M` rows × 2 registers, set `s` taking the steps
    // `kk ≡ s (mod S)`.
    let mut acc = [[[_mm512_setzero_ps(); 2]; M]; S];
    match t.bias {
        Some(b) => {
            let (b0, b1) = (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)));
            for a in acc[0].iter_mut() {
                *a = [b0, b1];
            }
        }
        None => {
            for (r, a) in acc[0].iter_mut().enumerate() {
                let y = t.y.add(r * t.ldy);
                *a = [
                    _mm512_maskz_loadu_ps(lo, y),
                    _mm512_maskz_loadu_ps(hi, y.wrapping_add(16)),
                ];
            }
        }
    }
    t.prefetch_next();
    let mut w = t.w;
    let mut x = t.x;
    // Four steps per turn of the loop, each with constant offsets from `x` and `w`:
    // the row addresses are worked out once per four steps.
    let steps = t.depth / UNROLL;
    let mut ahead = Ahead::new(t, steps);
    for _ in 0..steps {
        ahead.turn();
        for u in 0..UNROLL {
            let set = &mut acc[u % S];
            let wu = w.add(u * NR);
            _mm_prefetch::<_MM_HINT_T0>(wu.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(wu.wrapping_add(PREFETCH + 16).cast());
            let w0 = _mm512_load_ps(wu);
            let w1 = _mm512_load_ps(wu.add(16));
            for (r, a) in set.iter_mut().enumerate() {
                let v = _mm512_set1_ps(*x.add(r * t.ldx + u));
                a[0] = _mm512_fmadd_ps(v, w0, a[0]);
                a[1] = _mm512_fmadd_ps(v, w1, a[1]);
            }
        }
        w = w.add(UNROLL * NR);
        x = x.add(UNROLL);
    }
    for _ in steps * UNROLL..t.depth {
        let w0 = _mm512_load_ps(w);
        let w1 = _mm512_load_ps(w.add(16));
        for (r, a) in acc[0].iter_mut().enumerate() {
            let v = _mm512_set1_ps(*x.add(r * t.ldx));
            a[0] = _mm512_fmadd_ps(v, w0, a[0]);
            a[1] = _mm512_fmadd_ps(v, w1, a[1]);
        }
        w = w.add(NR);
        x = x.add(1);
    }
    let (sum, rest) = acc.split_at_mut(1);
    for set in rest.iter() {
        for (a, b) in sum[0].iter_mut().zip(set) {
            a[0] = _mm512_add_ps(a[0], b[0]);
            a[1] = _mm512_add_ps(a[1], b[1]);
        }
    }
    let zero = _mm512_setzero_ps();
    for (r, a) in acc[0].iter().enumerate() {
        let y = t.y.add(r * t.ldy);
        let (v0, v1) = if t.relu {
            (_mm512_max_ps(a[0], zero), _mm512_max_ps(a[1], zero))
        } else {
            (a[0], a[1])
        };
        _mm512_mask_storeu_ps(y, lo, v0);
        _mm512_mask_storeu_ps(y.wrapping_add(16), hi, v1);
    }
}

/// The AVX2 tile: `M` rows × 4 registers of 8, `S` sets of accumulators as in
/// [`tile512`]; the four weight registers are loaded one at a time so that 3 rows
/// (12 accumulators, 3 broadcasts, 1 weight register) fit the 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile256<const M: usize, const S: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    // Lane masks of the four registers (all ones where the column is in the layer).
    let mask = |j: usize| {
        let lanes: [i32; 8] = std::array::from_fn(|l| if 8 * j + l < t.cols { -1 } else { 0 });
        _mm256_loadu_si256(lanes.as_ptr().cast())
    };
    let masks = [mask(0), mask(1), mask(2), mask(3)];
    let mut acc = [[[_mm256_setzero_ps(); 4]; M]; S];
    match t.bias {
        Some(b) => {
            let bias: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(b.add(8 * j)));
            for a in acc[0].iter_mut() {
                *a = bias;
            }
        }
        None => {
            for (r, a) in acc[0].iter_mut().enumerate() {
                let y = t.y.add(r * t.ldy);
                *a = std::array::from_fn(|j| _mm256_maskload_ps(y.wrapping_add(8 * j), masks[j]));
            }
        }
    }
    t.prefetch_next();
    let mut w = t.w;
    let mut x = t.x;
    let steps = t.depth / S;
    let mut ahead = Ahead::new(t, steps);
    for _ in 0..steps {
        ahead.turn();
        for (s, set) in acc.iter_mut().enumerate() {
            let ws = w.add(s * NR);
            _mm_prefetch::<_MM_HINT_T0>(ws.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(ws.wrapping_add(PREFETCH + 16).cast());
            let v: [__m256; M] =
                std::array::from_fn(|r| _mm256_broadcast_ss(&*x.add(r * t.ldx + s)));
            for j in 0..4 {
                let wj = _mm256_load_ps(ws.add(8 * j));
                for (r, a) in set.iter_mut().enumerate() {
                    a[j] = _mm256_fmadd_ps(v[r], wj, a[j]);
                }
            }
        }
        w = w.add(S * NR);
        x = x.add(S);
    }
    for _ in steps * S..t.depth {
        let v: [__m256; M] = std::array::from_fn(|r| _mm256_broadcast_ss(&*x.add(r * t.ldx)));
        for j in 0..4 {
            let wj = _mm256_load_ps(w.add(8 * j));
            for (r, a) in acc[0].iter_mut().enumerate() {
                a[j] = _mm256_fmadd_ps(v[r], wj, a[j]);
            }
        }
        w = w.add(NR);
        x = x.add(1);
    }
    let (sum, rest) = acc.split_at_mut(1);
    for set in rest.iter() {
        for (a, b) in sum[0].iter_mut().zip(set) {
            for (aj, bj) in a.iter_mut().zip(b) {
                *aj = _mm256_add_ps(*aj, *bj);
            }
        }
    }
    let zero = _mm256_setzero_ps();
    for (r, a) in acc[0].iter().enumerate() {
        let y = t.y.add(r * t.ldy);
        for j in 0..4 {
            let v = if t.relu {
                _mm256_max_ps(a[j], zero)
            } else {
                a[j]
            };
            _mm256_maskstore_ps(y.wrapping_add(8 * j), masks[j], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::forward::tests::reference;
    use crate::model::Model;

    /// `got` against the f64 reference, `epsilon` absolute and 1e-5 relative.
    fn assert_matches(label: &str, got: &[f32], want: &[f64], epsilon: f64) {
        assert_eq!(got.len(), want.len(), "{label}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                approx::relative_eq!(f64::from(*g), *w, epsilon = epsilon, max_relative = 1e-5),
                "{label}, index {i}: got {g}, want {w}"
            );
        }
    }

    /// More rows than one block of rows holds ([`x_block_bytes`]), with several
    /// blocks of the reduction and panels, each panel's block fetched ahead while the
    /// one before runs: the f64 reference, whatever the split among threads.
    #[test]
    fn blocks_of_rows_and_of_the_reduction_match_the_reference() {
        let Some(isa) = Isa::detect() else {
            eprintln!("skipped: this processor runs neither AVX-512F nor AVX2 with FMA");
            return;
        };
        let (k, n) = (KC + 5, 70);
        let rows = x_block_bytes() / (4 * k.div_ceil(2)) + 13;
        let model = Model::random(&[k, n], &[Activation::Relu], 3).expect("a valid model");
        let layer = &model.layers()[0];
        let packed = PackedLayer::new(layer, isa);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 5) % 17) as f32 / 8.5 - 1.0)
            .collect();
        let want = reference(layer, &x, rows);
        for parts in [1, 2] {
            let got = packed.run(&x, rows, parts);
            let label = format!("{isa:?}, {rows} rows, parts {parts}");
            assert_matches(&label, &got, &want, 1e-4);
        }
    }

    /// A layer's output written into a buffer of an earlier run (as those kept by
    /// `forward::spare`), larger and full of NaN: every value is the layer's own, none
    /// left over.
    #[test]
    fn a_reused_buffer_leaves_nothing_of_its_last_run() {
        let Some(isa) = Isa::detect() else {
            eprintln!("skipped: this processor runs neither AVX-512F nor AVX2 with FMA");
            return;
        };
        let model = Model::random(&[40, 1000], &[Activation::Relu], 5).expect("a valid model");
        let layer = &model.layers()[0];
        let packed = PackedLayer::new(layer, isa);
        let rows = 97;
        let x: Vec<f32> = (0..rows * 40)
            .map(|i| ((i * 3) % 11) as f32 / 5.5 - 1.0)
            .collect();
        let mut old = vec![f32::NAN; 2 * rows * 1000];
        let at = old.as_ptr();
        old.truncate(rows * 1000 + 7);
        let got = packed.run_into(&x, rows, 2, old);
        assert_eq!(got.as_ptr(), at, "the buffer given was not the one used");
        assert_matches("a reused buffer", &got, &reference(layer, &x, rows), 1e-5);
    }

    /// Every tile height (1–12 rows and beyond), widths that are not multiples of a
    /// panel or of a register, depths beyond one block of the reduction, every split of
    /// the panels among threads, with and without ReLU: the f64 reference.
    #[test]
    fn every_tile_width_depth_and_split_matches_the_reference() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|isa| {
                let here = isa.runs_here();
                if !here {
                    eprintln!("skipped {isa:?}: this processor does not run its instructions");
                }
                here
            })
            .collect();
        for (k, n, act) in [
            (19, 37, Activation::Relu),
            (300, 70, Activation::Identity),
            (KC + 5, 16, Activation::Relu),
            (1, 33, Activation::Identity),
            (5, 1, Activation::Relu),
        ] {
            let model = Model::random(&[k, n], &[act], 7).expect("a valid model");
            let layer = &model.layers()[0];
            for &isa in &isas {
                let packed = PackedLayer::new(layer, isa);
                for rows in [1, 2, 3, 7, 11, 12, 13, 25, 40] {
                    let x: Vec<f32> = (0..rows * k)
                        .map(|i| ((i * 7) % 13) as f32 / 6.5 - 1.0)
                        .collect();
                    let want = reference(layer, &x, rows);
                    for parts in [1, 2, 3, 64] {
                        let got = packed.run(&x, rows, parts);
                        let label = format!("{isa:?}, k {k}, n {n}, rows {rows}, parts {parts}");
                        assert_matches(&label, &got, &want, 1e-5);
                    }
                }
            }
        }
    }
}
