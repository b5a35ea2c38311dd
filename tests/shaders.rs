//! naga parses and validates every `shaders/*.wgsl`, with every value its override
//! constants take; needs no GPU.

mod common;

use std::path::Path;

use common::wgsl_function as function;

fn validate(path: &Path) -> Vec<String> {
    let source = std::fs::read_to_string(path).unwrap();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
    // f16 kernels need the SHADER_FLOAT16 capability (wgpu's SHADER_F16).
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::SUBGROUP
            | naga::valid::Capabilities::COOPERATIVE_MATRIX,
    );
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&source)));
    let overrides: Vec<String> = module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    // The values the crate sets: ACT 0..=4 (dense kernels), MODE 0..=1 (aggregates),
    // PREFETCH 0..=1 (dense_vec4), and the tile shapes of the autotune candidates.
    for name in &overrides {
        let values: &[f64] = match name.as_str() {
            "ACT" => &[0.0, 1.0, 2.0, 3.0, 4.0],
            "MODE" | "PREFETCH" => &[0.0, 1.0],
            "WG_X" | "WG_Y" => &[8.0, 16.0],
            "TM" | "TN" => &[2.0, 4.0, 8.0],
            "BK" => &[8.0, 16.0, 32.0, 64.0],
            "WG" => &[32.0, 128.0, 512.0],
            "BX" | "BY" => &[1.0, 2.0, 4.0],
            "TMC" | "TNC" => &[1.0, 2.0, 4.0],
            other => panic!("{}: unexpected override {other}", path.display()),
        };
        for &v in values {
            let mut constants = naga::back::PipelineConstants::default();
            constants.insert(name.clone(), v);
            naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, "main")),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{} with {name} = {v}: {e}", path.display()));
        }
    }
    overrides
}

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "aggregate.wgsl",
            "dense.wgsl",
            "dense_coop.wgsl",
            "dense_f16.wgsl",
            "dense_small.wgsl",
            "dense_small_f16.wgsl",
            "dense_vec4.wgsl",
            "dense_vec4_f16.wgsl",
            "softmax.wgsl",
            "softmax_aggregate.wgsl",
        ]
    );
    for f in &files {
        validate(f);
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    let bad = "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }";
    let module = naga::front::wgsl::parse_str(bad);
    let invalid = match module {
        Err(_) => true,
        Ok(m) => naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&m)
        .is_err(),
    };
    assert!(invalid, "naga accepted a type error");
}

/// The text of `shaders/file`.
fn shader(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// WGSL has no includes: functions that several kernels carry must stay identical,
/// so that every path computes the same thing. Each of `names` in each of `files`
/// against `reference`'s, lines trimmed and comment lines left out.
fn assert_one_copy(reference: &str, files: &[&str], names: &[&str]) {
    let strip = |s: String| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let want = shader(reference);
    for file in files {
        let other = shader(file);
        for name in names {
            assert_eq!(
                strip(function(&other, name)),
                strip(function(&want, name)),
                "{file}: fn {name} differs from {reference}'s"
            );
        }
    }
}

#[test]
fn dense_kernels_share_one_activation() {
    assert_one_copy(
        "dense.wgsl",
        &[
            "dense_small.wgsl",
            "dense_f16.wgsl",
            "dense_small_f16.wgsl",
            "dense_coop.wgsl",
            "dense_vec4.wgsl",
            "dense_vec4_f16.wgsl",
        ],
        &["erf_approx", "activate"],
    );
}

/// WGSL has no includes: an f16 kernel repeats its f32 twin. From the uniform struct
/// on, `f16_file` must be `f32_file` with only the `(f32 text, f16 text)` replacements
/// (each present) and the f16-only functions `extra` added, so that a fix to one
/// kernel cannot miss the other.
fn assert_twin(f32_file: &str, f16_file: &str, replacements: &[(&str, &str)], extra: &[&str]) {
    let body = |s: &str| s[s.find("struct Params").unwrap()..].to_string();
    let mut want = body(&shader(f32_file));
    for (f32_text, f16_text) in replacements {
        assert!(want.contains(f32_text), "{f32_file}: no {f32_text}");
        want = want.replace(f32_text, f16_text);
    }
    let mut got = body(&shader(f16_file));
    for name in extra {
        let f = function(&got, name);
        // The function and the comment lines just above it.
        let start = got.find(&f).unwrap();
        let comment = got[..start]
            .lines()
            .rev()
            .take_while(|l| l.starts_with("//"))
            .map(|l| l.len() + 1)
            .sum::<usize>();
        got.replace_range(start - comment..start + f.len() + 1, "");
    }
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{f16_file} line {i} after struct Params");
    }
    assert_eq!(got.lines().count(), want.lines().count(), "{f16_file}");
}

#[test]
fn vec4_f16_kernel_is_the_f32_one_with_f16_operands() {
    // The f16 lines: the weight binding, the tiles, the staged vectors (whose type
    // converts x as it is loaded) and the widening of what the inner loop reads.
    assert_twin(
        "dense_vec4.wgsl",
        "dense_vec4_f16.wgsl",
        &[
            (
                "var<storage, read> w: array<vec4<f32>>;",
                "var<storage, read> w: array<vec4<f16>>;",
            ),
            ("array<vec4<f32>, BK *", "array<vec4<f16>, BK *"),
            ("alias Staged = vec4<f32>;", "alias Staged = vec4<f16>;"),
            (
                "= x_tile[k * xs + local.y];",
                "= vec4<f32>(x_tile[k * xs + local.y]);",
            ),
            (
                "= w_tile[k * ws + local.x];",
                "= vec4<f32>(w_tile[k * ws + local.x]);",
            ),
            (
                "= w_tile[k * ws + WG_X + local.x];",
                "= vec4<f32>(w_tile[k * ws + WG_X + local.x]);",
            ),
            (
                "= x_tile[k * xs + WG_Y + local.y];",
                "= vec4<f32>(x_tile[k * xs + WG_Y + local.y]);",
            ),
            (
                "return Staged(x[xo + row * (p.in_features / 4u) + k / 4u]);",
                "return Staged(round_f16(x[xo + row * (p.in_features / 4u) + k / 4u]));",
            ),
        ],
        &["round_f16"],
    );
}

#[test]
fn f16_kernels_share_one_rounding() {
    // Every f16 kernel rounds x to f16 through the same round_f16 (exact integer
    // arithmetic, not the driver's conversion), so that every path rounds alike.
    let reference = function(&shader("dense_small_f16.wgsl"), "round_f16");
    assert!(reference.contains("bitcast<vec4<u32>>(v)"), "{reference}");
    assert_one_copy(
        "dense_small_f16.wgsl",
        &["dense_f16.wgsl", "dense_vec4_f16.wgsl", "dense_coop.wgsl"],
        &["round_f16"],
    );
}

/// The conversions to f16 in `source` (`f16(..)` and `Staged(..)`) whose argument is
/// not known to be rounded: allowed are nothing, a weight (`w[..]`, stored as f16), a
/// literal, `round_f16(..)`, or `r.` where the nearest `let r =` before it is
/// `round_f16(..)`. Comments and round_f16's own body are left out.
fn unrounded_conversions(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.replacen(&function(&code, "round_f16"), "", 1);
    let mut bad = Vec::new();
    for call in ["f16(", "Staged("] {
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
            let ok = arg.is_empty()
                || arg.starts_with("round_f16(")
                || arg.starts_with("w[")
                || arg.starts_with("r.")
                || arg.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                bad.push(format!("{call}{arg})"));
            }
        }
    }
    let mut at = 0;
    while let Some(i) = code[at..].find("f16(r.") {
        let used = at + i;
        at = used + 1;
        match code[..used].rfind("let r = ") {
            Some(def) if code[def + 8..].starts_with("round_f16(") => {}
            Some(def) => bad.push(code[def..].lines().next().unwrap_or("").to_string()),
            None => bad.push(format!("f16(r. with no let r: {}", &code[used..used + 12])),
        }
    }
    bad
}

#[test]
fn every_f16_conversion_of_x_is_rounded() {
    // On lavapipe, f16 workgroup arrays hold correctly rounded values, so the tests
    // that run the kernels there would not see a conversion that skips round_f16
    // (NVIDIA's driver would): this reads every conversion in the source.
    for file in [
        "dense_f16.wgsl",
        "dense_vec4_f16.wgsl",
        "dense_coop.wgsl",
        "dense_small_f16.wgsl",
    ] {
        let source = shader(file);
        let bad = unrounded_conversions(&source);
        assert!(bad.is_empty(), "{file}: {bad:?}");
        // The check sees the roundings taken out again.
        for (from, to) in [
            ("let r = round_f16(v);", "let r = v;"),
            ("Staged(round_f16(x[", "Staged((x["),
            ("f16(r.", "f16(v."),
            (
                "f16(round_f16(vec4<f32>(x[i / 4u][i % 4u])).x)",
                "f16(x[i / 4u][i % 4u])",
            ),
        ] {
            let reverted = source.replace(from, to);
            if reverted != source {
                assert!(
                    !unrounded_conversions(&reverted).is_empty(),
                    "{file}: {from} -> {to} not caught"
                );
            }
        }
    }
}

#[test]
fn small_f16_kernel_is_the_f32_one_with_f16_weights() {
    // The f16 lines: the weight binding, the widening of the weights, and x rounded
    // to f16 (round_f16, the one function of its own).
    assert_twin(
        "dense_small.wgsl",
        "dense_small_f16.wgsl",
        &[
            (
                "var<storage, read> w: array<vec4<f32>>;",
                "var<storage, read> w: array<vec4<f16>>;",
            ),
            ("let wv = w[wrow + k];", "let wv = vec4<f32>(w[wrow + k]);"),
            ("let xv = x[xrow + k];", "let xv = round_f16(x[xrow + k]);"),
            (
                "let wv = w[i / 4u][i % 4u];",
                "let wv = f32(w[i / 4u][i % 4u]);",
            ),
            (
                "acc[r] = fma(x[j / 4u][j % 4u], wv, acc[r]);",
                "acc[r] = fma(round_f16(vec4<f32>(x[j / 4u][j % 4u])).x, wv, acc[r]);",
            ),
        ],
        &["round_f16"],
    );
}
