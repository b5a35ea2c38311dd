//! The autotune: the tile and cooperative-matrix shape it picks, its cache file, and
//! the cached entries a device cannot run.

use super::*;

fn autotune_tile(info: &AdapterInfo) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    let place = Placement::Adapter(info.index);
    let options = SessionOptions::default()
        .autotune(64)
        .autotune_cache(&cache);
    let s = session(&place, options.clone()).unwrap();
    check(&s, F32, &format!("{info} autotuned"));
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(
        text.contains("[[entry]]") && text.contains(&info.name),
        "{text}"
    );
    // Layers whose input width is not a multiple of 4 (33, 65, 70 here) have their
    // own entries, and no vec4 tile: they cannot run dense_vec4.wgsl.
    let file: toml::Value = toml::from_str(&text).unwrap();
    let entries = file["entry"].as_array().unwrap();
    let aligned = |e: &toml::Value| e.get("aligned").and_then(|v| v.as_bool());
    assert!(entries.iter().any(|e| aligned(e) == Some(false)), "{text}");
    assert!(entries.iter().any(|e| aligned(e) == Some(true)), "{text}");
    for e in entries.iter().filter(|e| aligned(e) == Some(false)) {
        assert_eq!(e["config"]["vec4"].as_bool(), Some(false), "{text}");
    }
    // A second session finds every shape in the cache and leaves the file as it is.
    drop(session(&place, options).unwrap());
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), text);
}

placement_tests!(adapters autotune_tile;
    autotune_picks_a_tile_and_keeps_it_in_its_cache_file_vulkan: Vulkan,
    autotune_picks_a_tile_and_keeps_it_in_its_cache_file_gl: Gl,
);

/// The autotune times a stack's layers with the stack's member count (a stack gives
/// the device more workgroups, which can favour other tiles) and keeps those choices
/// apart from a lone member's of the same shape; the stacked members still match.
fn autotune_stack(info: &AdapterInfo) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    // Three members of one shape and one of another on the adapter's first device,
    // and one more of the first shape alone on a second device of the adapter (on one
    // device it would join the stack); layer shape classes ([300, 36]: outputs 512, inputs 64; [5, 300]: 16, 512) no
    // other test tunes, so their keys cannot come from the process's cache, which
    // the file also holds.
    let shape: (&[usize], &[wgpu_ensemble::Activation]) = (&[36, 300, 5], &[Relu, Identity]);
    let models: Vec<Model> = (0..5)
        .map(|i| {
            let (widths, acts) = if i == 3 {
                (&[36, 5][..], &[Tanh][..])
            } else {
                shape
            };
            Model::random(widths, acts, 700 + i).unwrap()
        })
        .collect();
    let mut g = Graph::builder(36);
    for (i, m) in models.iter().enumerate() {
        let place = match i {
            4 => Placement::Queue {
                adapter: info.index,
                slot: 1,
            },
            _ => Placement::Adapter(info.index),
        };
        g = g.member(format!("m{i}"), m.clone(), place);
    }
    let options = SessionOptions::default()
        .autotune(40)
        .autotune_cache(&cache);
    let s = Session::with_options(g.build().unwrap(), options).unwrap();
    for batch in [3, 40] {
        let x = input(batch, 36, batch as u64);
        let run = s
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        for (m, model) in run.members.iter().zip(&models) {
            assert_close_tol(
                &format!("{info} autotuned stack: {} batch {batch}", m.name),
                m.output.as_ref().unwrap().as_slice(),
                &reference_forward(model, &x),
                ABS,
                REL,
            );
        }
    }
    let text = std::fs::read_to_string(&cache).unwrap();
    let file: toml::Value = toml::from_str(&text).unwrap();
    // The file holds the process's whole cache: this adapter's entries.
    let adapter = format!("{:?} {}", info.backend, info.name);
    let members = |outputs: i64, inputs: i64| -> Vec<i64> {
        let mut found: Vec<i64> = file["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["adapter"].as_str() == Some(adapter.as_str()))
            .filter(|e| e["rows"].as_integer() == Some(64))
            .filter(|e| e["outputs"].as_integer() == Some(outputs))
            .filter(|e| e["inputs"].as_integer() == Some(inputs))
            .map(|e| e["members"].as_integer().unwrap())
            .collect();
        found.sort();
        found
    };
    // Both layers (at rows bucket 64): the stack of three (4) and the lone one (1).
    assert_eq!(members(512, 64), [1, 4], "{text}");
    assert_eq!(members(16, 512), [1, 4], "{text}");
}

placement_tests!(adapters autotune_stack;
    autotune_times_a_stack_with_its_members_vulkan: Vulkan,
    autotune_times_a_stack_with_its_members_gl: Gl,
);

fn autotune_coop(info: &AdapterInfo) {
    common::require_coop("coop_autotune_picks_a_shape_and_keeps_it_in_its_cache_file");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    if !quirks::coop_matrix(info) {
        return;
    }
    let place = Placement::Adapter(info.index);
    let options = SessionOptions::default()
        .precision(Precision::F16CoopMatrix)
        .autotune(64)
        .autotune_cache(&cache);
    let s = session(&place, options.clone()).unwrap();
    check(&s, F16, &format!("{info} f16-coop autotuned"));
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(
        text.contains("[[coop]]") && text.contains("f16-coop") && text.contains(&info.name),
        "{text}"
    );
    drop(session(&place, options).unwrap());
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), text);
}

placement_tests!(adapters autotune_coop;
    coop_autotune_picks_a_shape_and_keeps_it_in_its_cache_file_vulkan: Vulkan,
    coop_autotune_picks_a_shape_and_keeps_it_in_its_cache_file_gl: Gl,
);

#[test]
fn auto_placement_uses_only_devices_that_run_the_precision() {
    // Mesa's GL adapter has no SHADER_F16 and no adapter here may have cooperative
    // matrices: `Auto` must pass over them (down to the CPU) instead of failing.
    let infos = wgpu_ensemble::adapters();
    for precision in [Precision::F16, Precision::F16CoopMatrix] {
        let s = session(
            &Placement::Auto,
            SessionOptions::default().precision(precision),
        )
        .unwrap_or_else(|e| panic!("Auto with {precision:?}: {e}"));
        for device in s.devices() {
            if let wgpu_ensemble::ExecutionDevice::Adapter { index, .. } = device {
                let info = &infos[*index];
                let ok = match precision {
                    Precision::F16 => quirks::shader_f16(info),
                    _ => quirks::coop_matrix(info),
                };
                assert!(ok, "Auto put a {precision:?} member on {info}");
            }
        }
        check(&s, F16, &format!("auto {precision:?}"));
    }
}

/// An autotune cache file edited to hold shapes the kernels cannot run (more than 8
/// accumulators per thread, more than 4 matrices per block): the session times the
/// candidates again instead of running them, and the file gets valid entries.
fn autotune_tampered_cache(info: &AdapterInfo) {
    let dir = tempfile::tempdir().unwrap();
    let place = Placement::Adapter(info.index);
    let mut precisions = vec![(Precision::F32, F32)];
    if quirks::coop_matrix(info) {
        precisions.push((Precision::F16CoopMatrix, F16));
    }
    for (precision, reference) in precisions {
        let first = dir
            .path()
            .join(format!("{}-{:?}-a.toml", info.index, precision));
        let second = dir
            .path()
            .join(format!("{}-{:?}-b.toml", info.index, precision));
        // Rows bucket 32 here; no other test tunes at 32 or 128 rows, so the
        // process's in-memory cache holds neither.
        let options = |rows: usize, file: &std::path::Path| {
            SessionOptions::default()
                .precision(precision)
                .autotune(rows)
                .autotune_cache(file)
        };
        drop(session(&place, options(20, &first)).unwrap());
        let text = std::fs::read_to_string(&first).unwrap();
        let mut edited = text.replace("rows = 32", "rows = 128");
        for field in ["tm", "tmc"] {
            let value = if field == "tm" { 9 } else { 8 };
            edited = edited
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{field} = ")) {
                        format!("{field} = {value}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert!(edited.contains("rows = 128"), "{edited}");
        assert!(
            edited.contains("tm = 9") || edited.contains("tmc = 8"),
            "{edited}"
        );
        std::fs::write(&second, &edited).unwrap();
        let s = session(&place, options(100, &second))
            .unwrap_or_else(|e| panic!("{info} {precision:?}: {e}"));
        check(&s, reference, &format!("{info} {precision:?} re-tuned"));
        let rewritten = std::fs::read_to_string(&second).unwrap();
        assert!(
            !rewritten.contains("tm = 9") && !rewritten.contains("tmc = 8"),
            "{rewritten}"
        );
    }
}

placement_tests!(adapters autotune_tampered_cache;
    autotune_retimes_cached_entries_the_device_cannot_run_vulkan: Vulkan,
    autotune_retimes_cached_entries_the_device_cannot_run_gl: Gl,
);
