//! Where tests run: the adapters (probed once per process), the CPU and the wgpu
//! backends that `#[test]` wrappers are named after, the rules for skipping a GPU test
//! or failing it, and the driver quirks the tests adjust to.
//!
//! - `WGPU_ENSEMBLE_REQUIRE_GPU=1`: a test that finds no usable adapter of any backend
//!   fails instead of skipping.
//! - `WGPU_ENSEMBLE_REQUIRE_BACKENDS=vulkan,gl`: a test of a backend named there fails
//!   when that backend has no usable adapter.

use std::sync::OnceLock;

use wgpu_ensemble::wgpu::{self, Backend};
use wgpu_ensemble::{probe_adapters, AdapterInfo, AdapterProbe, ExternalDevice, Placement};

/// Where a `#[test]` wrapper runs its body; the wrapper's name ends in its
/// [`Target::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The CPU executor.
    Cpu,
    /// Every usable Vulkan adapter (lavapipe without a GPU, NVIDIA's driver with one).
    Vulkan,
    /// Every usable GL adapter (Mesa's llvmpipe).
    Gl,
}

impl Target {
    /// The wgpu backend, `None` for the CPU.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Target::Cpu => None,
            Target::Vulkan => Some(Backend::Vulkan),
            Target::Gl => Some(Backend::Gl),
        }
    }

    /// `cpu`, `vulkan` or `gl`: the wrapper's suffix and the name
    /// `WGPU_ENSEMBLE_REQUIRE_BACKENDS` lists.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Vulkan => "vulkan",
            Target::Gl => "gl",
        }
    }
}

/// Every adapter with the outcome of creating a device on it, probed once per process.
pub fn probes() -> &'static [AdapterProbe] {
    static PROBES: OnceLock<Vec<AdapterProbe>> = OnceLock::new();
    PROBES.get_or_init(probe_adapters)
}

fn seen() -> Vec<String> {
    probes()
        .iter()
        .map(|p| format!("{} -> {:?}", p.info, p.usable))
        .collect()
}

fn usable() -> impl Iterator<Item = &'static AdapterInfo> {
    probes()
        .iter()
        .filter(|p| p.usable.is_ok())
        .map(|p| &p.info)
}

/// Whether a missing GPU must fail the test (`WGPU_ENSEMBLE_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var("WGPU_ENSEMBLE_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Whether `target`'s backend is listed in `WGPU_ENSEMBLE_REQUIRE_BACKENDS`; a name
/// there that is no target fails the test.
pub fn backend_required(target: Target) -> bool {
    let Ok(list) = std::env::var("WGPU_ENSEMBLE_REQUIRE_BACKENDS") else {
        return false;
    };
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for name in &names {
        assert!(
            ["vulkan", "gl"].contains(&name.to_ascii_lowercase().as_str()),
            "WGPU_ENSEMBLE_REQUIRE_BACKENDS={list:?}: {name:?} is not vulkan or gl"
        );
    }
    names.iter().any(|n| n.eq_ignore_ascii_case(target.name()))
}

/// The adapters of any backend a device can be created on. When there is none the test
/// prints why its GPU part is skipped, or fails when `WGPU_ENSEMBLE_REQUIRE_GPU=1`.
pub fn usable_adapters(test: &str) -> Vec<AdapterInfo> {
    let usable: Vec<AdapterInfo> = usable().cloned().collect();
    if usable.is_empty() {
        let why = format!("{test}: no usable GPU adapter (adapters: {:?})", seen());
        assert!(!gpu_required(), "{why}, and WGPU_ENSEMBLE_REQUIRE_GPU=1");
        eprintln!("SKIPPED GPU part of {why}");
    }
    usable
}

/// The usable adapters of `target`'s backend. When there is none the test prints
/// `SKIPPED <test>: <why>`, or fails when the backend is listed in
/// `WGPU_ENSEMBLE_REQUIRE_BACKENDS`, or when `WGPU_ENSEMBLE_REQUIRE_GPU=1` and no
/// backend has a usable adapter.
pub fn adapters_on(test: &str, target: Target) -> Vec<AdapterInfo> {
    let Some(backend) = target.backend() else {
        return Vec::new();
    };
    let required = backend_required(target);
    let on: Vec<AdapterInfo> = usable().filter(|a| a.backend == backend).cloned().collect();
    if on.is_empty() {
        let why = format!(
            "{test}: no usable {} adapter (adapters: {:?})",
            target.name(),
            seen()
        );
        assert!(
            !required,
            "{why}, and WGPU_ENSEMBLE_REQUIRE_BACKENDS names {}",
            target.name()
        );
        assert!(
            !(gpu_required() && usable().next().is_none()),
            "{why}, and WGPU_ENSEMBLE_REQUIRE_GPU=1"
        );
        // Adapters only on backends no wrapper is named after (Metal, DX12) would leave
        // every GPU test skipped while a GPU is required.
        assert!(
            !gpu_required() || usable().any(|a| covered(a.backend)),
            "{why}: the usable adapters are on backends the tests have no wrappers for \
             (only vulkan and gl), and WGPU_ENSEMBLE_REQUIRE_GPU=1"
        );
        eprintln!("SKIPPED {why}");
    }
    on
}

/// Whether a GPU wrapper is named after `backend`.
fn covered(backend: Backend) -> bool {
    [Target::Vulkan, Target::Gl]
        .iter()
        .any(|t| t.backend() == Some(backend))
}

/// Runs `body(placement, label)` on `target`: once on the CPU, or on every usable
/// adapter of its backend (see [`adapters_on`]).
pub fn on_placement(test: &str, target: Target, body: impl Fn(Placement, &str)) {
    match target {
        Target::Cpu => body(Placement::Cpu, "cpu"),
        _ => {
            for info in adapters_on(test, target) {
                body(Placement::Adapter(info.index), &info.to_string());
            }
        }
    }
}

/// Runs `body(adapter)` on every usable adapter of `target`'s backend (see
/// [`adapters_on`]).
pub fn on_adapters(test: &str, target: Target, body: impl Fn(&AdapterInfo)) {
    assert_ne!(
        target,
        Target::Cpu,
        "{test}: an adapter's test has no CPU target"
    );
    for info in adapters_on(test, target) {
        body(&info);
    }
}

/// Where `WGPU_ENSEMBLE_REQUIRE_GPU=1`, fails unless some usable adapter (of any
/// backend) has `what`: a test whose check runs only on such adapters then cannot pass
/// by checking nothing anywhere.
#[track_caller]
pub fn require_an_adapter_with(what: &str, has: impl Fn(&AdapterInfo) -> bool) {
    if gpu_required() {
        assert!(
            usable().any(has),
            "no adapter with {what} (adapters: {:?}), and WGPU_ENSEMBLE_REQUIRE_GPU=1",
            seen()
        );
    }
}

/// Where no usable adapter (of any backend) has cooperative matrices, says so, and
/// fails where `WGPU_ENSEMBLE_REQUIRE_COOP=1` (set where the machine is known to have
/// them: CI's newer lavapipe, a GPU), so that the kernel cannot go unchecked there.
pub fn require_coop(test: &str) {
    if !usable().any(quirks::coop_matrix) {
        eprintln!(
            "SKIPPED cooperative-matrix part of {test}: no adapter lists a cooperative \
             matrix with f16 operands and an f32 accumulator"
        );
        assert!(
            std::env::var("WGPU_ENSEMBLE_REQUIRE_COOP").map_or(true, |v| v != "1"),
            "WGPU_ENSEMBLE_REQUIRE_COOP=1 but no adapter has cooperative matrices"
        );
    }
}

/// `#[test]` wrappers, one per target, named as given: around a body
/// `fn(Placement, &str)` (the placement and a label naming it) run by [`on_placement`],
/// or, after `adapters`, a body `fn(&AdapterInfo)` run by [`on_adapters`]:
///
/// ```ignore
/// placement_tests!(body; name_cpu: Cpu, name_vulkan: Vulkan, name_gl: Gl);
/// placement_tests!(adapters body; name_vulkan: Vulkan, name_gl: Gl);
/// ```
macro_rules! placement_tests {
    (adapters $body:path; $($tests:tt)+) => {
        $crate::common::placement_tests!(@on_adapters $body; $($tests)+);
    };
    (@$run:ident $body:path; $($name:ident: $target:ident),+ $(,)?) => {$(
        #[test]
        fn $name() {
            $crate::common::$run(stringify!($name), $crate::common::Target::$target, $body);
        }
    )+};
    ($body:path; $($tests:tt)+) => {
        $crate::common::placement_tests!(@on_placement $body; $($tests)+);
    };
}
pub(crate) use placement_tests;

/// The driver quirks the tests know of, declared once.
pub mod quirks {
    use super::*;

    /// Whether the adapter runs on llvmpipe (lavapipe's Vulkan, Mesa's GL; by its name): it ends a
    /// shader invocation after 65535 iterations of one loop, so the crate refuses the
    /// layers that would need more.
    pub fn loop_limited(info: &AdapterInfo) -> bool {
        info.name.contains("llvmpipe")
    }

    /// Whether the adapter has `SHADER_F16` (`Precision::F16`); Mesa's GL has not.
    pub fn shader_f16(info: &AdapterInfo) -> bool {
        info.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether the adapter lists what `Precision::F16CoopMatrix` needs: `SHADER_F16`,
    /// subgroups, the experimental cooperative-matrix feature and a square 8 or 16
    /// configuration with f16 operands and an f32 accumulator (Debian 12's lavapipe
    /// has none, Debian testing's has 8×8×8).
    pub fn coop_matrix(info: &AdapterInfo) -> bool {
        let features = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        info.features.contains(features)
            && info.cooperative_matrix.iter().any(|c| {
                (c.m_size, c.n_size, c.k_size) == (c.m_size, c.m_size, c.m_size)
                    && matches!(c.m_size, 8 | 16)
                    && c.ab_type == wgpu::CooperativeScalarType::F16
                    && c.cr_type == wgpu::CooperativeScalarType::F32
            })
    }

    /// Whether the adapter has `TIMESTAMP_QUERY` (device timing).
    pub fn timestamps(info: &AdapterInfo) -> bool {
        info.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Why an operation timeout cannot cut a device wait short on the adapter, if it
    /// cannot: GL runs a submission to completion before a fence wait can time out.
    pub fn fence_wait_runs_to_completion(info: &AdapterInfo) -> Option<&'static str> {
        (info.backend == Backend::Gl).then_some("GL waits cannot time out early")
    }
}

/// A device and queue the test creates itself (no features), in a wgpu instance of its
/// own, on the adapter with this name and backend.
pub fn raw_device(name: &str, backend: Backend) -> (wgpu::Device, wgpu::Queue) {
    let backends = wgpu::Backends::from(backend);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .find(|a| a.get_info().name == name)
        .expect("the adapter the crate listed");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap()
}

/// [`raw_device`] wrapped as an `ExternalDevice`; `label` names it in reports.
pub fn external_device(name: &str, backend: Backend, label: &str) -> ExternalDevice {
    let (device, queue) = raw_device(name, backend);
    ExternalDevice::new(device, queue, label)
}
