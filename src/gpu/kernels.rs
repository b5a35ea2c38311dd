//! The WGSL kernels of `shaders/`, their bind group layouts, and a cache of compute
//! pipelines per (kernel, override constants).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Which bind group layout a kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layout {
    /// x, w, b (read), y (read-write), params.
    Dense,
    /// y (read-write), params.
    Softmax,
    /// y (read), acc (read-write), params.
    Aggregate,
    /// y, acc (read-write), params.
    SoftmaxAggregate,
}

/// One kernel: its file under `shaders/` and its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub(crate) file: &'static str,
    pub(crate) source: &'static str,
    layout: Layout,
}

macro_rules! kernel {
    ($name:ident, $file:literal, $layout:ident, $doc:literal) => {
        #[doc = $doc]
        pub(crate) const $name: Kernel = Kernel {
            file: $file,
            source: include_str!(concat!("../../shaders/", $file)),
            layout: Layout::$layout,
        };
    };
}

kernel!(
    DENSE,
    "dense.wgsl",
    Dense,
    "Register-tiled dense layer (`ACT`, tile overrides)."
);
kernel!(
    DENSE_VEC4,
    "dense_vec4.wgsl",
    Dense,
    "`DENSE` with each thread's rows and outputs in runs of four (`TileConfig::vec4`)."
);
kernel!(
    DENSE_SMALL,
    "dense_small.wgsl",
    Dense,
    "Dense layer for at most 16 rows (`ACT`)."
);
kernel!(
    DENSE_F16,
    "dense_f16.wgsl",
    Dense,
    "`DENSE` with f16 weights and operands."
);
kernel!(
    DENSE_VEC4_F16,
    "dense_vec4_f16.wgsl",
    Dense,
    "`DENSE_VEC4` with f16 weights and operands."
);
kernel!(
    DENSE_SMALL_F16,
    "dense_small_f16.wgsl",
    Dense,
    "`DENSE_SMALL` with f16 weights."
);
kernel!(
    DENSE_COOP,
    "dense_coop.wgsl",
    Dense,
    "`DENSE_F16` on 16×16×16 cooperative matrices (`ACT`, `WG`, `BX`, `BY`, `BK`)."
);

/// Values by which `dense_coop.wgsl`'s staged rows exceed the slice (its `PAD`).
pub(crate) const COOP_PAD: u32 = 8;

/// `shaders/dense_coop.wgsl` for cooperative matrices of `size`² (16 or 8): the file
/// is written for 16; the two lines marked `[coop size]` change for 8.
pub(crate) fn dense_coop(size: u32) -> Kernel {
    if size == 16 {
        return DENSE_COOP;
    }
    static EIGHT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let source = EIGHT.get_or_init(|| {
        DENSE_COOP
            .source
            .replace("coop_mat16x16", "coop_mat8x8")
            .replace("const CT: u32 = 16u;", "const CT: u32 = 8u;")
    });
    Kernel {
        file: "dense_coop.wgsl (8x8x8)",
        source,
        layout: Layout::Dense,
    }
}

kernel!(
    SOFTMAX,
    "softmax.wgsl",
    Softmax,
    "Row-wise softmax in place."
);
kernel!(
    AGGREGATE,
    "aggregate.wgsl",
    Aggregate,
    "One member's weighted contribution (`MODE`)."
);
kernel!(
    SOFTMAX_AGGREGATE,
    "softmax_aggregate.wgsl",
    SoftmaxAggregate,
    "A last-layer softmax fused with the member's contribution (`MODE`)."
);

/// Rows up to which the small-batch dense kernel is used.
pub(crate) const SMALL_ROWS: usize = 16;
/// Most members in one stack (aggregate.wgsl's `weights` and `present` mask).
pub(crate) const MAX_STACK: usize = 32;
/// Workgroups per dispatch dimension the small-batch kernel assumes (`65535u`).
pub(crate) const SMALL_GROUPS_X: u32 = 65535;

/// A pipeline's identity: its kernel and its override constants.
type PipelineKey = (Kernel, Vec<(&'static str, u64)>);

/// Bind group layouts and the pipelines created so far on one device.
pub(crate) struct Kernels {
    /// Create modules without wgpu's runtime bounds checks (see
    /// `SessionOptions::trusted_kernels`).
    trusted: bool,
    pub(crate) dense_layout: wgpu::BindGroupLayout,
    pub(crate) softmax_layout: wgpu::BindGroupLayout,
    pub(crate) aggregate_layout: wgpu::BindGroupLayout,
    pub(crate) softmax_aggregate_layout: wgpu::BindGroupLayout,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device, trusted: bool) -> Self {
        let layout = |label, entries: &[wgpu::BindGroupLayoutEntry]| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            })
        };
        Self {
            trusted,
            dense_layout: layout(
                "dense",
                &[
                    storage(0, true),
                    storage(1, true),
                    storage(2, true),
                    storage(3, false),
                    uniform(4),
                ],
            ),
            softmax_layout: layout("softmax", &[storage(0, false), uniform(1)]),
            aggregate_layout: layout(
                "aggregate",
                &[storage(0, true), storage(1, false), uniform(2)],
            ),
            softmax_aggregate_layout: layout(
                "softmax_aggregate",
                &[storage(0, false), storage(1, false), uniform(2)],
            ),
            pipelines: HashMap::new(),
        }
    }

    fn layout_of(&self, kernel: Kernel) -> &wgpu::BindGroupLayout {
        match kernel.layout {
            Layout::Dense => &self.dense_layout,
            Layout::Softmax => &self.softmax_layout,
            Layout::Aggregate => &self.aggregate_layout,
            Layout::SoftmaxAggregate => &self.softmax_aggregate_layout,
        }
    }

    /// The pipeline of `kernel` with its override constants set, created on first use
    /// inside a validation error scope.
    pub(crate) fn pipeline(
        &mut self,
        device: &wgpu::Device,
        kernel: Kernel,
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline> {
        let key: PipelineKey = (
            kernel,
            constants.iter().map(|&(n, v)| (n, u64::from(v))).collect(),
        );
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(kernel.file),
            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
        };
        let module = if self.trusted {
            // SAFETY: the caller of `SessionOptions::trusted_kernels` accepted that the
            // kernels' own bounds checks (every global load and store is guarded by
            // the shape in its uniform; workgroup indices are below the tile sizes by
            // construction, tested for every tile candidate and coop shape, and tile
            // and shape fields are checked against the kernels' limits before a
            // pipeline is made) replace wgpu's.
            unsafe {
                device.create_shader_module_trusted(
                    descriptor,
                    wgpu::ShaderRuntimeChecks::unchecked(),
                )
            }
        } else {
            device.create_shader_module(descriptor)
        };
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.file),
            bind_group_layouts: &[Some(self.layout_of(kernel))],
            immediate_size: 0,
        });
        let values: Vec<(&str, f64)> = constants
            .iter()
            .map(|&(name, v)| (name, f64::from(v)))
            .collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.file),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &values,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                kernel: kernel.file,
                message: err.to_string(),
            });
        }
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8×8×8 variant is derived by text replacement: both replacements must
    /// still apply, and naga must accept the result.
    #[test]
    fn coop_kernel_has_a_valid_8x8_variant() {
        let eight = dense_coop(8);
        assert!(eight.source.contains("const CT: u32 = 8u;"));
        assert!(!eight.source.contains("16x16"), "a coop_mat16x16 was left");
        assert!(!eight.source.contains("16u"), "a 16u was left");
        assert!(eight.source.contains("alias MatA = coop_mat8x8<f16, A>;"));
        let module = naga::front::wgsl::parse_str(eight.source)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(eight.source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default()
                | naga::valid::Capabilities::SHADER_FLOAT16
                | naga::valid::Capabilities::SUBGROUP
                | naga::valid::Capabilities::COOPERATIVE_MATRIX,
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(eight.source)));
        assert_eq!(dense_coop(16), DENSE_COOP);
    }

    /// The workgroup-memory check of the coop shapes counts the kernel's padding.
    #[test]
    fn coop_padding_matches_the_kernel() {
        let line = format!("const PAD: u32 = {COOP_PAD}u;");
        assert!(
            DENSE_COOP.source.contains(&line),
            "{line} not in dense_coop.wgsl"
        );
        for tile in [
            "array<f16, BY * TMC * CT * (BK + PAD)>",
            "array<f16, BX * TNC * CT * (BK + PAD)>",
        ] {
            assert!(
                DENSE_COOP.source.contains(tile),
                "{tile} not in dense_coop.wgsl"
            );
        }
    }
}
