//! The WGSL under `shaders/`: the pieces in `shaders/lib/` that the kernels are composed
//! of are each written once. The composed kernels themselves are validated by naga, with
//! every value their override constants take, in the unit tests of
//! `src/gpu/kernels.rs` (where the composition is); needs no GPU.

use std::path::{Path, PathBuf};

/// Every `.wgsl` file under `dir`, sorted.
fn wgsl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(wgsl_files(&path));
        } else if path.extension().is_some_and(|e| e == "wgsl") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The names of the functions and structs `source` declares, `fn name` and `struct
/// name` at the start of a line.
fn declarations(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("fn ").or_else(|| l.strip_prefix("struct ")))
        .map(|rest| {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn shared_functions_and_structs_are_declared_once() {
    let shaders = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let files = wgsl_files(&shaders);
    let lib: Vec<(&PathBuf, Vec<String>)> = files
        .iter()
        .filter(|f| f.starts_with(shaders.join("lib")))
        .map(|f| (f, declarations(&std::fs::read_to_string(f).unwrap())))
        .collect();
    let shared: Vec<&String> = lib.iter().flat_map(|(_, names)| names).collect();
    // What the kernels share, among them the round_f16 that tests/it/precision/rounding.rs
    // compiles on every driver from shaders/lib/round_f16.wgsl.
    for name in [
        "DenseParams",
        "AggregateParams",
        "activate",
        "activate_grad",
        "erf_approx",
        "round_f16",
    ] {
        assert!(
            shared.iter().any(|s| *s == name),
            "{name} not in shaders/lib"
        );
    }
    for name in &shared {
        let declared_in: Vec<String> = files
            .iter()
            .filter(|f| declarations(&std::fs::read_to_string(f).unwrap()).contains(name))
            .map(|f| f.strip_prefix(&shaders).unwrap().display().to_string())
            .collect();
        assert_eq!(declared_in.len(), 1, "{name} declared in {declared_in:?}");
    }
}

/// Every training kernel body under `shaders/train/`, composed from the pieces it uses
/// (`params.wgsl` always; `rows.wgsl` where it binds the row `order`; the activation
/// and its derivative from `shaders/lib/` where it calls them), parses and validates
/// with naga. `src/train/gpu/kernels.rs` composes them for the engine and validates
/// each with every override value it sets; this checks the files as they are, from
/// their declarations alone. Needs no GPU.
#[test]
fn training_kernels_validate_with_naga() {
    let shaders = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let read = |p: &str| std::fs::read_to_string(shaders.join(p)).unwrap();
    let mut bodies = 0;
    for file in wgsl_files(&shaders.join("train")) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name == "params.wgsl" || name == "rows.wgsl" {
            continue;
        }
        let body = std::fs::read_to_string(&file).unwrap();
        let mut source = read("train/params.wgsl");
        if body.contains("var<storage, read> order") {
            source += &read("train/rows.wgsl");
        }
        if body.contains("activate") {
            source += &read("lib/activation.wgsl");
        }
        if body.contains("activate_grad") {
            source += &read("lib/activation_grad.wgsl");
        }
        source += &body;
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&source)));
        bodies += 1;
    }
    assert!(
        bodies >= 5,
        "only {bodies} training kernels under shaders/train"
    );
}
