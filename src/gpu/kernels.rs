//! The WGSL kernels of `shaders/`, their bind group layouts, and a cache of compute
//! pipelines per (kernel, override constants).
//!
//! Each kernel's source is composed at compile time by concatenating WGSL files
//! (`concat!` of `include_str!`, so every [`Kernel::source`] is a `&'static str`): a
//! body under `shaders/` after the pieces the kernels share in `shaders/lib/` — the
//! dense params struct and bindings, the activations, `round_f16`, the aggregate
//! params, and an element prelude per precision (`lib/f32.wgsl`, `lib/f16.wgsl`) that
//! declares the same names (`Operand`, `round_operand`, `round_operand4`) for both, so
//! that `dense.wgsl`, `dense_vec4.wgsl` and `dense_small.wgsl` are each written once
//! for f32 and f16. WGSL lets a module declare things in any order, but naga writes
//! SPIR-V in the order of declaration, so the pieces come in the order the kernels
//! measured on the H100 declared them (`dense_coop_shape.wgsl` before the shared pieces
//! of `dense_coop.wgsl`): when the single files were split into pieces, the f32
//! kernels and `dense_coop.wgsl` (both coop sizes) compiled to byte for byte the SPIR-V
//! of the single files with naga 30 and wgpu's Vulkan options of a release build, for
//! every override value the crate sets (a debug build's SPIR-V names types and struct
//! members, and those names differ). Concatenation was chosen over
//! WESL (the `wesl` crate, with imports and `@if`): the f32/f16 differences are types
//! and the rounding of x, which the prelude's aliases and functions express without
//! conditional compilation; it needs no dependency, build script or generated files;
//! the pieces stay plain WGSL that naga and editors read; and the output is exactly
//! the text listed here, whose order decides the SPIR-V, where a linker would choose
//! the order and the names (WESL mangles imported names) itself.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Which bind group layout a kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layout {
    /// x, w, b (read), y (read-write), params.
    Dense,
    /// y (read-write), params.
    Softmax,
    /// y (read), acc (read-write), params; moments.wgsl's too (its statistics in
    /// place of acc).
    Aggregate,
    /// y, acc (read-write), params.
    SoftmaxAggregate,
    /// y (read), z (read-write), params, the blender's weights (read).
    Blend,
}

/// One kernel: the file under `shaders/` that holds its body (followed by `(f16)` for
/// the f16 variant of an f32 body) and its source, composed with `shaders/lib/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub(crate) file: &'static str,
    pub(crate) source: &'static str,
    layout: Layout,
}

/// A kernel's source: `$head` (enable directives, which must come first), then the
/// files `$piece` (relative to `shaders/`), one blank line after each.
macro_rules! wgsl {
    ($head:literal $(, $piece:literal)*) => {
        concat!($head $(, include_str!(concat!("../../shaders/", $piece)), "\n")*)
    };
}

/// The pieces before the body of an f32 dense kernel.
macro_rules! dense_f32 {
    ($body:literal) => {
        wgsl!(
            "",
            "lib/dense_params.wgsl",
            "lib/dense_bindings.wgsl",
            "lib/activation.wgsl",
            "lib/f32.wgsl",
            $body
        )
    };
}

/// The pieces before the body of an f16 dense kernel.
macro_rules! dense_f16 {
    ($body:literal) => {
        wgsl!(
            "enable f16;\n",
            "lib/dense_params.wgsl",
            "lib/dense_bindings.wgsl",
            "lib/activation.wgsl",
            "lib/round_f16.wgsl",
            "lib/f16.wgsl",
            $body
        )
    };
}

macro_rules! kernel {
    ($name:ident, $file:literal, $source:expr, $layout:ident, $doc:literal) => {
        #[doc = $doc]
        pub(crate) const $name: Kernel = Kernel {
            file: $file,
            source: $source,
            layout: Layout::$layout,
        };
    };
}

kernel!(
    DENSE,
    "dense.wgsl",
    dense_f32!("dense.wgsl"),
    Dense,
    "Register-tiled dense layer (`ACT`, tile overrides)."
);
kernel!(
    DENSE_VEC4,
    "dense_vec4.wgsl",
    dense_f32!("dense_vec4.wgsl"),
    Dense,
    "`DENSE` with each thread's rows and outputs in runs of four (`TileConfig::vec4`)."
);
kernel!(
    DENSE_SMALL,
    "dense_small.wgsl",
    dense_f32!("dense_small.wgsl"),
    Dense,
    "Dense layer for at most 16 rows (`ACT`)."
);
kernel!(
    DENSE_F16,
    "dense.wgsl (f16)",
    dense_f16!("dense.wgsl"),
    Dense,
    "`DENSE` with f16 weights and operands (needs `SHADER_F16`)."
);
kernel!(
    DENSE_VEC4_F16,
    "dense_vec4.wgsl (f16)",
    dense_f16!("dense_vec4.wgsl"),
    Dense,
    "`DENSE_VEC4` with f16 weights and operands (needs `SHADER_F16`)."
);
kernel!(
    DENSE_SMALL_F16,
    "dense_small.wgsl (f16)",
    dense_f16!("dense_small.wgsl"),
    Dense,
    "`DENSE_SMALL` with f16 weights (needs `SHADER_F16`)."
);
kernel!(
    DENSE_COOP,
    "dense_coop.wgsl",
    wgsl!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        "dense_coop_shape.wgsl",
        "lib/dense_params.wgsl",
        "lib/dense_bindings.wgsl",
        "lib/activation.wgsl",
        "lib/round_f16.wgsl",
        "lib/f16.wgsl",
        "dense_coop.wgsl"
    ),
    Dense,
    "`DENSE_F16` on 16×16×16 cooperative matrices (`ACT`, `WG`, `BX`, `BY`, `BK`)."
);

/// Values by which `dense_coop.wgsl`'s staged rows exceed the slice (its `PAD`).
pub(crate) const COOP_PAD: u32 = 8;

/// `DENSE_COOP` for cooperative matrices of `size`² (16 or 8): `shaders/dense_coop.wgsl`
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
    wgsl!("", "lib/dense_params.wgsl", "softmax.wgsl"),
    Softmax,
    "Row-wise softmax in place."
);
kernel!(
    AGGREGATE,
    "aggregate.wgsl",
    wgsl!("", "lib/aggregate_params.wgsl", "aggregate.wgsl"),
    Aggregate,
    "One member's weighted contribution (`MODE`)."
);
kernel!(
    SOFTMAX_AGGREGATE,
    "softmax_aggregate.wgsl",
    wgsl!("", "lib/aggregate_params.wgsl", "softmax_aggregate.wgsl"),
    SoftmaxAggregate,
    "A last-layer softmax fused with the member's contribution (`MODE`)."
);
kernel!(
    BLEND,
    "blend.wgsl",
    wgsl!("", "lib/aggregate_params.wgsl", "blend.wgsl"),
    Blend,
    "A stack's share of a stacking blender's first layer."
);
kernel!(
    MOMENTS,
    "moments.wgsl",
    wgsl!("", "lib/aggregate_params.wgsl", "moments.wgsl"),
    Aggregate,
    "The uncertainty statistics of a stack's outputs."
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
    pub(crate) blend_layout: wgpu::BindGroupLayout,
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
            blend_layout: layout(
                "blend",
                &[
                    storage(0, true),
                    storage(1, false),
                    uniform(2),
                    storage(3, true),
                ],
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
            Layout::Blend => &self.blend_layout,
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
        let pipeline = compute_pipeline(
            device,
            kernel.file,
            &module,
            &[Some(self.layout_of(kernel))],
            constants,
            scope,
        )?;
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// A bind group of `layout` with `buffers`, whole, at bindings 0, 1, 2, … in order.
pub(crate) fn bind_buffers(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout,
        entries: &entries,
    })
}

/// The compute pipeline of `module`'s `main` on `layouts` with the override
/// `constants` set; a validation error caught by `scope` (pushed before the module was
/// made) is [`Error::Shader`] naming `file`. Shared by the inference and the training
/// kernels' caches.
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    file: &'static str,
    module: &wgpu::ShaderModule,
    layouts: &[Option<&wgpu::BindGroupLayout>],
    constants: &[(&'static str, u32)],
    scope: wgpu::ErrorScopeGuard,
) -> Result<wgpu::ComputePipeline> {
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(file),
        bind_group_layouts: layouts,
        immediate_size: 0,
    });
    let values: Vec<(&str, f64)> = constants
        .iter()
        .map(|&(name, v)| (name, f64::from(v)))
        .collect();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(file),
        layout: Some(&layout),
        module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &values,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    match pollster::block_on(scope.pop()) {
        Some(err) => Err(Error::Shader {
            kernel: file,
            message: err.to_string(),
        }),
        None => Ok(pipeline),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel as the crate compiles it, the 8×8×8 coop variant included.
    fn all() -> [Kernel; 13] {
        [
            DENSE,
            DENSE_VEC4,
            DENSE_SMALL,
            DENSE_F16,
            DENSE_VEC4_F16,
            DENSE_SMALL_F16,
            DENSE_COOP,
            dense_coop(8),
            SOFTMAX,
            AGGREGATE,
            SOFTMAX_AGGREGATE,
            MOMENTS,
            BLEND,
        ]
    }

    /// naga's parse and validation of `source`, with the capabilities the f16 and
    /// coop kernels need (wgpu's SHADER_F16, SUBGROUP, EXPERIMENTAL_COOPERATIVE_MATRIX).
    fn validate(source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default()
                | naga::valid::Capabilities::SHADER_FLOAT16
                | naga::valid::Capabilities::SUBGROUP
                | naga::valid::Capabilities::COOPERATIVE_MATRIX,
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
        Ok((module, info))
    }

    /// Every set of override constants the crate gives a kernel: each tile candidate
    /// (the default among them) on the vec4 and the strided kernels in f32 and f16,
    /// the small-batch kernels, each coop shape candidate with 16x16 and 8x8 matrices
    /// and subgroups of 8 to 64 (where the kernel takes it), each with every
    /// activation; the aggregates in both modes.
    fn constant_sets() -> Vec<(Kernel, Vec<(&'static str, u32)>)> {
        use crate::gpu::coop::CoopTile;
        use crate::gpu::tune::tiled_kernel;
        use crate::precision::Precision;
        use crate::tile::{CoopShape, TileConfig};
        let acts = 0..=4u32;
        let mut sets = Vec::new();
        for precision in [Precision::F32, Precision::F16] {
            for tile in TileConfig::CANDIDATES {
                for in_features in [64, 63] {
                    for act in acts.clone() {
                        sets.push(tiled_kernel(&tile, precision, in_features, act));
                    }
                }
            }
            let small = if precision.is_f16() {
                DENSE_SMALL_F16
            } else {
                DENSE_SMALL
            };
            sets.extend(acts.clone().map(|act| (small, vec![("ACT", act)])));
        }
        let roomy = wgpu::Limits {
            max_compute_workgroup_storage_size: u32::MAX,
            max_compute_invocations_per_workgroup: u32::MAX,
            max_compute_workgroup_size_x: u32::MAX,
            ..wgpu::Limits::default()
        };
        for size in [16, 8] {
            for subgroup in [8, 16, 32, 64] {
                for shape in CoopShape::CANDIDATES {
                    let tile = CoopTile {
                        size,
                        subgroup,
                        shape,
                    };
                    if tile.fits(&roomy) {
                        for act in acts.clone() {
                            sets.push((dense_coop(size), tile.constants(act).to_vec()));
                        }
                    }
                }
            }
        }
        sets.push((SOFTMAX, Vec::new()));
        sets.push((MOMENTS, Vec::new()));
        sets.push((BLEND, Vec::new()));
        for kernel in [AGGREGATE, SOFTMAX_AGGREGATE] {
            sets.extend((0..=1).map(|mode| (kernel, vec![("MODE", mode)])));
        }
        sets
    }

    /// The composed source of every kernel parses and validates, and its pipeline
    /// constants resolve with every set of values the crate gives it (each kernel at
    /// least once); needs no GPU.
    #[test]
    fn every_kernel_validates_with_every_override_value() {
        let sets = constant_sets();
        for kernel in all() {
            let (module, info) =
                validate(kernel.source).unwrap_or_else(|e| panic!("{}: {e}", kernel.file));
            let mine: Vec<&Vec<(&str, u32)>> = sets
                .iter()
                .filter(|(k, _)| *k == kernel)
                .map(|(_, c)| c)
                .collect();
            assert!(!mine.is_empty(), "{}: no constants set", kernel.file);
            for constants in mine {
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

    #[test]
    fn a_broken_shader_is_rejected() {
        let bad = "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }";
        assert!(validate(bad).is_err(), "naga accepted a type error");
    }

    /// The conversions to f16 in `source` (`f16(..)`, `Operand(..)`,
    /// `vec4<Operand>(..)`, `Staged(..)`) whose argument is not known to be rounded:
    /// allowed are nothing, a weight (`w[..]`, stored as f16), a literal,
    /// `round_f16(..)`, `round_operand(..)`, `round_operand4(..)`, or `r.` (`v.`)
    /// where the nearest `let r =` (`v =`) before it is a rounding. Comments and
    /// round_f16's own body are left out.
    fn unrounded_conversions(source: &str) -> Vec<String> {
        let code: String = source
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let own = code.find("fn round_f16(").expect("round_f16");
        let own_end = own + code[own..].find("\n}\n").expect("round_f16's end");
        let code = format!("{}{}", &code[..own], &code[own_end..]);
        let rounded = |arg: &str| {
            ["round_f16(", "round_operand(", "round_operand4("]
                .iter()
                .any(|r| arg.starts_with(r))
        };
        let mut bad = Vec::new();
        for call in ["f16(", "Operand(", "vec4<Operand>(", "Staged("] {
            let mut at = 0;
            while let Some(i) = code[at..].find(call) {
                let start = at + i;
                at = start + call.len();
                if code[..start].ends_with("round_") || code[..start].ends_with("fn ") {
                    continue;
                }
                // The argument, up to the matching parenthesis.
                let mut depth = 1;
                let mut end = code.len();
                for (j, c) in code[at..].char_indices() {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = at + j;
                        break;
                    }
                }
                let arg = code[at..end].trim();
                let named = |name: &str, definition: &str| {
                    arg.starts_with(name)
                        && code[..start]
                            .rfind(definition)
                            .is_some_and(|d| rounded(&code[d + definition.len()..]))
                };
                let ok = arg.is_empty()
                    || rounded(arg)
                    || arg.starts_with("w[")
                    || arg.starts_with(|c: char| c.is_ascii_digit())
                    || named("r.", "let r = ")
                    || named("v.", " v = ");
                if !ok {
                    bad.push(format!("{call}{arg})"));
                }
            }
        }
        bad
    }

    #[test]
    fn every_f16_conversion_of_x_is_rounded() {
        // On lavapipe, f16 workgroup arrays hold correctly rounded values, so the
        // tests that run the kernels there would not see a conversion that skips
        // round_f16 (NVIDIA's driver would): this reads every conversion in the
        // source of every f16 kernel.
        // The roundings taken out again, each in at least one kernel.
        let reverts = [
            ("let r = round_f16(v);", "let r = v;"),
            (" v = round_operand4(x[", " v = (x["),
            ("Staged(round_operand4(x[", "Staged((x["),
            ("Operand(round_operand(x[", "Operand((x["),
            ("f16(r.", "f16(v."),
            (
                "f16(round_f16(vec4<f32>(x[i / 4u][i % 4u])).x)",
                "f16(x[i / 4u][i % 4u])",
            ),
        ];
        let mut applied = [false; 6];
        for kernel in [DENSE_F16, DENSE_VEC4_F16, DENSE_SMALL_F16, DENSE_COOP] {
            let source = kernel.source;
            let bad = unrounded_conversions(source);
            assert!(bad.is_empty(), "{}: {bad:?}", kernel.file);
            for ((from, to), applied) in reverts.iter().zip(&mut applied) {
                let reverted = source.replace(from, to);
                if reverted != source {
                    *applied = true;
                    assert!(
                        !unrounded_conversions(&reverted).is_empty(),
                        "{}: {from} -> {to} not caught",
                        kernel.file
                    );
                }
            }
        }
        assert_eq!(applied, [true; 6], "a rounding the check reverts is gone");
    }

    /// The 8×8×8 variant is derived by text replacement: both replacements must
    /// still apply, and naga must accept the result.
    #[test]
    fn coop_kernel_has_a_valid_8x8_variant() {
        let eight = dense_coop(8);
        assert!(eight.source.contains("const CT: u32 = 8u;"));
        assert!(!eight.source.contains("16x16"), "a coop_mat16x16 was left");
        assert!(!eight.source.contains("16u"), "a 16u was left");
        assert!(eight.source.contains("alias MatA = coop_mat8x8<f16, A>;"));
        if let Err(e) = validate(eight.source) {
            panic!("{e}");
        }
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
