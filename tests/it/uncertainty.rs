//! The uncertainty outputs (`RunOptions::uncertainty`): entropy, expected entropy,
//! mutual information, disagreement and variance against an f64 reference written from
//! their definitions, over random softmax members, the golden members (`predict
//! --uncertainty-output`) and the digits members; weighted and unweighted; under a
//! quorum with a member missing; for one member and for identical members.

use crate::common;

use std::path::{Path, PathBuf};

use common::{
    assert_close_tol, cli, golden, input, placement_tests, read_f64, reference_forward,
    reference_measures, stderr, ReferenceMeasures,
};
use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::{
    Activation::*, AdapterInfo, Aggregate, Fault, FaultPlan, Graph, Model, Pipeline,
    PipelineOptions, Placement, QuorumPolicy, RunOptions, RunOutput, Session, SessionOptions,
    Split, Tensor, Uncertainty,
};

/// Tolerances of the measures: each sums `classes` terms of the members' f32 outputs.
const ABS: f64 = 2e-5;
const REL: f64 = 1e-4;

fn check(label: &str, out: &RunOutput, want: &ReferenceMeasures) {
    check_measures(label, out.uncertainty.as_ref(), want);
}

fn check_measures(label: &str, u: Option<&Uncertainty>, want: &ReferenceMeasures) {
    let u = u.unwrap_or_else(|| panic!("{label}: no uncertainty"));
    assert_close_tol(
        &format!("{label}: entropy, expected entropy, mutual information, disagreement"),
        u.summary().as_slice(),
        &want.summary,
        ABS,
        REL,
    );
    assert_close_tol(
        &format!("{label}: variance"),
        u.variance.as_slice(),
        &want.variance,
        ABS,
        REL,
    );
}

const IN: usize = 6;
const CLASSES: usize = 5;

fn models() -> Vec<Model> {
    vec![
        Model::random(&[IN, 12, CLASSES], &[Relu, Softmax], 91).unwrap(),
        Model::random(&[IN, 9, CLASSES], &[Tanh, Softmax], 92).unwrap(),
        Model::random(&[IN, CLASSES], &[Softmax], 93).unwrap(),
        Model::random(&[IN, 7, 7, CLASSES], &[Gelu, Sigmoid, Softmax], 94).unwrap(),
    ]
}

/// Four softmax members under a mean, a weighted mean and a weighted vote (whose
/// weights the measures use), at 1 and 13 rows; member outputs stay unreturned unless
/// asked.
fn measures_match_the_reference(place: Placement, label: &str) {
    let weights = [0.4f32, 0.1, 0.3, 0.2];
    for (aggregate, w) in [
        (Aggregate::Mean, [1.0f32; 4]),
        (Aggregate::WeightedMean(weights.to_vec()), weights),
        (
            Aggregate::Vote {
                weights: Some(weights.to_vec()),
            },
            weights,
        ),
    ] {
        let mut g = Graph::builder(IN).aggregate(aggregate.clone());
        for (i, m) in models().into_iter().enumerate() {
            g = g.member(format!("m{i}"), m, place.clone());
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        for rows in [1, 13] {
            let x = input(rows, IN, rows as u64);
            let out = session
                .run(&x, &RunOptions::default().uncertainty(true))
                .unwrap();
            assert!(out.members.iter().all(|m| m.output.is_none()), "{label}");
            let refs: Vec<Vec<f64>> = models().iter().map(|m| reference_forward(m, &x)).collect();
            let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
            check(
                &format!("{label} {} at {rows} rows", aggregate.name()),
                &out,
                &reference_measures(&refs, &w64, rows, CLASSES),
            );
        }
        let x = input(3, IN, 7);
        let out = session.run(&x, &RunOptions::default()).unwrap();
        assert!(out.uncertainty.is_none(), "{label}: not asked");
    }
}

placement_tests!(measures_match_the_reference;
    measures_match_the_reference_cpu: Cpu,
    measures_match_the_reference_vulkan: Vulkan,
    measures_match_the_reference_gl: Gl);

/// The four members of `models()` and a fifth of the first one's shape (so that on a
/// GPU the first and the fifth run as one stack).
fn five_models() -> Vec<Model> {
    let mut all = models();
    all.push(Model::random(&[IN, 12, CLASSES], &[Relu, Softmax], 95).unwrap());
    all
}

/// A member failing under a quorum: the measures are over the members that answered,
/// with their weights renormalised — on a GPU the failed member's stack sibling still
/// counts — and the members' outputs are returned when asked.
fn a_quorum_measures_the_members_present(place: Placement, label: &str) {
    let weights = [0.4f32, 0.1, 0.3, 0.2, 0.25];
    let mut g = Graph::builder(IN).aggregate(Aggregate::WeightedMean(weights.to_vec()));
    for (i, m) in five_models().into_iter().enumerate() {
        g = g.member(format!("m{i}"), m, place.clone());
    }
    for (failed, members_too) in [(0, true), (2, false)] {
        let plan = FaultPlan::new().on_run(format!("m{failed}"), 0, Fault::Fail);
        let graph = g.clone().build().unwrap();
        let session = Session::with_options(graph, SessionOptions::default().faults(plan)).unwrap();
        let x = input(9, IN, 3);
        let out = session
            .run(
                &x,
                &RunOptions::default()
                    .uncertainty(true)
                    .member_outputs(members_too)
                    .quorum(QuorumPolicy::Quorum(4)),
            )
            .unwrap();
        assert!(!out.is_complete(), "{label}");
        let present: Vec<usize> = (0..5).filter(|&i| i != failed).collect();
        assert_eq!(
            out.members[present[0]].output.is_some(),
            members_too,
            "{label}: member outputs only when asked for"
        );
        let refs: Vec<Vec<f64>> = present
            .iter()
            .map(|&i| reference_forward(&five_models()[i], &x))
            .collect();
        let w: Vec<f64> = present.iter().map(|&i| f64::from(weights[i])).collect();
        check(
            &format!("{label}: quorum of 4 without m{failed}"),
            &out,
            &reference_measures(&refs, &w, 9, CLASSES),
        );
    }
}

placement_tests!(a_quorum_measures_the_members_present;
    a_quorum_measures_the_members_present_cpu: Cpu,
    a_quorum_measures_the_members_present_vulkan: Vulkan,
    a_quorum_measures_the_members_present_gl: Gl);

/// One member: no mutual information, no disagreement, no variance; identical
/// members: no mutual information either, and the entropy of their output.
fn one_member_and_identical_members(place: Placement, label: &str) {
    let m = models().remove(0);
    let x = input(8, IN, 4);
    let y = reference_forward(&m, &x);
    for copies in [1, 3] {
        let mut g = Graph::builder(IN);
        for i in 0..copies {
            g = g.member(format!("m{i}"), m.clone(), place.clone());
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        let out = session
            .run(&x, &RunOptions::default().uncertainty(true))
            .unwrap();
        let u = out.uncertainty.as_ref().unwrap();
        for r in 0..8 {
            assert!(
                u.mutual_information[r].abs() < 1e-5,
                "{label} {copies}: {u:?}"
            );
            assert_eq!(u.disagreement[r], 0.0, "{label} {copies}");
        }
        assert!(
            u.variance.as_slice().iter().all(|v| v.abs() < 1e-6),
            "{label} {copies}: {u:?}"
        );
        let refs = vec![y.clone(); copies];
        check(
            &format!("{label}: {copies} identical"),
            &out,
            &reference_measures(&refs, &vec![1.0; copies], 8, CLASSES),
        );
    }
}

placement_tests!(one_member_and_identical_members;
    one_member_and_identical_members_cpu: Cpu,
    one_member_and_identical_members_vulkan: Vulkan,
    one_member_and_identical_members_gl: Gl);

/// The same measures whichever way the members run: in chunks (a small
/// `max_buffer_bytes`), through `Session::run_device` and through a `Pipeline`, and
/// with the members spread over the host and `place`, two of them split across both.
fn every_way_to_run_gives_the_same_measures(place: Placement, label: &str) {
    let weights = [0.4f32, 0.1, 0.3, 0.2, 0.25];
    let x = input(13, IN, 17);
    let refs: Vec<Vec<f64>> = five_models()
        .iter()
        .map(|m| reference_forward(m, &x))
        .collect();
    let w: Vec<f64> = weights.iter().map(|&v| f64::from(v)).collect();
    let want = reference_measures(&refs, &w, 13, CLASSES);
    let aggregate = Aggregate::WeightedMean(weights.to_vec());
    let mut whole = Graph::builder(IN).aggregate(aggregate.clone());
    for (i, m) in five_models().into_iter().enumerate() {
        whole = whole.member(format!("m{i}"), m, place.clone());
    }
    let mut spread = Graph::builder(IN).aggregate(aggregate);
    for (i, m) in five_models().into_iter().enumerate() {
        spread = match i {
            0 => spread.member("m0", m, Placement::Cpu),
            2 => spread.split_member("m2", m, Split::columns(vec![place.clone(), Placement::Cpu])),
            3 => spread.split_member(
                "m3",
                m,
                Split::layers(vec![Placement::Cpu, place.clone()]).micro_batches(2),
            ),
            _ => spread.member(format!("m{i}"), m, place.clone()),
        };
    }
    let asked = RunOptions::default().uncertainty(true);
    // 512 bytes: chunks of 7 rows on a GPU.
    let small = SessionOptions::default().max_buffer_bytes(512);
    for (name, graph, options) in [
        ("chunks", whole.clone(), small),
        ("spread", spread, SessionOptions::default()),
        ("whole", whole, SessionOptions::default()),
    ] {
        let session = Session::with_options(graph.clone().build().unwrap(), options.clone())
            .unwrap_or_else(|e| panic!("{label} {name}: {e}"));
        let out = session.run(&x, &asked).unwrap();
        check(&format!("{label} {name}: run"), &out, &want);
        let resident = session.upload(&x).unwrap();
        let out = session.run_device(&resident, &asked).unwrap();
        check_measures(
            &format!("{label} {name}: run_device"),
            out.uncertainty.as_ref(),
            &want,
        );
        let plain = session
            .run_device(&resident, &RunOptions::default())
            .unwrap();
        assert!(plain.uncertainty.is_none(), "{label} {name}: not asked");
        let pipeline = Pipeline::new(
            graph.build().unwrap(),
            PipelineOptions::default()
                .uncertainty(true)
                .session(options),
        )
        .unwrap();
        for _ in 0..2 {
            pipeline.send(&x).unwrap();
        }
        for i in 0..2 {
            let out = pipeline.recv().expect("a result per input");
            assert!(out.aggregate.is_ok(), "{label} {name}: {:?}", out.aggregate);
            check_measures(
                &format!("{label} {name}: pipeline input {i}"),
                out.uncertainty.as_ref(),
                &want,
            );
        }
    }
}

placement_tests!(every_way_to_run_gives_the_same_measures;
    every_way_to_run_gives_the_same_measures_cpu: Cpu,
    every_way_to_run_gives_the_same_measures_vulkan: Vulkan,
    every_way_to_run_gives_the_same_measures_gl: Gl);

fn digits(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data/digits")
        .join(file)
}

/// The digits members (scikit-learn's MLPs) on the 360 test digits: the measures from
/// scikit-learn's own probabilities.
fn digits_measures(place: Placement, label: &str) {
    let manifest = Manifest::load(digits("digits.toml")).unwrap();
    let x = read_matrix(digits("x_test.npy")).unwrap();
    let file = std::fs::File::open(digits("sklearn_proba.npy")).unwrap();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    let all: Vec<f64> = npy
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let per = 360 * 10;
    let members: Vec<Vec<f64>> = all.chunks(per).map(<[f64]>::to_vec).collect();
    let session = Session::new(manifest.graph(Some(&place)).unwrap()).unwrap();
    let out = session
        .run(&x, &RunOptions::default().uncertainty(true))
        .unwrap();
    check(
        &format!("{label}: digits"),
        &out,
        &reference_measures(&members, &[1.0; 5], 360, 10),
    );
    // Some digits split the members and some do not.
    let u = out.uncertainty.unwrap();
    assert!(u.disagreement.iter().any(|&d| d > 0.0), "{label}");
    assert!(u.disagreement.contains(&0.0), "{label}");
}

placement_tests!(digits_measures;
    digits_measures_cpu: Cpu,
    digits_measures_vulkan: Vulkan,
    digits_measures_gl: Gl);

/// `predict --uncertainty-output U --variance-output V` on the golden members: U is
/// `[rows, 4]`, V `[rows, classes]`, against the reference over the golden member
/// outputs (the weighted mean's weights).
fn predict_writes_the_uncertainty_of_the_golden_members(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (y, u, v) = (
        dir.path().join("y.npy"),
        dir.path().join("u.npy"),
        dir.path().join("v.npy"),
    );
    let manifest = golden("weighted_mean.toml");
    let out = cli(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--input",
        golden("x_f64.npy").to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--uncertainty-output",
        u.to_str().unwrap(),
        "--variance-output",
        v.to_str().unwrap(),
        "--device",
        device,
    ]);
    assert!(out.status.success(), "{device}: {}", stderr(&out));
    let (shape, all) = read_f64(&golden("expected_members.npy"));
    let (k, rows, cols) = (shape[0], shape[1], shape[2]);
    let members: Vec<Vec<f64>> = all.chunks(rows * cols).map(<[f64]>::to_vec).collect();
    let weights: Vec<f64> = match Manifest::load(&manifest).unwrap().aggregate {
        Aggregate::WeightedMean(w) => w.iter().map(|&v| f64::from(v)).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(weights.len(), k);
    let want = reference_measures(&members, &weights, rows, cols);
    let got_u: Tensor = read_matrix(&u).unwrap();
    assert_eq!(got_u.shape(), &[rows, 4]);
    assert_close_tol(
        &format!("{device}: --uncertainty-output"),
        got_u.as_slice(),
        &want.summary,
        ABS,
        REL,
    );
    let got_v = read_matrix(&v).unwrap();
    assert_eq!(got_v.shape(), &[rows, cols]);
    assert_close_tol(
        &format!("{device}: --variance-output"),
        got_v.as_slice(),
        &want.variance,
        ABS,
        REL,
    );
}

#[test]
fn predict_writes_the_uncertainty_of_the_golden_members_cpu() {
    predict_writes_the_uncertainty_of_the_golden_members("cpu");
}

fn predict_on_adapter(adapter: &AdapterInfo) {
    predict_writes_the_uncertainty_of_the_golden_members(&format!("adapter:{}", adapter.index));
}

placement_tests!(adapters predict_on_adapter;
    predict_writes_the_uncertainty_of_the_golden_members_vulkan: Vulkan,
    predict_writes_the_uncertainty_of_the_golden_members_gl: Gl);

/// `bench --uncertainty`: the plain mean and the run with every uncertainty output,
/// both timed, the second's ratio to the first; gemm refused by name.
#[test]
fn bench_times_the_uncertainty_against_the_plain_mean() {
    let out = cli(&[
        "bench",
        "--workload",
        "E1",
        "--batch",
        "3",
        "--device",
        "cpu",
        "--uncertainty",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let variants: Vec<&str> = lines.iter().filter_map(|v| v["variant"].as_str()).collect();
    assert_eq!(variants, ["mean", "uncertainty"]);
    for v in &lines {
        assert_eq!(v["mode"], "uncertainty", "{v}");
        assert_eq!(v["runs"], 2, "{v}");
        assert!(v["p50_ms"].as_f64().is_some_and(|t| t > 0.0), "{v}");
        assert!(v["ratio_to_mean"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    }
    assert_eq!(lines[0]["ratio_to_mean"], 1.0);
    let out = cli(&[
        "bench",
        "--workload",
        "gemm",
        "--batch",
        "4",
        "--device",
        "cpu",
        "--uncertainty",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gemm has no classes"),
        "{}",
        stderr(&out)
    );
}
