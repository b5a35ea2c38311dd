//! The training kernels of `shaders/train/`, composed like the inference kernels (see
//! `crate::gpu` kernels: `concat!` of `include_str!`, the shared pieces first), their
//! bind group layouts, and a cache of their pipelines per override constants.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// What a binding of a training kernel holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    /// A storage buffer the kernel only reads.
    Read,
    /// A storage buffer the kernel writes.
    Write,
    /// The layer's parameters (`TrainLayer`), read only (a storage buffer, not a
    /// uniform: see `shaders/train/params.wgsl`).
    Params,
}

/// One training kernel: its body's file under `shaders/train/`, its composed source,
/// and its group-0 bindings in order (group 1 is the per-batch `Step`, bound with a
/// dynamic offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TrainKernel {
    pub(crate) file: &'static str,
    pub(crate) source: &'static str,
    slots: &'static [Slot],
}

/// A kernel's source: the files `$piece` (relative to `shaders/`), one blank line after
/// each.
macro_rules! wgsl {
    ($($piece:literal),+) => {
        concat!($(include_str!(concat!("../../../shaders/", $piece)), "\n"),+)
    };
}

use Slot::{Params, Read, Write};

/// Forward pass of one layer keeping z and the activation (`ACT`, `INPUT`, `T`).
pub(crate) const FORWARD: TrainKernel = TrainKernel {
    file: "train/forward.wgsl",
    source: wgsl!(
        "train/params.wgsl",
        "train/rows.wgsl",
        "lib/activation.wgsl",
        "train/forward.wgsl"
    ),
    slots: &[Read, Read, Read, Write, Write, Params],
};

/// The batch's loss, correct rows and dz of the output layer (`LOSS`, `INPUT`).
pub(crate) const LOSS: TrainKernel = TrainKernel {
    file: "train/loss.wgsl",
    source: wgsl!("train/params.wgsl", "train/rows.wgsl", "train/loss.wgsl"),
    slots: &[Read, Read, Read, Write, Write, Params],
};

/// A layer's sum of squared weights (the loss's L2 term).
pub(crate) const SUMSQ: TrainKernel = TrainKernel {
    file: "train/sumsq.wgsl",
    source: wgsl!("train/params.wgsl", "train/sumsq.wgsl"),
    slots: &[Read, Write, Params],
};

/// dz of the previous layer through its activation's derivative (`ACT`, `T`).
pub(crate) const BACKWARD: TrainKernel = TrainKernel {
    file: "train/backward.wgsl",
    source: wgsl!(
        "train/params.wgsl",
        "lib/activation.wgsl",
        "lib/activation_grad.wgsl",
        "train/backward.wgsl"
    ),
    slots: &[Read, Read, Read, Read, Write, Params],
};

/// A layer's gradients fused with its optimizer step (`OPT`, `INPUT`, `T`).
pub(crate) const UPDATE: TrainKernel = TrainKernel {
    file: "train/update.wgsl",
    source: wgsl!("train/params.wgsl", "train/rows.wgsl", "train/update.wgsl"),
    slots: &[Read, Read, Read, Write, Write, Write, Params],
};

/// Every training kernel.
pub(crate) const ALL: [TrainKernel; 5] = [FORWARD, LOSS, SUMSQ, BACKWARD, UPDATE];

/// Bytes of a `Step` (`shaders/train/params.wgsl`).
pub(crate) const STEP_BYTES: u64 = 32;

type Key = (&'static str, Vec<(&'static str, u32)>);

/// The training kernels' layouts and pipelines on one device.
pub(crate) struct TrainKernels {
    layouts: HashMap<&'static str, wgpu::BindGroupLayout>,
    pub(crate) step_layout: wgpu::BindGroupLayout,
    pipelines: HashMap<Key, wgpu::ComputePipeline>,
}

impl TrainKernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let layouts = ALL
            .iter()
            .map(|k| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = k
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match slot {
                                Read | Params => {
                                    wgpu::BufferBindingType::Storage { read_only: true }
                                }
                                Write => wgpu::BufferBindingType::Storage { read_only: false },
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(k.file),
                    entries: &entries,
                });
                (k.file, layout)
            })
            .collect();
        let step_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("train step"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(STEP_BYTES),
                },
                count: None,
            }],
        });
        Self {
            layouts,
            step_layout,
            pipelines: HashMap::new(),
        }
    }

    /// The group-0 layout of `kernel`.
    pub(crate) fn layout(&self, kernel: TrainKernel) -> Result<&wgpu::BindGroupLayout> {
        self.layouts.get(kernel.file).ok_or(Error::Shader {
            kernel: kernel.file,
            message: "no bind group layout".to_string(),
        })
    }

    /// The pipeline of `kernel` with `constants`, created on first use inside a
    /// validation error scope.
    pub(crate) fn pipeline(
        &mut self,
        device: &wgpu::Device,
        kernel: TrainKernel,
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline> {
        let key: Key = (kernel.file, constants.to_vec());
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.file),
            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
        });
        let pipeline = crate::gpu::compute_pipeline(
            device,
            kernel.file,
            &module,
            &[Some(self.layout(kernel)?), Some(&self.step_layout)],
            constants,
            scope,
        )?;
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// Every set of override constants the engine gives each kernel.
#[cfg(test)]
pub(crate) fn constant_sets() -> Vec<(TrainKernel, Vec<(&'static str, u32)>)> {
    let mut sets = Vec::new();
    for t in [8, 16] {
        for act in 0..=4u32 {
            for input in 0..=2u32 {
                sets.push((FORWARD, vec![("ACT", act), ("INPUT", input), ("T", t)]));
            }
            sets.push((BACKWARD, vec![("ACT", act), ("T", t)]));
        }
        for input in 0..=2u32 {
            for opt in 0..=2u32 {
                sets.push((UPDATE, vec![("OPT", opt), ("INPUT", input), ("T", t)]));
            }
        }
    }
    for input in 1..=2u32 {
        for loss in 0..=1u32 {
            sets.push((LOSS, vec![("LOSS", loss), ("INPUT", input)]));
        }
    }
    sets.push((SUMSQ, Vec::new()));
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every training kernel's composed source parses and validates with naga, and its
    /// pipeline constants resolve with every set of values the engine gives it; the
    /// declared bindings are the layout's. Needs no GPU.
    #[test]
    fn every_training_kernel_validates_with_every_override_value() {
        let sets = constant_sets();
        for kernel in ALL {
            let module = naga::front::wgsl::parse_str(kernel.source)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.file, e.emit_to_string(kernel.source)));
            let info = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", kernel.file, e.emit_to_string(kernel.source)));
            let bindings: Vec<(u32, u32)> = module
                .global_variables
                .iter()
                .filter_map(|(_, g)| g.binding.as_ref().map(|b| (b.group, b.binding)))
                .collect();
            for i in 0..kernel.slots.len() as u32 {
                assert!(bindings.contains(&(0, i)), "{}: binding {i}", kernel.file);
            }
            assert!(bindings.contains(&(1, 0)), "{}: the step", kernel.file);
            assert_eq!(bindings.len(), kernel.slots.len() + 1, "{}", kernel.file);
            let mine: Vec<_> = sets.iter().filter(|(k, _)| *k == kernel).collect();
            assert!(!mine.is_empty(), "{}: no constants", kernel.file);
            for (_, constants) in mine {
                let values: naga::back::PipelineConstants = constants
                    .iter()
                    .map(|&(name, v)| (name.to_string(), f64::from(v)))
                    .collect();
                naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, "main")),
                    &values,
                )
                .unwrap_or_else(|e| panic!("{} with {constants:?}: {e}", kernel.file));
            }
        }
    }
}
