//! Where members run: [`Placement`] (asked for), [`ExecutionDevice`] (got),
//! [`ExternalDevice`] (a device the caller made), and what wgpu reports about an
//! adapter ([`AdapterInfo`], [`AdapterProbe`]). Pure data: the devices themselves are
//! made by the GPU backend (`gpu/adapters.rs`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// What wgpu reports about one adapter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AdapterInfo {
    /// Position in the list returned by [`adapters`](crate::adapters); what [`Placement::Adapter`] takes.
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
    /// The host CPU: the members side by side on its threads. On x86-64 with AVX-512
    /// or AVX2+FMA each layer's weights are packed once, when the session is built,
    /// for the crate's own kernel; elsewhere each layer goes through a GEMM crate
    /// (`matrixmultiply`; `gemm` for batches of at most 8 rows).
    Cpu,
    /// Adapter `i` of [`adapters`](crate::adapters), on its first device/queue (the same as
    /// `Queue { adapter: i, slot: 0 }`).
    Adapter(usize),
    /// A separate device and queue on adapter `adapter`. wgpu has one queue per
    /// device, so each `slot` is its own `request_device` on that adapter; members with
    /// the same `(adapter, slot)` share one device, one worker and one submission.
    Queue {
        /// Index of the adapter in [`adapters`](crate::adapters).
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
            spec: spec.chars().take(200).collect(),
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
    /// This device's [`next_device_id`], shared by the clones.
    pub(crate) id: u64,
    /// Where its error handlers report: installed by the first session or trainer
    /// that uses it, shared by every later one.
    pub(crate) reports: Arc<OnceLock<DeviceReports>>,
}

/// What a device's uncaptured-error handler and device-lost callback caught (the
/// GPU backend installs them).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceReports {
    /// Validation and out-of-memory errors not yet returned.
    pub(crate) errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is.
    pub(crate) lost: Arc<Mutex<Option<String>>>,
}

impl ExternalDevice {
    /// Wraps a device and its queue; `label` names it in reports and errors.
    ///
    /// The first session or trainer that uses it installs the crate's
    /// uncaptured-error and device-lost handlers on the device, replacing any that
    /// were set. Every session and trainer on it (through any clone) then shares
    /// what they catch: a validation or out-of-memory error is returned by the next
    /// run or step on the device that looks, whichever made it (a session being built
    /// only by those caught while it is built), and a lost device is lost to all of
    /// them.
    ///
    /// Wrap each device once and clone the `ExternalDevice` for every member placed on
    /// it: members on clones share one executor (one submission per run). Two
    /// `ExternalDevice`s are two devices to a session even when they wrap the same
    /// `wgpu::Device`, since wgpu's device handles cannot tell devices of two wgpu
    /// instances apart.
    pub fn new(device: wgpu::Device, queue: wgpu::Queue, label: impl Into<String>) -> Self {
        Self {
            device,
            queue,
            label: label.into(),
            id: next_device_id(),
            reports: Arc::default(),
        }
    }
}

/// A number no other device of this process gets: how the crate tells devices apart
/// (wgpu's device handles compare their ids only, which devices of two wgpu instances
/// can share).
pub(crate) fn next_device_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The device a member actually runs on, as reported by a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExecutionDevice {
    /// The host CPU.
    Cpu,
    /// A device the session created on an adapter.
    Adapter {
        /// Index of the adapter in [`adapters`](crate::adapters).
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
    /// A member split across several devices
    /// ([`GraphBuilder::split_member`](crate::GraphBuilder::split_member)): one
    /// worker of its own, its parts on these devices.
    Split {
        /// By layers or by columns.
        kind: crate::split::SplitKind,
        /// Each part's device, in order.
        parts: Vec<ExecutionDevice>,
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
            ExecutionDevice::Split { kind, parts } => {
                write!(f, "split by {kind} over [")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                f.write_str("]")
            }
        }
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
