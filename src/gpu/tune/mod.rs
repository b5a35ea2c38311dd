//! The autotune: which tile (or coop shape) each layer of a session runs, fixed,
//! default, or the fastest of the candidates timed on the device (`harness.rs`) and
//! remembered per adapter and shape class (`cache.rs`).

mod cache;
mod harness;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cache::{bucket, cache, coop_cache, load_file, save_file, Key};
use harness::time_kernel;

use super::context::GpuContext;
use super::coop::CoopTile;
use super::kernels::{dense_coop, Kernel, Kernels, DENSE, DENSE_F16, DENSE_VEC4, DENSE_VEC4_F16};
use crate::error::Result;
use crate::options::SessionOptions;
use crate::precision::Precision;
use crate::tile::{CoopShape, TileConfig};

/// The register-tiled kernel that runs `tile` on a layer `in_features` wide, with its
/// override constants for activation `act`.
pub(crate) fn tiled_kernel(
    tile: &TileConfig,
    precision: Precision,
    in_features: usize,
    act: u32,
) -> (Kernel, Vec<(&'static str, u32)>) {
    let vec4 = tile.runs_vec4(in_features);
    let kernel = match precision {
        Precision::F32 if vec4 => DENSE_VEC4,
        Precision::F32 => DENSE,
        Precision::F16 | Precision::F16CoopMatrix if vec4 => DENSE_VEC4_F16,
        Precision::F16 | Precision::F16CoopMatrix => DENSE_F16,
    };
    (kernel, tile.constants(act, vec4))
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
    pub(crate) fn new(options: &SessionOptions) -> Result<Self> {
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
                return Err(tile.unsupported(&ctx.label.to_string(), precision));
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
                let (kernel, constants) = tiled_kernel(t, precision, inputs, 0);
                (kernel, constants, (t.tile_cols(), t.tile_rows()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefetching tile sets `PREFETCH` in the vec4 kernels; the strided kernel,
    /// which runs the same tile on layers whose inputs are not a multiple of 4, has
    /// no such constant and gets none.
    #[test]
    fn prefetch_is_a_constant_of_the_vec4_kernels_only() {
        let tile = TileConfig::CANDIDATES[12];
        assert!(tile.prefetch && tile.vec4);
        for precision in [Precision::F32, Precision::F16] {
            let (vec4, constants) = tiled_kernel(&tile, precision, 64, 1);
            assert!(vec4.source.contains("override PREFETCH"));
            assert!(constants.contains(&("PREFETCH", 1)));
            let (_, plain) = tiled_kernel(&TileConfig::DEFAULT, precision, 64, 1);
            assert!(plain.contains(&("PREFETCH", 0)));
            let (strided, constants) = tiled_kernel(&tile, precision, 63, 1);
            assert!(!strided.source.contains("PREFETCH"));
            assert!(!constants.iter().any(|(n, _)| *n == "PREFETCH"));
        }
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
}
