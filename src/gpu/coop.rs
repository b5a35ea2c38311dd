//! The cooperative-matrix kernel on one device ([`CoopTile`]: the adapter's matrix
//! side and subgroup size with a [`CoopShape`]) and the check that a device can run a
//! session's precision.

use super::context::GpuContext;
use super::kernels::COOP_PAD;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::tile::CoopShape;

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
    pub(crate) fn unsupported(&self, ctx: &GpuContext) -> Error {
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

/// Checks that the device can run the dense kernels of `precision`; for
/// `F16CoopMatrix`, also the cooperative-matrix tile it offers (with the default
/// shape).
pub(crate) fn check_precision(ctx: &GpuContext, precision: Precision) -> Result<Option<CoopTile>> {
    match precision {
        Precision::F32 => Ok(None),
        Precision::F16 => {
            if ctx.device.features().contains(wgpu::Features::SHADER_F16) {
                Ok(None)
            } else {
                Err(Error::PrecisionUnsupported {
                    device: ctx.label.to_string(),
                    precision: precision.name(),
                    missing: "SHADER_F16",
                })
            }
        }
        Precision::F16CoopMatrix => CoopTile::for_device(ctx).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tile::{coop, coop_ahead};

    /// The workgroup memory `dense_coop.wgsl` declares for a shape: the two staged
    /// slices (rows `BK + PAD` long, f16) and `c_tile` (one f32 matrix per block, plus
    /// a spare).
    fn coop_shared_bytes(t: &CoopTile) -> u64 {
        let s = t.shape;
        let ld = u64::from(s.bk * t.size + COOP_PAD);
        let staged = u64::from((s.by * s.tmc + s.bx * s.tnc) * t.size) * ld * 2;
        staged + u64::from(s.bx * s.by + 1) * u64::from(t.size * t.size) * 4
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
