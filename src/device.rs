//! Adapter discovery, [`Placement`], and the pool that turns placements into wgpu
//! `Device`/`Queue` pairs. This is the only module that creates devices.

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::session::Precision;

/// The backends searched for adapters: every native one.
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12)
    .union(wgpu::Backends::GL);

/// What wgpu reports about one adapter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AdapterInfo {
    /// Position in the list returned by [`adapters`]; what [`Placement::Adapter`] takes.
    pub index: usize,
    /// The adapter's name, e.g. `NVIDIA H100 80GB HBM3` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API it is reached through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, software (`Cpu`) or other.
    pub device_type: wgpu::DeviceType,
    /// The driver's name and version, when the backend reports them.
    pub driver: String,
    /// Whether the adapter can run compute shaders at all.
    pub compute: bool,
    /// The features the adapter offers (for example `SHADER_F16`, which
    /// [`Precision::F16`](crate::Precision::F16) needs).
    pub features: wgpu::Features,
    /// The cooperative-matrix configurations the adapter lists (empty where it has
    /// none); [`Precision::F16CoopMatrix`](crate::Precision::F16CoopMatrix) needs a
    /// 16×16×16 or 8×8×8 one with f16 operands and an f32 accumulator.
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
    /// The smallest and largest subgroup sizes wgpu reports for the adapter;
    /// meaningful only where its features include `SUBGROUP` (elsewhere wgpu reports
    /// a placeholder range).
    pub subgroup_sizes: (u32, u32),
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?} {} ({:?}{})",
            self.index,
            self.backend,
            self.name,
            self.device_type,
            if self.compute { "" } else { ", no compute" }
        )
    }
}

/// Lists every adapter wgpu can see on Vulkan, Metal, DX12 and GL.
///
/// Listing never fails: an adapter that is present but broken is still listed (its
/// device creation fails later, see [`probe_adapters`]); a machine with no adapter
/// gives an empty list.
pub fn adapters() -> Vec<AdapterInfo> {
    DevicePool::new(Precision::F32).infos
}

/// The result of trying to create a device on one adapter.
#[derive(Clone, Debug)]
pub struct AdapterProbe {
    /// The adapter.
    pub info: AdapterInfo,
    /// `Ok` when a device could be created and can run compute shaders, otherwise the
    /// reason it cannot be used.
    pub usable: std::result::Result<(), String>,
}

/// Whether an adapter runs on llvmpipe (lavapipe's Vulkan, Mesa's GL), from its name
/// and driver.
pub(crate) fn is_llvmpipe(name: &str, driver: &str) -> bool {
    name.contains("llvmpipe") || driver.contains("llvmpipe")
}

/// Lists every adapter and tries to create a device on each, the way
/// [`Placement::Auto`] does.
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

/// Where a member runs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Placement {
    /// Spread over the usable adapters round-robin (in member order), falling back to
    /// [`Placement::Cpu`] when there is none.
    ///
    /// An adapter is usable when it runs compute shaders and a device can be created on
    /// it; adapters that fail (such as a headless GL adapter whose `request_device`
    /// reports `Device(Lost)`) are skipped, and so are adapters that cannot run the
    /// session's [`Precision`](crate::Precision) (no `SHADER_F16` for `F16`, no
    /// cooperative matrices for `F16CoopMatrix`; the CPU runs every precision).
    /// Hardware adapters (discrete, integrated, virtual) are preferred: software
    /// rasterisers such as lavapipe are used only when no hardware adapter is usable,
    /// and not for a member with a layer of more than 524 288 inputs, which llvmpipe
    /// does not compute correctly (see [`Error::InputsBeyondDriver`]).
    ///
    /// [`Error::InputsBeyondDriver`]: crate::Error::InputsBeyondDriver
    #[default]
    Auto,
    /// The host CPU, through multi-threaded GEMM crates (`matrixmultiply`; `gemm` for
    /// batches of at most 16 rows).
    Cpu,
    /// Adapter `i` of [`adapters`], on its first device/queue (the same as
    /// `Queue { adapter: i, slot: 0 }`).
    Adapter(usize),
    /// A separate device and queue on adapter `adapter`. wgpu has one queue per
    /// device, so each `slot` is its own `request_device` on that adapter; members with
    /// the same `(adapter, slot)` share one device, one worker and one submission.
    Queue {
        /// Index of the adapter in [`adapters`].
        adapter: usize,
        /// Which device of that adapter (any number; `0` is the one `Adapter(i)` uses).
        slot: usize,
    },
    /// A device and queue the caller created. Members given equal devices share them.
    Device(ExternalDevice),
}

impl std::str::FromStr for Placement {
    type Err = Error;

    /// Parses `auto`, `cpu`, `adapter:N` or `adapter:N/queue:K` (the manifest's and
    /// the command line's `device`).
    fn from_str(spec: &str) -> Result<Self> {
        let bad = || Error::DeviceSpec {
            spec: spec.to_string(),
        };
        let number = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
        let lower = spec.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => return Ok(Placement::Auto),
            "cpu" => return Ok(Placement::Cpu),
            _ => {}
        }
        let rest = lower.strip_prefix("adapter:").ok_or_else(bad)?;
        match rest.split_once('/') {
            None => Ok(Placement::Adapter(number(rest)?)),
            Some((adapter, queue)) => Ok(Placement::Queue {
                adapter: number(adapter)?,
                slot: number(queue.strip_prefix("queue:").ok_or_else(bad)?)?,
            }),
        }
    }
}

/// A wgpu device and queue created by the caller, with a label for reports.
#[derive(Clone, Debug)]
pub struct ExternalDevice {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) label: String,
}

impl ExternalDevice {
    /// Wraps a device and its queue; `label` names it in reports and errors.
    ///
    /// The session installs its own uncaptured-error and device-lost handlers on the
    /// device, replacing any that were set.
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, label: impl Into<String>) -> Self {
        Self {
            device,
            queue,
            label: label.into(),
        }
    }
}

/// The device a member actually runs on, as reported by a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExecutionDevice {
    /// The host CPU.
    Cpu,
    /// A device the session created on an adapter.
    Adapter {
        /// Index of the adapter in [`adapters`].
        index: usize,
        /// Which device of that adapter.
        slot: usize,
        /// The adapter's backend.
        backend: wgpu::Backend,
        /// The adapter's name.
        name: String,
    },
    /// A device handed in with [`Placement::Device`].
    External {
        /// The label given to [`ExternalDevice::new`].
        label: String,
    },
}

impl fmt::Display for ExecutionDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionDevice::Cpu => f.write_str("cpu"),
            ExecutionDevice::Adapter {
                index,
                slot,
                backend,
                name,
            } => write!(f, "adapter:{index}/queue:{slot} ({backend:?} {name})"),
            ExecutionDevice::External { label } => write!(f, "external ({label})"),
        }
    }
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
            // the kernel's 4 x 4 matrices per block. tests/precision.rs runs every
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
        let ctx = open_device(adapter, label, self.precision).map_err(|message| {
            Error::DeviceCreation {
                index,
                name: info.name.clone(),
                message,
                available: self.descriptions(),
            }
        })?;
        self.opened.insert((index, slot), ctx.clone());
        Ok(ctx)
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
                    crate::gpu::check_precision(&ctx, precision).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert!(matches!("auto".parse(), Ok(Placement::Auto)));
        assert!(matches!(" CPU ".parse(), Ok(Placement::Cpu)));
        assert!(matches!("adapter:3".parse(), Ok(Placement::Adapter(3))));
        assert!(matches!(
            "adapter:1/queue:2".parse(),
            Ok(Placement::Queue {
                adapter: 1,
                slot: 2
            })
        ));
        for bad in [
            "gpu",
            "adapter:",
            "adapter:x",
            "adapter:1/2",
            "adapter:1/queue:",
            "",
        ] {
            assert!(
                matches!(bad.parse::<Placement>(), Err(Error::DeviceSpec { .. })),
                "{bad}"
            );
        }
    }
}
