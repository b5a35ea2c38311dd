//! The `wgpu-ensemble` command line: predictions equal the golden fixtures, and every
//! bad input exits non-zero with a message and writes no output file.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{assert_close, cli, golden, placement_tests, read_f64, stderr};
use wgpu_ensemble::Placement;

/// `wgpu-ensemble bench --workload gemm --batch 24` and `extra`.
fn gemm_bench(extra: &[&str]) -> Output {
    let mut args = vec!["bench", "--workload", "gemm", "--batch", "24"];
    args.extend_from_slice(extra);
    cli(&args)
}

fn predict(manifest: &Path, input: &Path, output: &Path, members: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--members-output",
        members.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `predict --device` on `place` (the CPU or `adapter:N`) gives the golden outputs.
fn predict_golden(place: Placement, label: &str) {
    let device = match place {
        Placement::Adapter(i) => format!("adapter:{i}"),
        _ => "cpu".to_string(),
    };
    let device = &device;
    let dir = tempfile::tempdir().unwrap();
    let (members_shape, members_want) = read_f64(&golden("expected_members.npy"));
    for (manifest, expected) in [
        ("vote.toml", "expected_vote.npy"),
        ("weighted_mean.toml", "expected_weighted_mean.npy"),
    ] {
        let output = dir.path().join("y.npy");
        let members = dir.path().join("members.npy");
        let out = predict(
            &golden(manifest),
            &golden("x_f64.npy"),
            &output,
            &members,
            &["--device", device, "--timeout-ms", "60000"],
        );
        assert!(out.status.success(), "{label} {manifest}: {}", stderr(&out));
        let summary = stderr(&out);
        assert!(
            summary.contains("5 members") && summary.contains("batch 33"),
            "{summary}"
        );

        let y = wgpu_ensemble::io::read_matrix(&output).unwrap();
        assert_eq!(y.shape(), &[33, 5]);
        assert_close(
            &format!("{label} {manifest}"),
            y.as_slice(),
            &read_f64(&golden(expected)).1,
        );
        let (shape, values) = read_members(&members);
        assert_eq!(shape, members_shape);
        assert_close(
            &format!("{label} {manifest} members"),
            &values,
            &members_want,
        );
    }
}

placement_tests!(predict_golden;
    predict_matches_the_golden_outputs_cpu: Cpu,
    predict_matches_the_golden_outputs_vulkan: Vulkan,
    predict_matches_the_golden_outputs_gl: Gl,
);

#[test]
fn predict_in_f16_stays_near_the_golden_outputs() {
    // f16 weights and layer inputs: about 1e-3 from the exact outputs (see
    // `Precision::F16`); the CPU applies the same rounding as the GPU kernels.
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("y.npy");
    let members = dir.path().join("members.npy");
    let out = predict(
        &golden("weighted_mean.toml"),
        &golden("x_f64.npy"),
        &output,
        &members,
        &["--device", "cpu", "--precision", "f16"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let y = wgpu_ensemble::io::read_matrix(&output).unwrap();
    let exact = read_f64(&golden("expected_weighted_mean.npy")).1;
    common::assert_close_tol("cpu f16 weighted mean", y.as_slice(), &exact, 1e-2, 1e-2);
    // The rounding is real: the f16 outputs differ from the exact ones.
    assert!(y
        .as_slice()
        .iter()
        .zip(&exact)
        .any(|(&g, &w)| (f64::from(g) - w).abs() > 1e-6));
}

/// The `[members, batch, outputs]` f32 file.
fn read_members(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let file = std::fs::File::open(path).unwrap();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

#[test]
fn bad_inputs_exit_non_zero_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad_manifest = dir.path().join("bad.toml");
    std::fs::write(
        &bad_manifest,
        "[[member]]\nname = \"a\"\nfile = \"a.safetensors\"\nlayer = [\"0\"]\n",
    )
    .unwrap();
    let corrupt_dir = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt_dir).unwrap();
    let corrupt_manifest = corrupt_dir.join("m.toml");
    std::fs::write(
        &corrupt_manifest,
        "[[member]]\nname = \"a\"\nfile = \"a.safetensors\"\n",
    )
    .unwrap();
    std::fs::write(
        corrupt_dir.join("a.safetensors"),
        b"\x08\0\0\0\0\0\0\0{broken}",
    )
    .unwrap();
    let vote = golden("vote.toml");
    let cases: Vec<(&str, &Path, std::path::PathBuf, &[&str], &str)> = vec![
        ("int32 input", &vote, golden("bad_int32.npy"), &[], "dtype"),
        (
            "3-d input",
            &vote,
            golden("bad_3d.npy"),
            &[],
            "2 dimensions",
        ),
        (
            "1-d input",
            &vote,
            golden("bad_1d.npy"),
            &[],
            "2 dimensions",
        ),
        (
            "Fortran order",
            &vote,
            golden("bad_fortran.npy"),
            &[],
            "Fortran",
        ),
        (
            "wrong width",
            &vote,
            golden("bad_width.npy"),
            &[],
            "bad_width.npy: 13 features",
        ),
        (
            "a deadline of 0",
            &vote,
            golden("x.npy"),
            &["--timeout-ms", "0"],
            "--timeout-ms",
        ),
        (
            "missing input",
            &vote,
            dir.path().join("absent.npy"),
            &[],
            "absent.npy",
        ),
        (
            "unknown manifest key",
            &bad_manifest,
            golden("x.npy"),
            &[],
            "layer",
        ),
        (
            "corrupt weights",
            &corrupt_manifest,
            golden("x.npy"),
            &[],
            "a.safetensors",
        ),
        (
            "bad device",
            &vote,
            golden("x.npy"),
            &["--device", "tpu"],
            "tpu",
        ),
        (
            "adapter out of range",
            &vote,
            golden("x.npy"),
            &["--device", "adapter:99"],
            "adapter 99",
        ),
        (
            "unknown precision",
            &vote,
            golden("x.npy"),
            &["--precision", "f8"],
            "f8",
        ),
        (
            "fault for an unknown member",
            &vote,
            golden("x.npy"),
            &["--device", "cpu", "--fault", "nosuch=fail"],
            "'nosuch'",
        ),
    ];
    std::fs::create_dir(dir.path().join("y-dir.npy")).unwrap();
    for (what, manifest, input, extra, needle) in cases {
        let output = if what == "output is a directory" {
            dir.path().join("y-dir.npy")
        } else {
            dir.path().join("y.npy")
        };
        let members = dir.path().join("members.npy");
        let out = predict(manifest, &input, &output, &members, extra);
        let message = stderr(&out);
        assert!(!out.status.success(), "{what}: exited 0");
        assert!(
            message.contains("error") && message.contains(needle),
            "{what}: {message}"
        );
        assert!(
            !output.exists() && !members.exists(),
            "{what}: wrote an output file"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
    }
}

#[test]
fn devices_lists_adapters_and_the_host() {
    let out = cli(&["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("cpu")), "{text}");
    for a in wgpu_ensemble::adapters() {
        assert!(text.contains(&a.name), "{} missing from:\n{text}", a.name);
    }
}

#[test]
fn bench_prints_one_json_object() {
    let out = gemm_bench(&["--device", "cpu", "--runs", "3", "--warmup", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["workload"], "gemm");
    assert_eq!(v["batch"], 24);
    assert_eq!(v["precision"], "f32");
    assert_eq!(v["adapter"][0], "cpu");
    assert_eq!(v["runs"], 3);
    for field in ["p50_ms", "p99_ms", "throughput_rows_per_s", "gflops"] {
        assert!(
            v[field].as_f64().is_some_and(|x| x > 0.0),
            "{field}: {text}"
        );
    }
    assert!(v["p99_ms"].as_f64() >= v["p50_ms"].as_f64(), "{text}");
    assert_eq!(v["tile"], "default");
    assert_eq!(v["spin_us"], 0);
    // Kernel times only with --device-timing, which the CPU refuses.
    assert!(v["device_p50_ms"].is_null(), "{text}");
    assert!(v["device_gflops"].is_null(), "{text}");
    let bad = cli(&["bench", "--workload", "E9", "--batch", "1", "--json"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("E9"),
        "{}",
        stderr(&bad)
    );
    // A batch whose input overflows, or cannot be held: an error, not a panic or an
    // abort.
    for batch in ["23529248552683520", "100000000000"] {
        let args = [
            "bench",
            "--device",
            "cpu",
            "--workload",
            "E1",
            "--batch",
            batch,
        ];
        let bad = cli(&args);
        assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
        assert!(
            stderr(&bad).contains("more values than"),
            "{}",
            stderr(&bad)
        );
    }
    for shape in ["2,2,2,2", "2,2,2,2,2,ahead", "2,2,2,2,2,prefetch,prefetch"] {
        let bad = gemm_bench(&["--precision", "f16-coop", "--coop-shape", shape]);
        assert!(!bad.status.success(), "--coop-shape {shape} accepted");
        assert!(stderr(&bad).contains("expected five"), "{}", stderr(&bad));
    }
    for tile in ["16,16,4", "16,16,4,4,x", "16,16,4,4,-1", "16,16,4,4,8,vec5"] {
        let bad = gemm_bench(&["--tile", tile]);
        assert!(!bad.status.success(), "--tile {tile} accepted");
        assert!(stderr(&bad).contains("error"), "{}", stderr(&bad));
    }
}

#[test]
fn bench_refuses_tiles_that_would_not_be_used() {
    let cases: [&[&str]; 5] = [
        &["--device", "cpu", "--sweep"],
        &["--device", "cpu", "--device-timing"],
        &["--device", "cpu", "--tile", "16,16,4,4,16"],
        &["--precision", "f16-coop", "--tile", "16,16,4,4,16"],
        &["--precision", "f32", "--coop-shape", "2,2,2,2,2"],
    ];
    for extra in cases {
        let out = gemm_bench(extra);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(
            stderr(&out).contains("error"),
            "{extra:?}: {}",
            stderr(&out)
        );
    }
    // A fixed tile or shape would silently win over the autotune.
    let fixed: [(&[&str], &str); 2] = [
        (&["--autotune", "--tile", "16,16,4,4,16"], "--tile"),
        (
            &[
                "--precision",
                "f16-coop",
                "--autotune",
                "--coop-shape",
                "2,2,2,2,2",
            ],
            "--coop-shape",
        ),
    ];
    for (extra, flag) in fixed {
        let out = gemm_bench(extra);
        assert!(!out.status.success(), "{extra:?} accepted");
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("--autotune"),
            "{extra:?}: {err}"
        );
    }
    // One member cannot be the late one of a quorum.
    let out = gemm_bench(&["--device", "cpu", "--mode", "late-member"]);
    assert!(!out.status.success(), "late-member with gemm accepted");
    assert!(stderr(&out).contains("several members"), "{}", stderr(&out));
    // A sweep that can run no candidate fails: f16-coop on an adapter without
    // cooperative matrices.
    let without = common::usable_adapters("bench sweep failure")
        .into_iter()
        .find(|a| a.cooperative_matrix.is_empty());
    if let Some(a) = without {
        let device = format!("adapter:{}", a.index);
        let out = gemm_bench(&["--device", &device, "--precision", "f16-coop", "--sweep"]);
        assert!(!out.status.success(), "a sweep with nothing run exited 0");
    }
}

/// `--device-timing` reports the kernels' time next to the run's: positive, within the
/// run's time (the p50 of the kernels at most the p50 of the runs that include them),
/// and GFLOP/s to match.
#[test]
fn bench_reports_the_kernels_time() {
    let Some(adapter) = common::usable_adapters("bench device timing")
        .into_iter()
        .find(|a| {
            a.features
                .contains(wgpu_ensemble::wgpu::Features::TIMESTAMP_QUERY)
        })
    else {
        return;
    };
    let device = format!("adapter:{}", adapter.index);
    let out = gemm_bench(&[
        "--device",
        &device,
        "--runs",
        "3",
        "--warmup",
        "1",
        "--device-timing",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let (run, kernels) = (v["p50_ms"].as_f64(), v["device_p50_ms"].as_f64());
    let (Some(run), Some(kernels)) = (run, kernels) else {
        panic!("no device_p50_ms: {text}");
    };
    assert!(kernels > 0.0 && kernels <= run, "{text}");
    let gflops = v["device_gflops"].as_f64().unwrap_or(0.0);
    let want = 2.0 * 24f64.powi(3) / (kernels * 1e-3) / 1e9;
    assert!(
        (gflops - want).abs() <= 1e-9 * want,
        "{gflops} vs {want}: {text}"
    );
    // The line of text names them too.
    let line = gemm_bench(&["--device", &device, "--runs", "1", "--device-timing"]);
    assert!(line.status.success(), "{}", stderr(&line));
    assert!(
        String::from_utf8_lossy(&line.stdout).contains("kernels alone"),
        "{}",
        String::from_utf8_lossy(&line.stdout)
    );
}

#[test]
fn bench_sweeps_the_tile_candidates() {
    let Some(adapter) = common::usable_adapters("bench sweep").first().cloned() else {
        return;
    };
    let device = format!("adapter:{}", adapter.index);
    let out = gemm_bench(&[
        "--device", &device, "--runs", "1", "--warmup", "0", "--sweep", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let tiles: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["tile"].as_str().unwrap().to_string()
        })
        .collect();
    let want: Vec<String> = wgpu_ensemble::TileConfig::CANDIDATES
        .iter()
        .map(|t| format!("{t:?}"))
        .collect();
    assert_eq!(tiles, want, "{text}");
    let fixed = gemm_bench(&[
        "--device",
        &device,
        "--runs",
        "1",
        "--tile",
        "8,8,2,2,8",
        "--spin-us",
        "300",
        "--json",
    ]);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    assert!(
        String::from_utf8_lossy(&fixed.stdout).contains("\"spin_us\":300"),
        "{}",
        String::from_utf8_lossy(&fixed.stdout)
    );
    assert!(
        String::from_utf8_lossy(&fixed.stdout).contains("wg_x: 8, wg_y: 8, tm: 2, tn: 2, bk: 8"),
        "{}",
        String::from_utf8_lossy(&fixed.stdout)
    );
    let vec4 = gemm_bench(&[
        "--device",
        &device,
        "--runs",
        "1",
        "--tile",
        "8,8,4,4,8,vec4",
        "--json",
    ]);
    assert!(vec4.status.success(), "{}", stderr(&vec4));
    assert!(
        String::from_utf8_lossy(&vec4.stdout)
            .contains("tm: 4, tn: 4, bk: 8, vec4: true, prefetch: false"),
        "{}",
        String::from_utf8_lossy(&vec4.stdout)
    );
    let ahead = gemm_bench(&[
        "--device",
        &device,
        "--runs",
        "1",
        "--tile",
        "8,8,4,4,8,vec4,prefetch",
        "--json",
    ]);
    assert!(ahead.status.success(), "{}", stderr(&ahead));
    assert!(
        String::from_utf8_lossy(&ahead.stdout).contains("vec4: true, prefetch: true"),
        "{}",
        String::from_utf8_lossy(&ahead.stdout)
    );
    // Words other than vec4 and prefetch after the numbers, a word twice, or prefetch
    // without vec4 are refused.
    for tile in [
        "8,8,4,4,8,vec8",
        "8,8,4,4,8,vec4,vec4",
        "8,8,4,4,8,prefetch",
    ] {
        let bad = gemm_bench(&["--device", &device, "--tile", tile]);
        assert!(
            !bad.status.success() && stderr(&bad).contains("optionally vec4 and then prefetch"),
            "{tile}: {}",
            stderr(&bad)
        );
    }
    // The autotune's choices in a cache file; the file needs --autotune.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    let cache_arg = cache.to_str().unwrap();
    let tuned = gemm_bench(&[
        "--device",
        &device,
        "--runs",
        "1",
        "--autotune",
        "--autotune-cache",
        cache_arg,
        "--json",
    ]);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(
        text.contains("[[entry]]") && text.contains("vec4"),
        "{text}"
    );
    let alone = gemm_bench(&["--autotune-cache", cache_arg]);
    assert!(
        !alone.status.success(),
        "--autotune-cache without --autotune accepted"
    );
    if device != "cpu" {
        // Runs of four: tm 2 is not a vec4 tile.
        let bad = gemm_bench(&["--device", &device, "--tile", "8,8,2,4,8,vec4"]);
        assert!(
            !bad.status.success() && stderr(&bad).contains("vec4 tiles take tm and tn 4 or 8"),
            "{}",
            stderr(&bad)
        );
        // More than 8 accumulators per thread: refused by the device's executor.
        let bad = gemm_bench(&["--device", &device, "--tile", "16,16,9,4,16"]);
        assert!(
            !bad.status.success() && stderr(&bad).contains("does not fit"),
            "{}",
            stderr(&bad)
        );
    }
}

/// `wgpu-ensemble bench --workload E1 --batch 8 --split KIND --devices DEVICES --json`
/// with `extra`: one JSON object per line of stdout.
fn split_bench(kind: &str, devices: &str, extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let mut args = vec![
        "bench",
        "--workload",
        "E1",
        "--batch",
        "8",
        "--split",
        kind,
        "--devices",
        devices,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, lines)
}

/// `bench --split all`: one line per variant, the whole member first, every variant
/// timed, each split's output equal to the whole member's.
#[test]
fn bench_split_reports_every_variant() {
    let extra = ["--runs", "2", "--warmup", "1"];
    let (out, lines) = split_bench("all", "cpu,cpu", &extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let variants: Vec<&str> = lines.iter().filter_map(|v| v["variant"].as_str()).collect();
    assert_eq!(
        variants,
        [
            "whole",
            "layers-mb1",
            "layers-mb2",
            "layers-mb4",
            "layers-mb8",
            "columns"
        ]
    );
    for v in &lines {
        let name = &v["variant"];
        assert_eq!(v["workload"], "E1", "{v}");
        assert_eq!(v["mode"], "split", "{v}");
        assert_eq!(v["batch"], 8, "{v}");
        assert_eq!(v["runs"], 2, "{v}");
        assert_eq!(v["devices"], serde_json::json!(["cpu", "cpu"]), "{v}");
        for field in [
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "throughput_rows_per_s",
            "gflops",
        ] {
            assert!(
                v[field].as_f64().is_some_and(|x| x > 0.0),
                "{name} {field}: {v}"
            );
        }
        assert!(v["p90_ms"].as_f64() >= v["p50_ms"].as_f64(), "{v}");
        let p50 = v["p50_ms"].as_f64().unwrap();
        let rate = v["throughput_rows_per_s"].as_f64().unwrap();
        assert!(
            (rate * p50 / 1e3 - 8.0).abs() < 1e-6,
            "rows/s = batch / p50: {v}"
        );
        let diff = v["max_abs_diff"].as_f64().unwrap();
        assert!(
            diff < 1e-5,
            "{name} differs from the whole member by {diff}"
        );
        // The ratio is the whole member's p50 over this one's.
        let whole = lines[0]["p50_ms"].as_f64().unwrap();
        let speedup = v["speedup"].as_f64().unwrap();
        assert!((speedup - whole / p50).abs() < 1e-9, "{v}");
    }
    let whole = &lines[0];
    assert_eq!(whole["split"], serde_json::Value::Null);
    assert_eq!(whole["adapter"], serde_json::json!(["cpu"]));
    assert_eq!(whole["speedup"], 1.0);
    assert_eq!(whole["max_abs_diff"], 0.0);
    for (v, micro_batches) in lines[1..5].iter().zip([1, 2, 4, 8]) {
        assert_eq!(v["split"], "layers", "{v}");
        assert_eq!(v["micro_batches"], micro_batches, "{v}");
        // E1's first layer (784 × 512) costs more than the other two together.
        assert_eq!(v["stages"], serde_json::json!([[0, 1], [1, 3]]), "{v}");
        assert_eq!(v["adapter"], serde_json::json!(["cpu", "cpu"]), "{v}");
    }
    assert_eq!(lines[5]["split"], "columns");
    assert_eq!(lines[5]["micro_batches"], serde_json::Value::Null);

    // One kind alone: the whole member and that kind's variants, on one device too.
    let once = ["--runs", "1", "--warmup", "0"];
    for (kind, want) in [
        ("columns", &["whole", "columns"][..]),
        (
            "layers",
            &[
                "whole",
                "layers-mb1",
                "layers-mb2",
                "layers-mb4",
                "layers-mb8",
            ][..],
        ),
    ] {
        let (out, lines) = split_bench(kind, "cpu", &once);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let got: Vec<&str> = lines.iter().filter_map(|v| v["variant"].as_str()).collect();
        assert_eq!(got, want, "{kind}");
    }
}

/// `bench --split` and `--devices` refuse what they cannot run, naming the flag, and
/// print nothing on stdout.
#[test]
fn bench_split_refuses_bad_flags() {
    let e1 = ["bench", "--workload", "E1", "--batch", "4", "--runs", "1"];
    let cases: [(&[&str], &str); 12] = [
        (&["--split", "layers"], "--split: needs --devices"),
        (&["--devices", "cpu,cpu"], "--devices: goes with --split"),
        (&["--split", "rows", "--devices", "cpu"], "--split: 'rows'"),
        (&["--split", "all", "--devices", ""], "--devices: no device"),
        (
            &["--split", "all", "--devices", " , "],
            "--devices: no device",
        ),
        (
            &["--split", "all", "--devices", "cpu,adapter:x"],
            "--devices: device 2 of 'cpu,adapter:x'",
        ),
        (
            &["--split", "all", "--devices", "cpu", "--device", "cpu"],
            "--device: not with --split",
        ),
        (
            &["--split", "all", "--devices", "cpu", "--mode", "pipeline"],
            "--mode: not with --split",
        ),
        (
            &["--split", "all", "--devices", "cpu", "--resident"],
            "--resident: not with --split",
        ),
        (
            &["--split", "all", "--devices", "cpu", "--device-timing"],
            "--device-timing: not with --split",
        ),
        // E1 has three layers: four stages cannot be made.
        (
            &["--split", "layers", "--devices", "cpu,cpu,cpu,cpu"],
            "`devices`: 4 devices for a model of 3 layer(s)",
        ),
        // A tile only an adapter honours, with the member on the CPU.
        (
            &[
                "--split",
                "columns",
                "--devices",
                "cpu",
                "--tile",
                "16,16,4,4,16",
            ],
            "needs an adapter",
        ),
    ];
    for (extra, want) in cases {
        let mut args = e1.to_vec();
        args.extend_from_slice(extra);
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{extra:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{extra:?} printed a report");
    }
    // gemm is a single layer: nothing to split.
    let out = cli(&[
        "bench",
        "--workload",
        "gemm",
        "--batch",
        "4",
        "--split",
        "all",
        "--devices",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--split: needs a member of several layers"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn predict_with_a_quorum_writes_the_members_present() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("y.npy");
    let members = dir.path().join("members.npy");
    // Member 1 of the five fails; the quorum of 4 is met.
    let out = predict(
        &golden("mean.toml"),
        &golden("x.npy"),
        &output,
        &members,
        &[
            "--device",
            "cpu",
            "--quorum",
            "4",
            "--fault",
            "deep-tanh-gelu=fail",
        ],
    );
    let message = stderr(&out);
    assert!(out.status.success(), "{message}");
    assert!(
        message.contains("deep-tanh-gelu") && message.contains("fault injection"),
        "{message}"
    );
    assert!(message.contains("4 finished"), "{message}");
    let y = wgpu_ensemble::io::read_matrix(&output).unwrap();
    let (_, all) = read_f64(&golden("expected_members.npy"));
    let per = 33 * 5;
    let want: Vec<f64> = (0..per)
        .map(|j| [0, 2, 3, 4].iter().map(|&m| all[m * per + j]).sum::<f64>() / 4.0)
        .collect();
    assert_close("mean of the four members present", y.as_slice(), &want);
    let (_, member_values) = read_members(&members);
    assert!(member_values[per..2 * per].iter().all(|v| v.is_nan()));

    // Two failures miss a quorum of 4: non-zero, a message, no output.
    std::fs::remove_file(&output).unwrap();
    std::fs::remove_file(&members).unwrap();
    let out = predict(
        &golden("mean.toml"),
        &golden("x.npy"),
        &output,
        &members,
        &[
            "--device",
            "cpu",
            "--quorum",
            "4",
            "--fault",
            "seq-relu=fail",
            "--fault",
            "fc-f64=fail",
        ],
    );
    let message = stderr(&out);
    assert!(!out.status.success(), "{message}");
    assert!(
        message.contains("quorum not met")
            && message.contains("seq-relu")
            && message.contains("fc-f64"),
        "{message}"
    );
    assert!(!output.exists() && !members.exists());
}

#[test]
fn the_same_path_for_both_outputs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("o.npy");
    let out = predict(
        &golden("mean.toml"),
        &golden("x.npy"),
        &both,
        &both,
        &["--device", "cpu"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("two outputs"), "{}", stderr(&out));
    assert!(!both.exists());
}

/// `devices` whose reader has gone (`wgpu-ensemble devices | head -0`) ends quietly
/// with status 0 (`println!` panicked on the broken pipe, status 101).
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
        .arg("devices")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader gone before the command writes (it enumerates the adapters first).
    drop(child.stdout.take());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = common::wait_bounded(
        &mut child,
        std::time::Duration::from_secs(60),
        "devices with a closed stdout",
    );
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--precision f16` with members on the CPU runs them in f32 and says so on stderr
/// (it said nothing); the predictions are written.
#[test]
fn a_precision_that_cpu_members_do_not_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("y.npy");
    let members = dir.path().join("m.npy");
    let out = predict(
        &golden("vote.toml"),
        &golden("x.npy"),
        &output,
        &members,
        &["--device", "cpu", "--precision", "f16"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("those on the CPU run in f32"),
        "{}",
        stderr(&out)
    );
    assert!(output.is_file());
}

/// `--uncertainty-output` with a member that does not end in a softmax says so on
/// stderr, naming it (its entropies mean nothing), and still writes the outputs; with
/// softmax members only, nothing is said.
#[test]
fn uncertainty_of_outputs_that_are_not_probabilities_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (y, m, u) = (
        dir.path().join("y.npy"),
        dir.path().join("m.npy"),
        dir.path().join("u.npy"),
    );
    let run = |manifest: &Path, input: &Path| {
        let extra = [
            "--uncertainty-output",
            u.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        predict(manifest, input, &y, &m, &extra)
    };
    let out = run(&golden("mean.toml"), &golden("x.npy"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("do not end in a softmax: bf16-gelu"),
        "{}",
        stderr(&out)
    );
    assert!(u.is_file());
    let digits = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits");
    let out = run(&digits.join("digits.toml"), &digits.join("x_test.npy"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("softmax"), "{}", stderr(&out));
}
