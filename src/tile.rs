//! Tile shapes of the dense kernels: [`TileConfig`] for the register-tiled kernels and
//! [`CoopShape`] for the cooperative-matrix kernel, their candidates, the kernels' own
//! bounds and the device limits they must fit. Pure data: the tuner (`gpu/tune/`)
//! times them and the GPU backend runs them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::precision::Precision;

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
    /// of single values strided across the workgroup (`shaders/dense.wgsl`; both
    /// composed in f32 and in f16). For layers whose input
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

/// Values by which `dense_vec4.wgsl` (f32 and f16) pads each k of its
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

    /// Whether a layer `in_features` wide runs this tile on the kernels with runs of
    /// four (`vec4` set and the width a multiple of 4); otherwise on the strided ones.
    pub(crate) fn runs_vec4(&self, in_features: usize) -> bool {
        self.vec4 && in_features.is_multiple_of(4)
    }

    /// Rows of y one workgroup computes.
    pub fn tile_rows(&self) -> u32 {
        self.wg_y * self.tm
    }

    /// Outputs of y one workgroup computes.
    pub fn tile_cols(&self) -> u32 {
        self.wg_x * self.tn
    }

    /// The override constants of the kernel that runs this tile (`vec4_kernel`: the
    /// one with runs of four, which alone has `PREFETCH`; see
    /// [`runs_vec4`](Self::runs_vec4)) for activation `act`.
    pub(crate) fn constants(&self, act: u32, vec4_kernel: bool) -> Vec<(&'static str, u32)> {
        let mut constants = vec![
            ("ACT", act),
            ("WG_X", self.wg_x),
            ("WG_Y", self.wg_y),
            ("TM", self.tm),
            ("TN", self.tn),
            ("BK", self.bk),
        ];
        if vec4_kernel {
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
    pub(crate) fn kernel_allows(&self) -> bool {
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
    pub(crate) fn prefetch_slots(&self) -> u64 {
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

    /// Why this configuration cannot run on a device named `device`, as
    /// [`Error::TileUnsupported`].
    pub(crate) fn unsupported(&self, device: &str, precision: Precision) -> Error {
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
            device: device.to_string(),
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
pub(crate) const fn coop(bx: u32, by: u32, tmc: u32, tnc: u32, bk: u32) -> CoopShape {
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
pub(crate) const fn coop_ahead(bx: u32, by: u32, tmc: u32, tnc: u32, bk: u32) -> CoopShape {
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
        // 128 × 256 and 256 × 128 tiles of 16 subgroups of 2 × 4 and 4 × 2 (the
        // fastest on the H100 at 4096³: benches/results/h100-2026-11-27/NOTES.md).
        coop_ahead(4, 4, 2, 4, 2),
        coop_ahead(4, 4, 4, 2, 2),
    ];
}

/// Five comma-separated integers, the numbers of a tile or coop shape given as text.
fn five(numbers: &[&str]) -> Option<[u32; 5]> {
    let values: Option<Vec<u32>> = numbers.iter().map(|v| v.parse().ok()).collect();
    values.and_then(|v| <[u32; 5]>::try_from(v).ok())
}

impl FromStr for TileConfig {
    type Err = Error;

    /// Parses `WG_X,WG_Y,TM,TN,BK`, then optionally `vec4` (the kernels with runs of
    /// four) and then `prefetch` (with `vec4`), as `wgpu-ensemble bench --tile` takes
    /// it. Whether the tile fits the kernels and a device is checked where it is used.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "tile",
                text,
                "five comma-separated integers, then optionally vec4 and then prefetch",
            )
        };
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let (numbers, words) = fields.split_at(fields.len().min(5));
        // Each word once, prefetch only with vec4.
        let count = |word: &str| words.iter().filter(|w| **w == word).count();
        let (vec4, prefetch) = (count("vec4"), count("prefetch"));
        if vec4 + prefetch != words.len() || vec4 > 1 || prefetch > vec4 {
            return Err(bad());
        }
        let (vec4, prefetch) = (vec4 == 1, prefetch == 1);
        let [wg_x, wg_y, tm, tn, bk] = five(numbers).ok_or_else(bad)?;
        Ok(TileConfig {
            wg_x,
            wg_y,
            tm,
            tn,
            bk,
            vec4,
            prefetch,
        })
    }
}

impl FromStr for CoopShape {
    type Err = Error;

    /// Parses `BX,BY,TMC,TNC,BK`, then optionally `prefetch`, as `wgpu-ensemble bench
    /// --coop-shape` takes it. Whether the shape fits the kernel and a device is
    /// checked where it is used.
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "coop shape",
                text,
                "five comma-separated integers, then optionally prefetch",
            )
        };
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let (numbers, prefetch) = match fields.split_last() {
            Some((&"prefetch", numbers)) => (numbers, true),
            _ => (fields.as_slice(), false),
        };
        let [bx, by, tmc, tnc, bk] = five(numbers).ok_or_else(bad)?;
        Ok(CoopShape {
            bx,
            by,
            tmc,
            tnc,
            bk,
            prefetch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Tiles and coop shapes parse from the command line's text, words in order, and
    /// anything else is refused naming what was expected.
    #[test]
    fn tiles_and_shapes_parse_from_text() {
        let tile = |s: &str| s.parse::<TileConfig>();
        assert_eq!(tile("16,16,4,4,16,vec4").ok(), Some(TileConfig::DEFAULT));
        assert_eq!(
            tile(" 16, 16,8,8 ,8,vec4,prefetch").ok(),
            Some(TileConfig::CANDIDATES[11])
        );
        assert_eq!(tile("16,16,4,4,16").ok(), Some(TileConfig::CANDIDATES[1]));
        assert_eq!(
            tile("16,16,8,8,8,prefetch,vec4").ok(),
            Some(TileConfig::CANDIDATES[11])
        );
        for bad in [
            "16,16,4",
            "16,16,4,4,x",
            "16,16,4,4,-1",
            "16,16,4,4,8,vec5",
            "16,16,4,4,8,prefetch",
            "16,16,4,4,8,vec4,vec4",
            "",
        ] {
            let e = tile(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("expected five"), "{bad}: {e}");
        }
        let shape = |s: &str| s.parse::<CoopShape>();
        assert_eq!(shape("2,2,2,2,2").ok(), Some(CoopShape::DEFAULT));
        assert_eq!(
            shape("4,4,2,4,2,prefetch").ok(),
            Some(CoopShape::CANDIDATES[10])
        );
        for bad in [
            "2,2,2,2",
            "2,2,2,2,2,2",
            "2,2,2,2,x",
            "prefetch",
            "2,2,2,2,2,vec4",
        ] {
            let e = shape(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("expected five"), "{bad}: {e}");
        }
    }
}
