//! The WGSL kernels of `shaders/`, their bind group layouts, and a cache of compute
//! pipelines per (kernel, override constant).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Which bind group layout a kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layout {
    Dense,
    Softmax,
    Aggregate,
}

/// One kernel: its file under `shaders/` and its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub(crate) file: &'static str,
    source: &'static str,
    /// The `override` constant the cache key's value sets, if any.
    constant: Option<&'static str>,
    layout: Layout,
}

/// `shaders/dense.wgsl`: dense layer with fused bias and activation (`ACT`).
pub(crate) const DENSE: Kernel = Kernel {
    file: "dense.wgsl",
    source: include_str!("../../shaders/dense.wgsl"),
    constant: Some("ACT"),
    layout: Layout::Dense,
};

/// `shaders/softmax.wgsl`: row-wise softmax in place.
pub(crate) const SOFTMAX: Kernel = Kernel {
    file: "softmax.wgsl",
    source: include_str!("../../shaders/softmax.wgsl"),
    constant: None,
    layout: Layout::Softmax,
};

/// `shaders/aggregate.wgsl`: one member's weighted contribution (`MODE`).
pub(crate) const AGGREGATE: Kernel = Kernel {
    file: "aggregate.wgsl",
    source: include_str!("../../shaders/aggregate.wgsl"),
    constant: Some("MODE"),
    layout: Layout::Aggregate,
};

/// Rows per dense workgroup tile (`TILE` in dense.wgsl).
pub(crate) const DENSE_TILE: u32 = 16;
/// Threads per aggregate workgroup.
pub(crate) const AGGREGATE_WG: u32 = 64;

/// Bind group layouts and the pipelines created so far on one device.
pub(crate) struct Kernels {
    pub(crate) dense_layout: wgpu::BindGroupLayout,
    pub(crate) softmax_layout: wgpu::BindGroupLayout,
    pub(crate) aggregate_layout: wgpu::BindGroupLayout,
    pipelines: HashMap<(Kernel, u32), wgpu::ComputePipeline>,
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
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let layout = |label, entries: &[wgpu::BindGroupLayoutEntry]| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            })
        };
        Self {
            dense_layout: layout(
                "dense.wgsl",
                &[
                    storage(0, true),
                    storage(1, true),
                    storage(2, true),
                    storage(3, false),
                    uniform(4),
                ],
            ),
            softmax_layout: layout("softmax.wgsl", &[storage(0, false), uniform(1)]),
            aggregate_layout: layout(
                "aggregate.wgsl",
                &[storage(0, true), storage(1, false), uniform(2)],
            ),
            pipelines: HashMap::new(),
        }
    }

    fn layout_of(&self, kernel: Kernel) -> &wgpu::BindGroupLayout {
        match kernel.layout {
            Layout::Dense => &self.dense_layout,
            Layout::Softmax => &self.softmax_layout,
            Layout::Aggregate => &self.aggregate_layout,
        }
    }

    /// The pipeline of `kernel` with its override constant set to `value`, created on
    /// first use inside a validation error scope.
    pub(crate) fn pipeline(
        &mut self,
        device: &wgpu::Device,
        kernel: Kernel,
        value: u32,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.get(&(kernel, value)) {
            return Ok(p.clone());
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.file),
            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.file),
            bind_group_layouts: &[Some(self.layout_of(kernel))],
            immediate_size: 0,
        });
        let constants: Vec<(&str, f64)> = kernel
            .constant
            .map(|name| (name, f64::from(value)))
            .into_iter()
            .collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.file),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
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
        self.pipelines.insert((kernel, value), pipeline.clone());
        Ok(pipeline)
    }
}
