//! Adapter discovery and the pool that turns placements into wgpu `Device`/`Queue`
//! pairs. The only module that creates devices.

use std::collections::HashMap;

use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::placement::{AdapterInfo, AdapterProbe, ExecutionDevice};
use crate::precision::Precision;

/// The backends searched for adapters: every native one.
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12)
    .union(wgpu::Backends::GL);

/// Lists every adapter wgpu can see on Vulkan, Metal, DX12 and GL.
///
/// Listing never fails: an adapter that is present but broken is still listed (its
/// device creation fails later, see [`probe_adapters`]); a machine with no adapter
/// gives an empty list.
pub fn adapters() -> Vec<AdapterInfo> {
    DevicePool::new(Precision::F32).infos
}

/// Lists every adapter and tries to create a device on each, the way
/// [`Placement::Auto`](crate::Placement::Auto) does.
pub fn probe_adapters() -> Vec<AdapterProbe> {
    let mut pool = DevicePool::new(Precision::F32);
    (0..pool.infos.len())
        .map(|i| AdapterProbe {
            info: pool.infos[i].clone(),
            // `i` is in range: no member's placement to name.
            usable: pool.open("", i, 0).map(|_| ()).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Creates a device and its queue on `adapter`, with the adapter's full limits and the
/// optional features the kernels use. Also how a lost device is recreated.
pub(crate) fn open_device(
    adapter: &wgpu::Adapter,
    label: ExecutionDevice,
    precision: Precision,
) -> std::result::Result<GpuContext, String> {
    // Optional features the kernels can use, where the adapter has them (timestamps:
    // SessionOptions::device_timing and the autotune's timing); the experimental
    // cooperative-matrix feature only for the precision that uses it.
    let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
    if precision == Precision::F16CoopMatrix {
        wanted |= wgpu::Features::SUBGROUP | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    let required_features = adapter.features() & wanted;
    let experimental_features =
        if required_features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            // SAFETY: wgpu asks callers of experimental features to accept that its
            // implementation of them may still have bugs. Only dense_coop.wgsl uses
            // the feature, and only a session that asked for
            // Precision::F16CoopMatrix enables it. Neither naga nor wgpu's runtime
            // checks bound a cooperative load or store's whole CT x CT footprint
            // (only its first element); the kernel keeps them in bounds by
            // construction: every one is inside a workgroup array sized from the same
            // overrides (the last element a block touches is below BM * BK, BN * BK
            // and (BX * BY + 1) * CT * CT), and CoopTile::fits refuses shapes beyond
            // the kernel's 4 x 4 matrices per block. tests/it/precision/coop.rs runs every
            // candidate shape with and without runtime checks.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
    let desc = wgpu::DeviceDescriptor {
        label: Some("wgpu-ensemble"),
        required_features,
        required_limits: adapter.limits(),
        experimental_features,
        ..Default::default()
    };
    let (device, queue) =
        pollster::block_on(adapter.request_device(&desc)).map_err(|e| e.to_string())?;
    Ok(GpuContext::new(device, queue, label, Some(adapter.clone())))
}

/// Enumerated adapters plus the devices opened on them while a session is built.
pub(crate) struct DevicePool {
    /// The precision the devices are opened for (it decides optional features).
    precision: Precision,
    /// `Placement::Auto` takes only adapters with timestamps
    /// (`SessionOptions::device_timing`).
    timing: bool,
    adapters: Vec<wgpu::Adapter>,
    pub(crate) infos: Vec<AdapterInfo>,
    opened: HashMap<(usize, usize), GpuContext>,
    usable: Option<Vec<usize>>,
}

impl DevicePool {
    pub(crate) fn new(precision: Precision) -> Self {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: BACKENDS,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(BACKENDS));
        let infos = adapters
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let info = a.get_info();
                let compute = a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
                AdapterInfo {
                    index,
                    name: info.name,
                    backend: info.backend,
                    device_type: info.device_type,
                    driver: [info.driver, info.driver_info]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                    compute,
                    features: a.features(),
                    cooperative_matrix: a.cooperative_matrix_properties(),
                    subgroup_sizes: {
                        let info = a.get_info();
                        (info.subgroup_min_size, info.subgroup_max_size)
                    },
                }
            })
            .collect();
        Self {
            precision,
            timing: false,
            adapters,
            infos,
            opened: HashMap::new(),
            usable: None,
        }
    }

    /// With `timing`, `Placement::Auto` uses only adapters with `TIMESTAMP_QUERY`.
    pub(crate) fn with_timing(mut self, timing: bool) -> Self {
        self.timing = timing;
        self
    }

    fn descriptions(&self) -> Vec<String> {
        self.infos.iter().map(ToString::to_string).collect()
    }

    /// The device for `(adapter, slot)`, created on first use. An index past the
    /// adapters is an error naming `member`, whose placement asked for it.
    pub(crate) fn open(&mut self, member: &str, index: usize, slot: usize) -> Result<GpuContext> {
        if let Some(ctx) = self.opened.get(&(index, slot)) {
            return Ok(ctx.clone());
        }
        let ctx = self.open_own(member, index, slot)?;
        self.opened.insert((index, slot), ctx.clone());
        Ok(ctx)
    }

    /// A device of its own on adapter `index` (reported as `slot`), which no other
    /// call returns: a part of a split member, so that losing it touches that member
    /// only.
    pub(crate) fn open_own(
        &mut self,
        member: &str,
        index: usize,
        slot: usize,
    ) -> Result<GpuContext> {
        let (Some(adapter), Some(info)) = (self.adapters.get(index), self.infos.get(index)) else {
            return Err(Error::AdapterOutOfRange {
                member: member.to_string(),
                index,
                available: self.descriptions(),
            });
        };
        if !info.compute {
            return Err(Error::NoCompute {
                index,
                name: info.name.clone(),
            });
        }
        let label = ExecutionDevice::Adapter {
            index,
            slot,
            backend: info.backend,
            name: info.name.clone(),
        };
        open_device(adapter, label, self.precision).map_err(|message| Error::DeviceCreation {
            index,
            name: info.name.clone(),
            message,
            available: self.descriptions(),
        })
    }

    /// Indices of the adapters `Placement::Auto` spreads over, probed once.
    pub(crate) fn usable(&mut self) -> Vec<usize> {
        if let Some(u) = &self.usable {
            return u.clone();
        }
        // Adapters that open and can run the session's precision (the CPU runs every
        // precision, so a session whose precision no adapter has runs there), with
        // timestamps if the session times its devices.
        let (precision, timing) = (self.precision, self.timing);
        let working: Vec<usize> = (0..self.infos.len())
            .filter(|&i| {
                self.open("", i, 0).is_ok_and(|ctx| {
                    super::coop::check_precision(&ctx, precision).is_ok()
                        && (!timing
                            || ctx
                                .device
                                .features()
                                .contains(wgpu::Features::TIMESTAMP_QUERY))
                })
            })
            .collect();
        let hardware: Vec<usize> = working
            .iter()
            .copied()
            .filter(|&i| {
                matches!(
                    self.infos[i].device_type,
                    wgpu::DeviceType::DiscreteGpu
                        | wgpu::DeviceType::IntegratedGpu
                        | wgpu::DeviceType::VirtualGpu
                )
            })
            .collect();
        let chosen = if hardware.is_empty() {
            working
        } else {
            hardware
        };
        self.usable = Some(chosen.clone());
        chosen
    }
}
