//! Tile configurations of `shaders/dense.wgsl` and the small autotune that picks one
//! per adapter and shape class by timing a few candidates, cached in memory and
//! optionally in a TOML file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wgpu::util::DeviceExt;

use super::kernels::{
    dense_coop, Kernel, Kernels, COOP_PAD, DENSE, DENSE_F16, DENSE_VEC4, DENSE_VEC4_F16,
};
use super::timing::{self, PassTimer};
use super::GpuContext;
use crate::error::{Error, Result};
use crate::session::Precision;

/// The override constants of one register-tiled dense pipeline, and which of the two
/// register-tiled kernels runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileConfig {
    /// Threads per workgroup along the outputs.
    pub wg_x: u32,
    /// Threads per workgroup along the rows.
    pub wg_y: u32,
    /// Rows per thread (1 to 8; 4 or 8 with `vec4`).
    pub tm: u32,
    /// Outputs per thread (1 to 8; 4 or 8 with `vec4`).
    pub tn: u32,
    /// Depth of each staged slice of the inner dimension (a multiple of 4 with `vec4`).
    pub bk: u32,
    /// Each thread's rows and outputs in runs of four, read from workgroup memory as
    /// vectors, with accumulators no loop indexes (`shaders/dense_vec4.wgsl`), instead
    /// of single values strided across the workgroup (`shaders/dense.wgsl`;
    /// `dense_vec4_f16.wgsl` and `dense_f16.wgsl` in f16). For layers whose input
    /// width is a multiple of 4; the others run the strided kernel with the same tile.
    #[serde(default)]
    pub vec4: bool,
    /// With `vec4`: each thread loads the next slice of x and w into registers while
    /// the current one is multiplied, hiding the loads' latency behind the arithmetic
    /// (`PREFETCH` in `dense_vec4.wgsl`). A thread stages at most 4 vectors of each
    /// per slice: `tile_rows · bk` and `tile_cols · bk` at most 16 times the threads.
    #[serde(default)]
    pub prefetch: bool,
}

/// Values by which `dense_vec4.wgsl` and `dense_vec4_f16.wgsl` pad each k of their
/// staged tiles (one vector).
const VEC4_PAD: u64 = 4;

/// A `dense.wgsl` tile.
const fn strided(wg_x: u32, wg_y: u32, tm: u32, tn: u32, bk: u32) -> TileConfig {
    TileConfig {
        wg_x,
        wg_y,
        tm,
        tn,
        bk,
        vec4: false,
        prefetch: false,
    }
}

/// A `dense_vec4.wgsl` tile.
const fn vectors(wg_x: u32, wg_y: u32, tm: u32, tn: u32, bk: u32) -> TileConfig {
    TileConfig {
        vec4: true,
        ..strided(wg_x, wg_y, tm, tn, bk)
    }
}

/// A `dense_vec4.wgsl` tile that loads each slice ahead.
const fn prefetching(wg_x: u32, wg_y: u32, tm: u32, tn: u32, bk: u32) -> TileConfig {
    TileConfig {
        prefetch: true,
        ..vectors(wg_x, wg_y, tm, tn, bk)
    }
}

impl TileConfig {
    /// The configuration used when autotuning is off: 64 x 64 tiles, 4 x 4 per thread
    /// in runs of four. A tile built as `TileConfig { tm: 2, ..TileConfig::DEFAULT }`
    /// keeps `vec4: true` and is refused; add `vec4: false` for `dense.wgsl` shapes.
    pub const DEFAULT: TileConfig = vectors(16, 16, 4, 4, 16);

    /// The candidates the autotune times: `dense_vec4.wgsl` at 64 × 64 (the default),
    /// 128 × 128 (slices 8 and 16 deep, each also with `prefetch`) and 64 × 128, and
    /// `dense.wgsl` at 64 × 64, 128 × 128 (8 and 16 deep), 128 × 64, 64 × 128 and two
    /// 32 × 32 tiles (their f16 versions in f16).
    pub const CANDIDATES: [TileConfig; 13] = [
        TileConfig::DEFAULT,
        strided(16, 16, 4, 4, 16),
        strided(16, 16, 8, 8, 8),
        strided(16, 16, 8, 4, 16),
        strided(16, 16, 4, 8, 16),
        strided(8, 8, 4, 4, 16),
        strided(16, 16, 2, 2, 16),
        // 128 × 128 with a deeper slice: half the barriers of the bk 8 one.
        strided(16, 16, 8, 8, 16),
        vectors(16, 16, 8, 8, 8),
        vectors(16, 16, 8, 8, 16),
        vectors(16, 16, 4, 8, 16),
        prefetching(16, 16, 8, 8, 8),
        prefetching(16, 16, 8, 8, 16),
    ];

    /// The kernel that runs this tile on a layer `in_features` wide.
    pub(crate) fn kernel(&self, precision: Precision, in_features: usize) -> Kernel {
        let vec4 = self.vec4 && in_features.is_multiple_of(4);
        match precision {
            Precision::F32 if vec4 => DENSE_VEC4,
            Precision::F32 => DENSE,
            Precision::F16 | Precision::F16CoopMatrix if vec4 => DENSE_VEC4_F16,
            Precision::F16 | Precision::F16CoopMatrix => DENSE_F16,
        }
    }

    /// Rows of y one workgroup computes.
    pub fn tile_rows(&self) -> u32 {
        self.wg_y * self.tm
    }

    /// Outputs of y one workgroup computes.
    pub fn tile_cols(&self) -> u32 {
        self.wg_x * self.tn
    }

    /// The override constants of `kernel` (from [`kernel`](Self::kernel)) for this
    /// tile and activation `act`.
    pub(crate) fn constants(&self, act: u32, kernel: Kernel) -> Vec<(&'static str, u32)> {
        let mut constants = vec![
            ("ACT", act),
            ("WG_X", self.wg_x),
            ("WG_Y", self.wg_y),
            ("TM", self.tm),
            ("TN", self.tn),
            ("BK", self.bk),
        ];
        if kernel == DENSE_VEC4 || kernel == DENSE_VEC4_F16 {
            constants.push(("PREFETCH", u32::from(self.prefetch)));
        }
        constants
    }

    /// Whether the kernel takes this configuration and the device's limits allow it.
    pub(crate) fn fits(&self, limits: &wgpu::Limits, precision: Precision) -> bool {
        let element: u32 = match precision {
            Precision::F32 => 4,
            Precision::F16 | Precision::F16CoopMatrix => 2,
        };
        let within = self.kernel_allows()
            && self.wg_x <= limits.max_compute_workgroup_size_x
            && self.wg_y <= limits.max_compute_workgroup_size_y;
        // The vec4 kernels pad each k of their tiles by one vector (VEC4_PAD values).
        let pad = if self.vec4 { 2 * VEC4_PAD } else { 0 };
        // Only now are the products small enough not to overflow; shared memory in u64.
        within
            && u64::from(self.wg_x) * u64::from(self.wg_y)
                <= u64::from(limits.max_compute_invocations_per_workgroup)
            && u64::from(element)
                * u64::from(self.bk)
                * (u64::from(self.tile_rows()) + u64::from(self.tile_cols()) + pad)
                <= u64::from(limits.max_compute_workgroup_storage_size)
    }

    /// The kernels' own bounds: every field positive, at most 8 × 8 accumulators per
    /// thread; with `vec4`, `tm` and `tn` 4 or 8 and `bk` a multiple of 4; `prefetch`
    /// only with `vec4`, and at most 4 vectors of x and of w per thread and slice.
    fn kernel_allows(&self) -> bool {
        let positive = ![self.wg_x, self.wg_y, self.tm, self.tn, self.bk].contains(&0);
        let within = positive
            && if self.vec4 {
                matches!(self.tm, 4 | 8) && matches!(self.tn, 4 | 8) && self.bk.is_multiple_of(4)
            } else {
                self.tm <= 8 && self.tn <= 8
            };
        within && (!self.prefetch || self.vec4 && self.prefetch_slots() <= 4)
    }

    /// Vectors of x or of w (the more) one thread stages per slice.
    /// In u64 (any fields: it runs before the limits are checked); `u64::MAX` for a
    /// workgroup of no threads.
    fn prefetch_slots(&self) -> u64 {
        let threads = u64::from(self.wg_x) * u64::from(self.wg_y);
        let rows = u64::from(self.wg_y) * u64::from(self.tm);
        let cols = u64::from(self.wg_x) * u64::from(self.tn);
        let vectors = rows.max(cols).saturating_mul(u64::from(self.bk / 4));
        if threads == 0 {
            u64::MAX
        } else {
            vectors.div_ceil(threads)
        }
    }

    /// Why this configuration cannot run, for [`Error::TileUnsupported`].
    fn unsupported(&self, ctx: &GpuContext, precision: Precision) -> Error {
        let why = if self.kernel_allows() {
            "workgroup size or workgroup memory"
        } else if self.prefetch && !self.vec4 {
            "prefetch needs vec4"
        } else if self.prefetch && self.prefetch_slots() > 4 {
            "prefetch stages at most 4 vectors of x and of w per thread and slice"
        } else if self.vec4 {
            "vec4 tiles take tm and tn 4 or 8 and bk a multiple of 4"
        } else {
            "the kernels take positive values and at most 8 x 8 accumulators per thread"
        };
        Error::TileUnsupported {
            device: ctx.label.to_string(),
            tile: format!("{self:?} ({why}, {})", precision.name()),
        }
    }
}

/// The shape of one workgroup of the cooperative-matrix kernel
/// ([`Precision::F16CoopMatrix`]), counted in cooperative matrices of the adapter's
/// side (16 or 8): `by × bx` blocks of `tmc × tnc` matrices, one block per subgroup,
/// staging `bk` matrices' depth of the inner dimension at a time. A workgroup computes
/// `by·tmc·side` rows by `bx·tnc·side` outputs.
///
/// A workgroup has `bx·by` times the adapter's largest subgroup size in invocations
/// (the largest of [`AdapterInfo::subgroup_sizes`](crate::AdapterInfo)), so that every
/// block has a subgroup whatever size the driver picks; a shape whose workgroup or
/// workgroup memory exceeds the device's limits fails with
/// [`Error::TileUnsupported`]. Where the driver runs smaller subgroups than its
/// largest (wgpu reports ranges such as 32..64 on some AMD and Apple GPUs), the extra
/// subgroups repeat a block's work and store it nowhere: correct, but slower. The
/// H100 has one size, 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CoopShape {
    /// Blocks (subgroups) per workgroup along the outputs.
    pub bx: u32,
    /// Blocks (subgroups) per workgroup along the rows.
    pub by: u32,
    /// Matrices per block along the rows, at most 4.
    pub tmc: u32,
    /// Matrices per block along the outputs, at most 4.
    pub tnc: u32,
    /// Depth of each staged slice of the inner dimension, in matrices.
    pub bk: u32,
    /// Where the input width is a multiple of 4: each thread loads the next slice of
    /// x and w into registers while the current one is multiplied (`PREFETCH` in
    /// `dense_coop.wgsl`), so that the loads' latency hides behind the matrix
    /// products. A thread stages at most 4 vectors of each per slice: the tile's rows
    /// and outputs times the slice's depth at most 16 times the workgroup's threads
    /// (which depend on the adapter's subgroup size).
    #[serde(default)]
    pub prefetch: bool,
}

/// A cooperative-matrix shape.
const fn coop(bx: u32, by: u32, tmc: u32, tnc: u32, bk: u32) -> CoopShape {
    CoopShape {
        bx,
        by,
        tmc,
        tnc,
        bk,
        prefetch: false,
    }
}

/// A cooperative-matrix shape that loads each slice ahead.
const fn coop_ahead(bx: u32, by: u32, tmc: u32, tnc: u32, bk: u32) -> CoopShape {
    CoopShape {
        prefetch: true,
        ..coop(bx, by, tmc, tnc, bk)
    }
}

impl CoopShape {
    /// The shape used when autotuning is off: 2 × 2 blocks of 2 × 2 matrices (64 × 64
    /// tiles with 16 × 16 matrices).
    pub const DEFAULT: CoopShape = coop(2, 2, 2, 2, 2);

    /// The shapes the autotune times.
    pub const CANDIDATES: [CoopShape; 12] = [
        CoopShape::DEFAULT,
        // 128 × 128 tiles (16 × 16 matrices): 4 subgroups of 4 × 4 matrices, ...
        coop(2, 2, 4, 4, 2),
        // ... the same with twice the depth per slice, ...
        coop(2, 2, 4, 4, 4),
        // ... 8 subgroups of 2 × 4, ...
        coop(2, 4, 2, 4, 2),
        // ... 16 subgroups of 2 × 2.
        coop(4, 4, 2, 2, 2),
        // 64 × 128 tiles.
        coop(2, 2, 2, 4, 2),
        // Loading each slice ahead (at most 4 vectors of x and of w per thread with
        // subgroups of 8 to 32): the default, 128 × 128 tiles of 4 subgroups with
        // slices one matrix deep, of 8 and of 16 subgroups.
        coop_ahead(2, 2, 2, 2, 2),
        coop_ahead(2, 2, 4, 4, 1),
        coop_ahead(2, 4, 2, 4, 2),
        coop_ahead(4, 4, 2, 2, 2),
        // 128 × 256 and 256 × 128 tiles of 16 subgroups of 2 × 4 and 4 × 2 (on the
        // H100 at 4096³: 1.32 and 1.54 ms against 1.99 for the 128 × 128 above, in
        // one run).
        coop_ahead(4, 4, 2, 4, 2),
        coop_ahead(4, 4, 4, 2, 2),
    ];
}

/// `dense_coop.wgsl` on one device: the matrix side, the adapter's largest subgroup
/// size, and the workgroup shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CoopTile {
    /// The side of the cooperative matrices (16 or 8).
    pub(crate) size: u32,
    /// The adapter's largest subgroup size: a workgroup has one of that size per block.
    pub(crate) subgroup: u32,
    pub(crate) shape: CoopShape,
}

impl CoopTile {
    /// Checks that the device has what the cooperative-matrix kernel needs and picks
    /// the largest matrix size the adapter lists with f16 operands and an f32
    /// accumulator, with the default shape (whether a shape fits the device's limits
    /// is checked where it is chosen, [`Tuner::choose_coop`]).
    pub(crate) fn for_device(ctx: &GpuContext) -> Result<Self> {
        let device = &ctx.device;
        let unsupported = |missing: &'static str| Error::PrecisionUnsupported {
            device: ctx.label.to_string(),
            precision: Precision::F16CoopMatrix.name(),
            missing,
        };
        for (feature, name) in [
            (wgpu::Features::SHADER_F16, "SHADER_F16"),
            (wgpu::Features::SUBGROUP, "SUBGROUP"),
            (
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
                "EXPERIMENTAL_COOPERATIVE_MATRIX",
            ),
        ] {
            if !device.features().contains(feature) {
                return Err(unsupported(name));
            }
        }
        let Some(adapter) = &ctx.adapter else {
            return Err(unsupported(
                "a known adapter (the cooperative-matrix configurations of a device handed \
                 in by the caller cannot be queried)",
            ));
        };
        let size = [16, 8]
            .into_iter()
            .find(|&size| {
                adapter.cooperative_matrix_properties().iter().any(|c| {
                    c.m_size == size
                        && c.n_size == size
                        && c.k_size == size
                        && c.ab_type == wgpu::CooperativeScalarType::F16
                        && c.cr_type == wgpu::CooperativeScalarType::F32
                })
            })
            .ok_or_else(|| {
                unsupported(
                    "a 16x16x16 or 8x8x8 cooperative matrix with f16 operands and f32 \
                     accumulator",
                )
            })?;
        Ok(Self {
            size,
            subgroup: device.adapter_info().subgroup_max_size.max(1),
            shape: CoopShape::DEFAULT,
        })
    }

    /// This tile with another shape.
    pub(crate) fn with_shape(self, shape: CoopShape) -> Self {
        Self { shape, ..self }
    }

    /// Threads per workgroup (call only on a tile that [`fits`](Self::fits)).
    fn wg(&self) -> u32 {
        self.shape.bx * self.shape.by * self.subgroup
    }

    /// Whether the kernel can run this tile (at most 4 × 4 matrices per block) within
    /// the device's limits (workgroup size, workgroup memory).
    pub(crate) fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.kernel_allows() && self.within(limits)
    }

    /// The kernel's own bounds: every field positive, at most 4 × 4 matrices per
    /// block, and with `prefetch` at most 4 vectors of x and of w per thread and slice.
    fn kernel_allows(&self) -> bool {
        let s = self.shape;
        self.positive() && s.tmc <= 4 && s.tnc <= 4 && (!s.prefetch || self.prefetch_slots() <= 4)
    }

    /// Every field of the shape is positive.
    fn positive(&self) -> bool {
        let s = self.shape;
        ![s.bx, s.by, s.tmc, s.tnc, s.bk].contains(&0)
    }

    /// Vectors of x or w (the larger) one thread stages per slice: the tile's rows
    /// (outputs) times the slice's depth in vectors, over the workgroup's threads;
    /// `u64::MAX` for a shape of no threads.
    fn prefetch_slots(&self) -> u64 {
        let s = self.shape;
        let (size, subgroup) = (u64::from(self.size), u64::from(self.subgroup));
        let threads = (u64::from(s.bx) * u64::from(s.by)).saturating_mul(subgroup);
        let rows = u64::from(s.by) * u64::from(s.tmc) * size;
        let cols = u64::from(s.bx) * u64::from(s.tnc) * size;
        let vectors = rows.max(cols).saturating_mul(u64::from(s.bk) * size / 4);
        if threads == 0 {
            u64::MAX
        } else {
            vectors.div_ceil(threads)
        }
    }

    fn within(&self, limits: &wgpu::Limits) -> bool {
        let s = self.shape;
        // Checked arithmetic: a shape from a file or the command line may be anything.
        let mul = |values: &[u32]| {
            values
                .iter()
                .try_fold(1u64, |acc, &v| acc.checked_mul(u64::from(v)))
        };
        let (Some(wg), Some(rows), Some(cols), Some(depth), Some(blocks)) = (
            mul(&[s.bx, s.by, self.subgroup]),
            mul(&[s.by, s.tmc, self.size]),
            mul(&[s.bx, s.tnc, self.size]),
            // Rows of the staged slices are COOP_PAD values longer than the slice.
            mul(&[s.bk, self.size]).and_then(|v| v.checked_add(u64::from(COOP_PAD))),
            mul(&[s.bx, s.by]),
        ) else {
            return false;
        };
        let staged = rows
            .checked_add(cols)
            .and_then(|v| v.checked_mul(depth))
            .and_then(|v| v.checked_mul(2));
        let out = blocks
            .checked_add(1)
            .and_then(|v| v.checked_mul(4 * u64::from(self.size) * u64::from(self.size)));
        let shared = staged.zip(out).and_then(|(a, b)| a.checked_add(b));
        wg <= u64::from(limits.max_compute_invocations_per_workgroup)
            && wg <= u64::from(limits.max_compute_workgroup_size_x)
            && rows <= u64::from(u32::MAX)
            && cols <= u64::from(u32::MAX)
            && shared.is_some_and(|b| b <= u64::from(limits.max_compute_workgroup_storage_size))
    }

    /// Why this tile cannot run, for [`Error::TileUnsupported`].
    fn unsupported(&self, ctx: &GpuContext) -> Error {
        let s = self.shape;
        let why = if self.kernel_allows() {
            format!(
                "workgroups of {} subgroups of up to {} invocations",
                u64::from(s.bx) * u64::from(s.by),
                self.subgroup
            )
        } else if s.prefetch && self.positive() && self.prefetch_slots() > 4 {
            format!(
                "prefetch stages at most 4 vectors of x and of w per thread and slice, with \
                 subgroups of {} invocations",
                self.subgroup
            )
        } else {
            "the kernel takes positive values and at most 4 x 4 matrices per block".to_string()
        };
        Error::TileUnsupported {
            device: ctx.label.to_string(),
            tile: format!("{:?} with {1}x{1} matrices ({why})", self.shape, self.size),
        }
    }

    /// Rows of y one workgroup computes.
    pub(crate) fn tile_rows(&self) -> u32 {
        self.shape.by * self.shape.tmc * self.size
    }

    /// Outputs of y one workgroup computes.
    pub(crate) fn tile_cols(&self) -> u32 {
        self.shape.bx * self.shape.tnc * self.size
    }

    /// The override constants (call only on a tile that [`fits`](Self::fits)).
    pub(crate) fn constants(&self, act: u32) -> [(&'static str, u32); 8] {
        let s = self.shape;
        [
            ("ACT", act),
            ("WG", self.wg()),
            ("BX", s.bx),
            ("BY", s.by),
            ("TMC", s.tmc),
            ("TNC", s.tnc),
            ("BK", s.bk * self.size),
            ("PREFETCH", u32::from(s.prefetch)),
        ]
    }
}

/// Power-of-two buckets of (rows, outputs, inputs), between 16 and 8192.
fn bucket(v: usize) -> u32 {
    v.clamp(16, 8192).next_power_of_two() as u32
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Key {
    adapter: String,
    precision: String,
    rows: u32,
    outputs: u32,
    inputs: u32,
    /// Whether the input width is a multiple of 4: only such layers run the `vec4`
    /// kernels, so the two kinds are timed apart (entries of files written before
    /// the `vec4` tiles read as `false`, and layers that can run them are timed again).
    #[serde(default)]
    aligned: bool,
    /// Members that run the layer in one dispatch (a stack, see src/gpu/executor.rs),
    /// rounded up to a power of two: a stack gives the device more workgroups than one
    /// member, which can favour larger tiles (entries of files written before stacks
    /// read as 1).
    #[serde(default = "one")]
    members: u32,
    /// How many candidates the choice was made among (tiles, or coop shapes): once
    /// candidates are added, a layer is timed again (entries of files written before
    /// this field read as 0).
    #[serde(default)]
    candidates: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: Key,
    config: TileConfig,
}

#[derive(Serialize, Deserialize)]
struct CoopEntry {
    #[serde(flatten)]
    key: Key,
    shape: CoopShape,
}

#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    #[serde(default)]
    entry: Vec<Entry>,
    /// Shapes of the cooperative-matrix kernel.
    #[serde(default)]
    coop: Vec<CoopEntry>,
}

fn cache() -> &'static Mutex<HashMap<Key, TileConfig>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, TileConfig>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn coop_cache() -> &'static Mutex<HashMap<Key, CoopShape>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, CoopShape>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn key_order(k: &Key) -> (&str, &str, u32, u32, u32, bool, u32, u32) {
    (
        &k.adapter,
        &k.precision,
        k.rows,
        k.outputs,
        k.inputs,
        k.aligned,
        k.members,
        k.candidates,
    )
}

/// Merges a cache file into the in-memory cache; a missing file is an empty cache.
fn load_file(path: &Path) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::io::io_error(path, e)),
    };
    let file: CacheFile = toml::from_str(&text).map_err(|e| Error::Manifest {
        path: path.to_path_buf(),
        message: format!("autotune cache: {e}"),
    })?;
    let mut map = cache().lock().unwrap_or_else(PoisonError::into_inner);
    for e in file.entry {
        map.entry(e.key).or_insert(e.config);
    }
    let mut coop = coop_cache().lock().unwrap_or_else(PoisonError::into_inner);
    for e in file.coop {
        coop.entry(e.key).or_insert(e.shape);
    }
    Ok(())
}

fn save_file(path: &Path) -> Result<()> {
    let mut entry: Vec<Entry> = cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, c)| Entry {
            key: k.clone(),
            config: *c,
        })
        .collect();
    entry.sort_by(|a, b| key_order(&a.key).cmp(&key_order(&b.key)));
    let mut coop: Vec<CoopEntry> = coop_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, c)| CoopEntry {
            key: k.clone(),
            shape: *c,
        })
        .collect();
    coop.sort_by(|a, b| key_order(&a.key).cmp(&key_order(&b.key)));
    let text =
        toml::to_string(&CacheFile { entry, coop }).map_err(|e| crate::io::io_error(path, e))?;
    crate::io::write_atomically(path, text.as_bytes())
}

/// How a session picks tile configurations.
#[derive(Clone, Debug)]
pub(crate) struct Tuner {
    pub(crate) enabled: bool,
    pub(crate) rows: usize,
    pub(crate) cache_file: Option<PathBuf>,
    pub(crate) fixed: Option<TileConfig>,
    pub(crate) fixed_coop: Option<CoopShape>,
}

impl Tuner {
    /// The session's tuning settings; reads the cache file (once) when there is one.
    pub(crate) fn new(options: &crate::session::SessionOptions) -> Result<Self> {
        if options.autotune {
            if let Some(path) = &options.autotune_cache {
                load_file(path)?;
            }
        }
        Ok(Self {
            enabled: options.autotune,
            rows: options.autotune_batch,
            cache_file: options.autotune_cache.clone(),
            fixed: options.tile,
            fixed_coop: options.coop_shape,
        })
    }

    /// The tile configuration for a `[outputs, inputs]` layer on this device, run by
    /// a stack of `members`.
    pub(crate) fn choose(
        &self,
        ctx: &GpuContext,
        kernels: &mut Kernels,
        precision: Precision,
        (outputs, inputs): (usize, usize),
        members: usize,
    ) -> Result<TileConfig> {
        let limits = ctx.device.limits();
        if let Some(tile) = self.fixed {
            if !tile.fits(&limits, precision) {
                return Err(tile.unsupported(ctx, precision));
            }
            return Ok(tile);
        }
        if !self.enabled {
            return Ok(TileConfig::DEFAULT);
        }
        let candidates = TileConfig::CANDIDATES.len();
        let key = self.key(ctx, precision, (outputs, inputs), members, candidates);
        let key_aligned = key.aligned;
        let tuned = self.tune(
            ctx,
            kernels,
            (precision, key),
            cache(),
            TileConfig::CANDIDATES,
            // A layer that cannot run the vec4 kernels would time their tiles twice.
            |t| t.fits(&limits, precision) && (key_aligned || !t.vec4),
            // The kernel this layer would run (the synthetic data of the timing is as
            // wide as the shape class, a multiple of 4).
            |t| {
                let kernel = t.kernel(precision, inputs);
                (
                    kernel,
                    t.constants(0, kernel),
                    (t.tile_cols(), t.tile_rows()),
                )
            },
        )?;
        // Nothing could be timed: the default.
        Ok(tuned.unwrap_or(TileConfig::DEFAULT))
    }

    /// The cooperative-matrix tile for a `[outputs, inputs]` layer on this device, run
    /// by a stack of `members`:
    /// `base` (from [`CoopTile::for_device`]) with the fixed shape, the default one, or
    /// the fastest candidate when autotuning. The shape is checked against the device's
    /// limits whichever way it was chosen (a cached one too).
    pub(crate) fn choose_coop(
        &self,
        ctx: &GpuContext,
        kernels: &mut Kernels,
        base: CoopTile,
        (outputs, inputs): (usize, usize),
        members: usize,
    ) -> Result<CoopTile> {
        let limits = ctx.device.limits();
        let checked = |tile: CoopTile| {
            if tile.fits(&limits) {
                Ok(tile)
            } else {
                Err(tile.unsupported(ctx))
            }
        };
        if let Some(shape) = self.fixed_coop {
            return checked(base.with_shape(shape));
        }
        if !self.enabled {
            return checked(base);
        }
        // The matrix side and subgroup size are part of the key: a driver that starts
        // offering 16 x 16 matrices must not reuse a shape timed with 8 x 8 ones.
        let candidates = CoopShape::CANDIDATES.len();
        let mut key = self.key(
            ctx,
            Precision::F16CoopMatrix,
            (outputs, inputs),
            members,
            candidates,
        );
        key.precision = format!(
            "{}/{}x{}/subgroup {}",
            key.precision, base.size, base.size, base.subgroup
        );
        let tuned = self.tune(
            ctx,
            kernels,
            (Precision::F16CoopMatrix, key),
            coop_cache(),
            CoopShape::CANDIDATES,
            |&shape| base.with_shape(shape).fits(&limits),
            |&shape| {
                let t = base.with_shape(shape);
                let constants = t.constants(0).to_vec();
                (
                    dense_coop(base.size),
                    constants,
                    (t.tile_cols(), t.tile_rows()),
                )
            },
        )?;
        match tuned {
            Some(shape) => Ok(base.with_shape(shape)),
            // Nothing could be timed: the default.
            None => checked(base),
        }
    }

    /// The autotune behind [`choose`](Self::choose) and
    /// [`choose_coop`](Self::choose_coop): the cached choice for `key` if the device
    /// can run it (an edited cache file may hold one it cannot: it is timed again),
    /// else the fastest of the `candidates` that fit, remembered in `cache` and the
    /// cache file. `launch` gives a candidate's kernel, its override constants and the
    /// outputs and rows one workgroup computes. `None` when no candidate could be timed; nothing
    /// is remembered then.
    #[allow(clippy::too_many_arguments)]
    fn tune<T: Copy>(
        &self,
        ctx: &GpuContext,
        kernels: &mut Kernels,
        (precision, key): (Precision, Key),
        cache: &Mutex<HashMap<Key, T>>,
        candidates: impl IntoIterator<Item = T>,
        fits: impl Fn(&T) -> bool,
        launch: impl Fn(&T) -> (Kernel, Vec<(&'static str, u32)>, (u32, u32)),
    ) -> Result<Option<T>> {
        let cached = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(c) = cached.filter(&fits) {
            return Ok(Some(c));
        }
        let mut best: Option<(Duration, T)> = None;
        for candidate in candidates.into_iter().filter(&fits) {
            let (kernel, constants, dims) = launch(&candidate);
            // A candidate the device cannot time is not chosen; one already twice as
            // slow as the best so far is not timed further.
            let give_up = best.map(|(b, _)| b.saturating_mul(2));
            let timed = time_kernel(
                ctx,
                kernels,
                precision,
                (kernel, &constants, dims),
                &key,
                give_up,
            );
            if let Ok(t) = timed {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, candidate));
                }
            }
        }
        match best {
            Some((_, choice)) => {
                self.remember(cache, key, choice)?;
                Ok(Some(choice))
            }
            None => Ok(None),
        }
    }

    /// Keeps a timed choice in the process's cache and in the cache file, if any.
    fn remember<T>(&self, cache: &Mutex<HashMap<Key, T>>, key: Key, choice: T) -> Result<()> {
        cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, choice);
        match &self.cache_file {
            Some(path) => save_file(path),
            None => Ok(()),
        }
    }

    fn key(
        &self,
        ctx: &GpuContext,
        precision: Precision,
        (outputs, inputs): (usize, usize),
        members: usize,
        candidates: usize,
    ) -> Key {
        Key {
            adapter: ctx.adapter_key(),
            precision: precision.name().to_string(),
            rows: bucket(self.rows),
            outputs: bucket(outputs),
            inputs: bucket(inputs),
            aligned: inputs.is_multiple_of(4),
            members: members.max(1).next_power_of_two() as u32,
            candidates: candidates as u32,
        }
    }
}

/// The best of three timed submissions of four dispatches' work each (one dispatch for
/// a stack of four members or more), on synthetic data of the shape class, after one
/// untimed; a submission slower than `give_up` ends the timing there. Timed by the
/// device's timestamps where it has `TIMESTAMP_QUERY`, else by the wall clock from
/// submission to the end of the wait. A stack's
/// members share the input and the weights here, each with an output of its own.
/// `(tile_cols, tile_rows)` are the outputs and rows one workgroup of the pipeline
/// computes.
fn time_kernel(
    ctx: &GpuContext,
    kernels: &mut Kernels,
    precision: Precision,
    (kernel, constants, (tile_cols, tile_rows)): (Kernel, &[(&'static str, u32)], (u32, u32)),
    key: &Key,
    give_up: Option<Duration>,
) -> Result<Duration> {
    let device = &ctx.device;
    let (mut m, mut n, mut k) = (key.rows as usize, key.outputs as usize, key.inputs as usize);
    let members = key.members.max(1) as usize;
    // Keep every synthetic buffer within the device's binding limit.
    let limits = device.limits();
    let max_values = (limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / 4) as usize;
    while m * k > max_values || n * k > max_values || members * (m * n + 3) > max_values {
        if m >= n && m > 16 {
            m /= 2;
        } else if n > 16 {
            n /= 2;
        } else if k > 16 {
            k /= 2;
        } else {
            break;
        }
    }
    let pipeline = kernels.pipeline(device, kernel, constants)?;
    // Errors of this timing only: an earlier error stays for the caller to report.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let weight_bytes = match precision {
        Precision::F32 => (n * k * 4).next_multiple_of(16),
        Precision::F16 | Precision::F16CoopMatrix => (n * k * 2).next_multiple_of(8),
    };
    let buffer = |size: usize, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("autotune"),
            size: size as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    // dense_coop.wgsl reads x as vec4<f32>.
    let x = buffer(
        (m * k * 4).next_multiple_of(16),
        wgpu::BufferUsages::STORAGE,
    );
    let w = buffer(weight_bytes, wgpu::BufferUsages::STORAGE);
    let b = buffer(n * 4, wgpu::BufferUsages::STORAGE);
    let y_stride = (m * n).next_multiple_of(4);
    let y = buffer(members * y_stride * 4, wgpu::BufferUsages::STORAGE);
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("autotune params"),
        // dense.wgsl's Params: rows, outputs, inputs, then the x, w, b and y strides.
        contents: bytemuck::cast_slice(&[m, n, k, 0, 0, 0, y_stride, 0].map(|v| v as u32)),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("autotune"),
        layout: &kernels.dense_layout,
        entries: &[&x, &w, &b, &y, &params]
            .iter()
            .enumerate()
            .map(|(i, buf)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: buf.as_entire_binding(),
            })
            .collect::<Vec<_>>(),
    });
    let groups = (
        (n as u32).div_ceil(tile_cols),
        (m as u32).div_ceil(tile_rows),
    );
    // Where the device has timestamps, a round's time is the GPU's time for the
    // dispatches: on a fast GPU the submission and the wait take longer than a small
    // layer's kernels, and their jitter would decide between the candidates.
    // The timer, and the buffer its timestamps are read back from.
    let timing = PassTimer::new(ctx).map(|timer| {
        let stamps = buffer(
            timing::BYTES as usize,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        (timer, stamps)
    });
    let gpu_error = |e: &dyn std::fmt::Display| Error::Gpu {
        device: ctx.label.to_string(),
        message: format!("autotune: {e}"),
    };
    let mut best = Duration::MAX;
    for round in 0..4 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("autotune"),
                timestamp_writes: timing.as_ref().map(|(timer, _)| timer.writes()),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            for _ in 0..(4 / members).max(1) {
                pass.dispatch_workgroups(groups.0, groups.1, members as u32);
            }
        }
        if let Some((timer, stamps)) = &timing {
            timer.copy_to(&mut encoder, stamps, 0);
        }
        let started = Instant::now();
        let index = ctx.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some((_, stamps)) = &timing {
            stamps.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        }
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: Some(Duration::from_secs(60)),
            })
            .map_err(|e| gpu_error(&e))?;
        let wall = started.elapsed();
        let gpu = match &timing {
            Some((timer, stamps)) => {
                // Another thread's wait on the device may run the callback.
                rx.recv_timeout(super::executor::CALLBACK_GRACE)
                    .map_err(|e| gpu_error(&e))?
                    .map_err(|e| gpu_error(&e))?;
                let time = {
                    let view = stamps
                        .slice(..)
                        .get_mapped_range()
                        .map_err(|e| gpu_error(&e))?;
                    timer.elapsed(&view)
                };
                stamps.unmap();
                Some((time, timer.tick()))
            }
            None => None,
        };
        let took = round_time(gpu, wall);
        // The first round compiles and warms up.
        if round > 0 {
            best = best.min(took);
            // Two rounds at least: one slow round on a busy machine is not enough.
            if round > 1 && give_up.is_some_and(|limit| best > limit) {
                break;
            }
        }
    }
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu {
            device: ctx.label.to_string(),
            message: format!("autotune: {e}"),
        });
    }
    Ok(best)
}

/// A timing round's time: the device's, where it has timestamps, at least one tick (a
/// pass too short for the clock reads zero: the fastest candidate, not the slowest);
/// else the wall clock's. The two are never mixed within one device.
fn round_time(gpu: Option<(Duration, Duration)>, wall: Duration) -> Duration {
    match gpu {
        Some((time, tick)) => time.max(tick),
        None => wall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device's time when there is one, never below a tick; else the wall clock.
    #[test]
    fn a_round_takes_the_devices_time() {
        let (ms, ns) = (Duration::from_millis, Duration::from_nanos);
        assert_eq!(round_time(Some((ms(2), ns(1))), ms(5)), ms(2));
        assert_eq!(round_time(Some((Duration::ZERO, ns(1))), ms(5)), ns(1));
        assert_eq!(round_time(Some((ns(3), ns(8))), ms(5)), ns(8));
        assert_eq!(round_time(None, ms(5)), ms(5));
    }

    /// The workgroup memory `dense_coop.wgsl` declares for a shape: the two staged
    /// slices (rows `BK + PAD` long, f16) and `c_tile` (one f32 matrix per block, plus
    /// a spare).
    fn coop_shared_bytes(t: &CoopTile) -> u64 {
        let s = t.shape;
        let ld = u64::from(s.bk * t.size + COOP_PAD);
        let staged = u64::from((s.by * s.tmc + s.bx * s.tnc) * t.size) * ld * 2;
        staged + u64::from(s.bx * s.by + 1) * u64::from(t.size * t.size) * 4
    }

    /// Any field values, however absurd, give an answer (no division by zero, no
    /// overflow) when a prefetching tile is checked or refused.
    #[test]
    fn prefetch_checks_take_any_fields() {
        let base = TileConfig::CANDIDATES[12];
        let odd = [
            TileConfig { wg_x: 0, ..base },
            TileConfig { wg_y: 0, ..base },
            TileConfig {
                wg_y: 1 << 30,
                tm: 8,
                ..base
            },
            TileConfig {
                wg_x: u32::MAX,
                wg_y: u32::MAX,
                tn: 8,
                bk: u32::MAX,
                ..base
            },
        ];
        for tile in odd {
            assert!(
                !tile.kernel_allows() || tile.prefetch_slots() <= 4,
                "{tile:?}"
            );
            let _ = tile.prefetch_slots();
        }
        assert_eq!(odd[0].prefetch_slots(), u64::MAX);
        assert!(!odd[0].kernel_allows() && !odd[1].kernel_allows());
    }

    /// A prefetching tile sets `PREFETCH` in the vec4 kernels; the strided kernel,
    /// which runs the same tile on layers whose inputs are not a multiple of 4, has
    /// no such constant and gets none.
    #[test]
    fn prefetch_is_a_constant_of_the_vec4_kernels_only() {
        let tile = TileConfig::CANDIDATES[12];
        assert!(tile.prefetch && tile.vec4);
        for precision in [Precision::F32, Precision::F16] {
            let vec4 = tile.kernel(precision, 64);
            assert!(vec4.source.contains("override PREFETCH"));
            assert!(tile.constants(1, vec4).contains(&("PREFETCH", 1)));
            let plain = TileConfig::DEFAULT.constants(1, vec4);
            assert!(plain.contains(&("PREFETCH", 0)));
            let strided = tile.kernel(precision, 63);
            assert!(!strided.source.contains("PREFETCH"));
            assert!(!tile
                .constants(1, strided)
                .iter()
                .any(|(n, _)| *n == "PREFETCH"));
        }
    }

    /// Cache files written before the `vec4` tiles, stacks and the prefetch tiles hold
    /// entries without `aligned`, `members` and `candidates`: they read as unaligned,
    /// single-member keys chosen among no candidates (so every layer is timed again
    /// among today's), with a strided tile.
    #[test]
    fn old_cache_entries_read_as_unaligned_and_single_member() {
        let old = r#"
            [[entry]]
            adapter = "Vulkan/llvmpipe"
            precision = "f32"
            rows = 64
            outputs = 512
            inputs = 1024
            config = { wg_x = 16, wg_y = 16, tm = 4, tn = 4, bk = 16 }
        "#;
        let file: CacheFile = toml::from_str(old).unwrap();
        let e = &file.entry[0];
        assert!(!e.key.aligned);
        assert_eq!(e.key.members, 1);
        assert_eq!(e.key.candidates, 0);
        assert!(!e.config.vec4);
        let again: CacheFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(again.entry[0].key, e.key);
    }

    /// The workgroup-memory check of the vec4 tiles counts the kernels' padding: the
    /// declarations it assumes, and a limit exactly at and one byte below a tile's
    /// padded size.
    #[test]
    fn vec4_tiles_fit_exactly_when_the_kernel_memory_does() {
        for (source, element) in [(DENSE_VEC4.source, 4u32), (DENSE_VEC4_F16.source, 2)] {
            assert!(source.contains("BK * (WG_Y * TM / 4u + 1u)>"));
            assert!(source.contains("BK * (WG_X * TN / 4u + 1u)>"));
            let precision = if element == 4 {
                Precision::F32
            } else {
                Precision::F16
            };
            for t in TileConfig::CANDIDATES.into_iter().filter(|t| t.vec4) {
                let padded = element * t.bk * (t.tile_rows() + 4 + t.tile_cols() + 4);
                let at = |bytes: u32| wgpu::Limits {
                    max_compute_workgroup_storage_size: bytes,
                    ..wgpu::Limits::default()
                };
                assert!(t.fits(&at(padded), precision), "{t:?} at {padded}");
                assert!(!t.fits(&at(padded - 1), precision), "{t:?} below {padded}");
            }
        }
    }

    /// The H100's limits the coop kernel meets: 48 KiB of workgroup memory, 1024
    /// invocations.
    fn h100_limits() -> wgpu::Limits {
        wgpu::Limits {
            max_compute_workgroup_storage_size: 49152,
            max_compute_invocations_per_workgroup: 1024,
            max_compute_workgroup_size_x: 1024,
            ..wgpu::Limits::default()
        }
    }

    /// The H100's coop tile: 16 × 16 matrices, subgroups of 32, the default shape.
    fn h100_tile() -> CoopTile {
        CoopTile {
            size: 16,
            subgroup: 32,
            shape: CoopShape::DEFAULT,
        }
    }

    #[test]
    fn coop_shapes_fit_exactly_when_the_kernel_memory_does() {
        let (limits, base) = (h100_limits(), h100_tile());
        let mut checked = 0;
        for bk in 1..=8 {
            for (tmc, tnc) in [(1, 1), (2, 4), (4, 4), (3, 1)] {
                let t = base.with_shape(coop(2, 2, tmc, tnc, bk));
                let needed = coop_shared_bytes(&t);
                assert_eq!(
                    t.fits(&limits),
                    needed <= 49152,
                    "{:?}: kernel needs {needed} bytes",
                    t.shape
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 32);
        // Within the padding of the limit: 46080 bytes unpadded, 50176 with it.
        let edge = base.with_shape(coop(2, 2, 4, 4, 5));
        assert!(!edge.fits(&limits));
    }

    /// A prefetching coop shape fits when its threads stage at most 4 vectors of x and
    /// of w per slice, which depends on the subgroup size; the H100's (16 × 16
    /// matrices, subgroups of 32) and lavapipe's (8 × 8, 8) take every candidate;
    /// absurd fields give an answer, not a panic.
    #[test]
    fn coop_prefetch_fits_by_the_vectors_per_thread() {
        let (limits, h100) = (h100_limits(), h100_tile());
        let lavapipe = CoopTile {
            size: 8,
            subgroup: 8,
            ..h100
        };
        for base in [h100, lavapipe] {
            for shape in CoopShape::CANDIDATES {
                assert!(base.with_shape(shape).fits(&limits), "{shape:?}");
            }
        }
        // 128 × 128 tiles of 4 subgroups of 32, slices of 32: 8 vectors per thread.
        let deep = h100.with_shape(coop_ahead(2, 2, 4, 4, 2));
        assert_eq!(deep.prefetch_slots(), 8);
        assert!(!deep.fits(&limits));
        assert!(h100.with_shape(coop(2, 2, 4, 4, 2)).fits(&limits));
        // 64 × 64 of 4 subgroups of 32, slices of 32: exactly 4.
        assert_eq!(
            h100.with_shape(coop_ahead(2, 2, 2, 2, 2)).prefetch_slots(),
            4
        );
        // A partial last slot counts: 64 × 128 with slices of 16 is 4 for x and 4 for w
        // at 128 threads; at 96 threads (subgroups of 24), 6.
        let odd = CoopTile {
            subgroup: 24,
            ..h100
        };
        assert_eq!(
            odd.with_shape(coop_ahead(2, 2, 2, 4, 1)).prefetch_slots(),
            6
        );
        for shape in [
            coop_ahead(0, 2, 2, 2, 2),
            coop_ahead(u32::MAX, u32::MAX, 4, 4, u32::MAX),
            coop_ahead(1, 1, 4, 4, u32::MAX),
        ] {
            let t = h100.with_shape(shape);
            let _ = (t.fits(&limits), t.prefetch_slots());
        }
        assert_eq!(
            h100.with_shape(coop_ahead(0, 2, 2, 2, 2)).prefetch_slots(),
            u64::MAX
        );
    }
}
