//! Stacking (`Aggregate::Stack`): the blender on the members' outputs side by side
//! against an f64 reference on every placement; the quorum fallback to the mean of
//! the members present; blenders of the wrong widths refused from the Rust API and
//! from a manifest; `train-blender` on the digits members against scikit-learn's
//! `LogisticRegression` (fixture by `tests/fixtures/make_blender.py`); the stack's
//! held-out log-loss and accuracy against the plain mean's.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    assert_close_tol, cli, input, placement_tests, read_f64, reference_forward,
    reference_forward64, reference_mean, reference_stack, stderr,
};
use wgpu_ensemble::io::{load_model, read_matrix, save_model, LoadOptions, Manifest};
use wgpu_ensemble::train::{fit_blender, read_labels};
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, Fault, FaultPlan, Graph, Model, Pipeline, PipelineOptions,
    Placement, QuorumPolicy, RunOptions, Session, SessionOptions, Tensor,
};

/// Tolerances of the stack: the members' f32 outputs through an f32 blender.
const ABS: f64 = 2e-5;
const REL: f64 = 1e-4;

const IN: usize = 6;
const CLASSES: usize = 4;

fn members() -> Vec<Model> {
    vec![
        Model::random(&[IN, 10, CLASSES], &[Relu, Softmax], 41).unwrap(),
        Model::random(&[IN, 7, CLASSES], &[Tanh, Softmax], 42).unwrap(),
        Model::random(&[IN, CLASSES], &[Sigmoid], 43).unwrap(),
    ]
}

fn blenders() -> Vec<Model> {
    vec![
        Model::random(&[3 * CLASSES, CLASSES], &[Softmax], 51).unwrap(),
        Model::random(&[3 * CLASSES, 8, CLASSES], &[Tanh, Identity], 52).unwrap(),
    ]
}

fn graph(blender: Model, place: &Placement) -> wgpu_ensemble::Result<Graph> {
    let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
        blender: Arc::new(blender),
    });
    for (i, m) in members().into_iter().enumerate() {
        g = g.member(format!("m{i}"), m, place.clone());
    }
    g.build()
}

/// Two blenders (one layer with a softmax; two layers ending in identity) at 1 and 13
/// rows: the aggregate is the blender's output, `stacked` says so, the members'
/// outputs come back only when asked; `run_device` answers the same.
fn stack_matches_the_reference(place: Placement, label: &str) {
    for (b, blender) in blenders().into_iter().enumerate() {
        let session = Session::new(graph(blender.clone(), &place).unwrap()).unwrap();
        for rows in [1, 13] {
            let x = input(rows, IN, 100 + rows as u64);
            let what = format!("{label}: blender {b} at {rows} rows");
            let out = session.run(&x, &RunOptions::default()).unwrap();
            assert_eq!(out.stacked, Some(true), "{what}");
            assert!(out.members.iter().all(|m| m.output.is_none()), "{what}");
            assert_eq!(out.aggregate.shape(), &[rows, CLASSES], "{what}");
            let want = reference_stack(&members(), &blender, &x, CLASSES);
            assert_close_tol(&what, out.aggregate.as_slice(), &want, ABS, REL);
            // The mean would be another answer: the test tells them apart.
            let outs: Vec<Vec<f64>> = members().iter().map(|m| reference_forward(m, &x)).collect();
            let mean = reference_mean(&outs, &[1.0; 3]);
            assert!(
                want.iter().zip(&mean).any(|(a, b)| (a - b).abs() > 1e-2),
                "{what}: the blender's output is not the mean's"
            );
            let asked = session
                .run(&x, &RunOptions::default().member_outputs(true))
                .unwrap();
            assert!(asked.members.iter().all(|m| m.output.is_some()), "{what}");
            assert_close_tol(&what, asked.aggregate.as_slice(), &want, ABS, REL);
            let resident = session.upload(&x).unwrap();
            let device = session
                .run_device(&resident, &RunOptions::default())
                .unwrap();
            assert_eq!(device.stacked, Some(true), "{what}: run_device");
            assert_close_tol(
                &format!("{what}: run_device"),
                device.aggregate.to_host().unwrap().as_slice(),
                &want,
                ABS,
                REL,
            );
        }
    }
}

placement_tests!(stack_matches_the_reference;
    stack_matches_the_reference_cpu: Cpu,
    stack_matches_the_reference_vulkan: Vulkan,
    stack_matches_the_reference_gl: Gl);

/// Each device applies its members' columns of the blender's first layer where their
/// outputs are and the aggregate node adds the devices' sums: the answer is the
/// reference's with two members of one shape (one GPU stack), a member on the host, a
/// member split by layers across the host and `place`, in chunks (a small
/// `max_buffer_bytes`) and not, both blenders.
fn a_stack_across_devices_and_chunks(place: Placement, label: &str) {
    let models = [
        Model::random(&[IN, 10, CLASSES], &[Relu, Softmax], 61).unwrap(),
        Model::random(&[IN, 10, CLASSES], &[Relu, Softmax], 62).unwrap(),
        Model::random(&[IN, 7, CLASSES], &[Tanh, Softmax], 63).unwrap(),
        Model::random(&[IN, 9, CLASSES], &[Gelu, Softmax], 64).unwrap(),
    ];
    let blenders = [
        Model::random(&[4 * CLASSES, CLASSES], &[Softmax], 65).unwrap(),
        Model::random(&[4 * CLASSES, 70, CLASSES], &[Tanh, Softmax], 66).unwrap(),
    ];
    let x = input(13, IN, 9);
    for (b, blender) in blenders.into_iter().enumerate() {
        let want = reference_stack(&models, &blender, &x, CLASSES);
        let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
            blender: Arc::new(blender),
        });
        for (i, m) in models.iter().enumerate() {
            let name = format!("m{i}");
            g = match i {
                2 => g.member(name, m.clone(), Placement::Cpu),
                3 => g.split_member(
                    name,
                    m.clone(),
                    wgpu_ensemble::Split::layers(vec![Placement::Cpu, place.clone()]),
                ),
                _ => g.member(name, m.clone(), place.clone()),
            };
        }
        let graph = g.build().unwrap();
        // 2.5 KiB: chunks of 9 rows on a GPU (a row of the blender's 70 sums is the widest).
        for options in [
            SessionOptions::default(),
            SessionOptions::default().max_buffer_bytes(2560),
        ] {
            let what = format!("{label}: blender {b} {options:?}");
            let session = Session::with_options(graph.clone(), options)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let out = session.run(&x, &RunOptions::default()).unwrap();
            assert_eq!(out.stacked, Some(true), "{what}");
            assert!(out.members.iter().all(|m| m.output.is_none()), "{what}");
            assert_close_tol(&what, out.aggregate.as_slice(), &want, ABS, REL);
        }
    }
}

placement_tests!(a_stack_across_devices_and_chunks;
    a_stack_across_devices_and_chunks_cpu: Cpu,
    a_stack_across_devices_and_chunks_vulkan: Vulkan,
    a_stack_across_devices_and_chunks_gl: Gl);

/// A member failing under a quorum: the blender cannot be applied, the aggregate is
/// the equal-weight mean of the two present and `stacked` is `Some(false)`; the next
/// run, complete, is stacked again; without a quorum the failure is the run's error.
#[test]
fn a_quorum_falls_back_to_the_mean_of_the_members_present() {
    let blender = blenders().remove(0);
    let plan = FaultPlan::new()
        .on_run("m1", 0, Fault::Fail)
        .on_run("m1", 2, Fault::Fail);
    let session = Session::with_options(
        graph(blender.clone(), &Placement::Cpu).unwrap(),
        SessionOptions::default().faults(plan),
    )
    .unwrap();
    let x = input(9, IN, 7);
    let quorum = RunOptions::default().quorum(QuorumPolicy::Quorum(2));
    let out = session.run(&x, &quorum).unwrap();
    assert!(!out.is_complete());
    assert_eq!(out.stacked, Some(false));
    let models = members();
    let present: Vec<Vec<f64>> = [0, 2]
        .iter()
        .map(|&i| reference_forward(&models[i], &x))
        .collect();
    assert_close_tol(
        "quorum of 2: the mean of m0 and m2",
        out.aggregate.as_slice(),
        &reference_mean(&present, &[1.0, 1.0]),
        ABS,
        REL,
    );
    let out = session.run(&x, &quorum).unwrap();
    assert_eq!(out.stacked, Some(true));
    assert_close_tol(
        "complete run",
        out.aggregate.as_slice(),
        &reference_stack(&members(), &blender, &x, CLASSES),
        ABS,
        REL,
    );
    let err = session.run(&x, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InjectedFault { .. }), "{err}");
}

/// Blenders of the wrong input or output width are refused when the graph is built,
/// naming what was expected and what was given; a pipeline refuses a stack.
#[test]
fn blenders_of_the_wrong_width_are_refused() {
    let wide = Model::random(&[3 * CLASSES + 1, CLASSES], &[Softmax], 1).unwrap();
    let err = graph(wide, &Placement::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlenderWidth {
                what: "input width",
                expected: 12,
                got: 13,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("13") && text.contains("expected 12") && text.contains("3 members"),
        "{text}"
    );
    let narrow = Model::random(&[3 * CLASSES, CLASSES - 1], &[Softmax], 2).unwrap();
    let err = graph(narrow, &Placement::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlenderWidth {
                what: "output width",
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let graph = graph(blenders().remove(0), &Placement::Cpu).unwrap();
    let err = Pipeline::new(graph, PipelineOptions::default())
        .err()
        .expect("a pipeline refuses a stack");
    assert!(matches!(err, Error::StackUnsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("Session::run"), "{err}");
}

/// Writes the members and `blender` into `dir` with a stack manifest naming them.
fn stack_files(dir: &Path, blender: &Model) -> PathBuf {
    let mut toml =
        String::from("[aggregate]\nkind = \"stack\"\nblender = \"blender.safetensors\"\n");
    for (i, m) in members().iter().enumerate() {
        save_model(m, dir.join(format!("m{i}.safetensors"))).unwrap();
        toml.push_str(&format!(
            "\n[[member]]\nname = \"m{i}\"\nfile = \"m{i}.safetensors\"\ndevice = \"cpu\"\n"
        ));
    }
    save_model(blender, dir.join("blender.safetensors")).unwrap();
    let path = dir.join("stack.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A manifest's stack: the blender read relative to the manifest runs as from the
/// Rust API; a blender file of the wrong widths is an error naming the manifest, the
/// blender and both widths; `blender` and `weights` where they do not belong are
/// errors naming the key.
#[test]
fn a_manifest_stack_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let blender = blenders().remove(1);
    let path = stack_files(dir.path(), &blender);
    let manifest = Manifest::load(&path).unwrap();
    assert_eq!(
        manifest.blender,
        Some(dir.path().join("blender.safetensors"))
    );
    let session = Session::new(manifest.graph(None).unwrap()).unwrap();
    let x = input(5, IN, 3);
    let out = session.run(&x, &RunOptions::default()).unwrap();
    assert_eq!(out.stacked, Some(true));
    assert_close_tol(
        "manifest stack",
        out.aggregate.as_slice(),
        &reference_stack(&members(), &blender, &x, CLASSES),
        ABS,
        REL,
    );

    for (bad, widths) in [
        (
            Model::random(&[3 * CLASSES - 2, CLASSES], &[Softmax], 3).unwrap(),
            ["input width is 10", "expected 12"],
        ),
        (
            Model::random(&[3 * CLASSES, 2 * CLASSES], &[Softmax], 4).unwrap(),
            ["output width is 8", "expected 4"],
        ),
    ] {
        save_model(&bad, dir.path().join("blender.safetensors")).unwrap();
        let err = Manifest::load(&path).unwrap().graph(None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Manifest { .. }), "{err:?}");
        for part in ["stack.toml", "blender.safetensors", widths[0], widths[1]] {
            assert!(text.contains(part), "{text}: lacks {part}");
        }
        // The command says the same and writes nothing.
        let output = dir.path().join("out.npy");
        let x_path = dir.path().join("x.npy");
        wgpu_ensemble::io::write_tensor(&x_path, &x).unwrap();
        let run = cli(&[
            "predict",
            "--manifest",
            path.to_str().unwrap(),
            "--input",
            x_path.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(!run.status.success());
        assert!(stderr(&run).contains(widths[0]), "{}", stderr(&run));
        assert!(!output.exists());
    }

    let member = "\n[[member]]\nname = \"m0\"\nfile = \"m0.safetensors\"\n";
    for (aggregate, says) in [
        ("kind = \"stack\"", "needs `blender`"),
        (
            "kind = \"stack\"\nblender = \"b.safetensors\"\nweights = [1.0]",
            "takes no `weights`",
        ),
        (
            "kind = \"mean\"\nblender = \"b.safetensors\"",
            "`blender` is for kind \"stack\" only",
        ),
        ("kind = \"stack\"\nblender = \"\"", "`blender` is empty"),
    ] {
        let text = format!("[aggregate]\n{aggregate}\n{member}");
        let err = Manifest::parse(Path::new("m.toml"), &text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("m.toml") && message.contains(says),
            "{aggregate}: {message}"
        );
    }
}

/// `predict` with a member failed under a quorum says on stderr that the blender was
/// not applied.
#[test]
fn predict_says_when_the_blender_was_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = stack_files(dir.path(), &blenders().remove(0));
    let x_path = dir.path().join("x.npy");
    wgpu_ensemble::io::write_tensor(&x_path, &input(4, IN, 9)).unwrap();
    let output = dir.path().join("out.npy");
    let args = [
        "predict",
        "--manifest",
        path.to_str().unwrap(),
        "--input",
        x_path.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    let run = cli(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!stderr(&run).contains("blender"), "{}", stderr(&run));
    let mut faulty = args.to_vec();
    faulty.extend(["--quorum", "2", "--fault", "m2=fail"]);
    let run = cli(&faulty);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("blender was not applied"),
        "{}",
        stderr(&run)
    );
}

fn digits(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data/digits")
        .join(file)
}

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/blender")
        .join(file)
}

/// scikit-learn's members' probabilities on the 360 test digits, side by side in
/// member order: `[360, 50]`, the features the fixture's blender was fitted on.
fn sklearn_features() -> Tensor {
    let file = std::fs::File::open(digits("sklearn_proba.npy")).unwrap();
    let all: Vec<f32> = npyz::NpyFile::new(std::io::BufReader::new(file))
        .unwrap()
        .into_vec::<f32>()
        .unwrap();
    let members: Vec<&[f32]> = all.chunks(360 * 10).collect();
    let mut stacked = Vec::new();
    for r in 0..360 {
        for m in &members {
            stacked.extend_from_slice(&m[r * 10..(r + 1) * 10]);
        }
    }
    Tensor::matrix(360, 50, stacked).unwrap()
}

/// The library's fit on exactly the features scikit-learn saw (its members'
/// probabilities, first 180 test rows): the probabilities on all 360 rows are
/// scikit-learn's converged `LogisticRegression(C=1.0)`'s.
#[test]
fn fit_blender_reproduces_scikit_learn() {
    let features = sklearn_features();
    let labels = read_labels(&fixture("y_fit.npy")).unwrap();
    let fit_rows = Tensor::matrix(180, 50, features.as_slice()[..180 * 50].to_vec()).unwrap();
    let fit = fit_blender(&fit_rows, &labels, 10, 1.0).unwrap();
    assert!(fit.converged, "{fit:?}");
    let (shape, want) = read_f64(&fixture("proba.npy"));
    assert_eq!(shape, [360, 10]);
    let x: Vec<f64> = features.as_slice().iter().map(|&v| f64::from(v)).collect();
    let got = reference_forward64(&fit.model, &x, 360);
    let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
    assert_close_tol("blender vs scikit-learn", &got, &want, 1e-5, 1e-4);
}

fn log_loss(p: &[f32], labels: &[i64]) -> f64 {
    let n = labels.len() as f64;
    labels
        .iter()
        .enumerate()
        .map(|(r, &y)| -f64::from(p[r * 10 + y as usize]).ln())
        .sum::<f64>()
        / n
}

fn accuracy(p: &[f32], labels: &[i64]) -> f64 {
    let t = Tensor::matrix(labels.len(), 10, p.to_vec()).unwrap();
    let hits = t
        .argmax_rows()
        .unwrap()
        .iter()
        .zip(labels)
        .filter(|(a, &y)| **a as i64 == y)
        .count();
    hits as f64 / labels.len() as f64
}

/// `train-blender` on the digits members with `--x x_fit.npy`, `--y y` (a fixture), the
/// CPU, `--out out` and `extra` flags.
fn train_blender(y: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (manifest, x) = (digits("digits.toml"), fixture("x_fit.npy"));
    let mut args = vec![
        "train-blender",
        "--manifest",
        manifest.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// A session of the digits members on the CPU stacked under `blender`.
fn digits_stack(blender: Model) -> Session {
    let mean_graph = Manifest::load(digits("digits.toml"))
        .unwrap()
        .graph(Some(&Placement::Cpu))
        .unwrap();
    let mut g = Graph::builder(64).aggregate(Aggregate::Stack {
        blender: Arc::new(blender),
    });
    for m in mean_graph.members() {
        g = g.member(m.name(), m.model().clone(), Placement::Cpu);
    }
    Session::new(g.build().unwrap()).unwrap()
}

/// `train-blender` on the digits members and the first 180 test digits: the saved
/// blender, as a stack on all 360, gives scikit-learn's probabilities (the members
/// here are this crate's f32 forward passes, scikit-learn's features its own);
/// the held-out log-loss and accuracy of the stack and the plain mean are the
/// fixture's. On these 180 held-out rows the stack does NOT beat the mean's log-loss
/// (0.162 against 0.098; docs/GUIDE.md's "Stacking" says why): the test pins both
/// numbers so that a change shows, and that the stack's accuracy is not below the
/// mean's.
#[test]
fn train_blender_on_the_digits_members() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blender.safetensors");
    let run = train_blender(&fixture("y_fit.npy"), &out, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("L-BFGS"), "{}", stderr(&run));
    let blender = load_model(&out, &LoadOptions::default()).unwrap();
    assert_eq!(blender.layers().len(), 1);
    assert_eq!(blender.layers()[0].weight().shape(), &[10, 50]);
    assert_eq!(blender.layers()[0].activation(), Softmax);

    let stack = digits_stack(blender);
    let mean = Session::new(
        Manifest::load(digits("digits.toml"))
            .unwrap()
            .graph(Some(&Placement::Cpu))
            .unwrap(),
    )
    .unwrap();
    let x = read_matrix(digits("x_test.npy")).unwrap();
    let stacked = stack.run(&x, &RunOptions::default()).unwrap();
    assert_eq!(stacked.stacked, Some(true));
    let (_, want) = read_f64(&fixture("proba.npy"));
    assert_close_tol(
        "train-blender stack vs scikit-learn",
        stacked.aggregate.as_slice(),
        &want,
        1e-4,
        1e-3,
    );

    let held_x = read_matrix(fixture("x_held_out.npy")).unwrap();
    let held_y = read_labels(&fixture("y_held_out.npy")).unwrap();
    let s = stack
        .run(&held_x, &RunOptions::default())
        .unwrap()
        .aggregate;
    let m = mean.run(&held_x, &RunOptions::default()).unwrap().aggregate;
    let (stack_loss, mean_loss) = (
        log_loss(s.as_slice(), &held_y),
        log_loss(m.as_slice(), &held_y),
    );
    let (stack_acc, mean_acc) = (
        accuracy(s.as_slice(), &held_y),
        accuracy(m.as_slice(), &held_y),
    );
    println!(
        "digits, 180 held-out rows: log-loss stack {stack_loss:.4}, mean {mean_loss:.4}; accuracy stack {stack_acc:.4}, mean {mean_acc:.4}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("summary.json")).unwrap()).unwrap();
    for (what, got, key) in [
        ("stack log-loss", stack_loss, "held_out_log_loss_stack"),
        ("mean log-loss", mean_loss, "held_out_log_loss_mean"),
        ("stack accuracy", stack_acc, "held_out_accuracy_stack"),
        ("mean accuracy", mean_acc, "held_out_accuracy_mean"),
    ] {
        let want = summary[key].as_f64().unwrap();
        assert!(
            approx::relative_eq!(got, want, epsilon = 1e-4, max_relative = 1e-3),
            "{what}: got {got}, fixture {want}"
        );
    }
    assert!(
        stack_acc >= mean_acc,
        "accuracy: stack {stack_acc}, mean {mean_acc}"
    );

    // Rows that do not match the labels: a clear error, nothing written.
    let bad = dir.path().join("bad.safetensors");
    let run = train_blender(&digits("y_test.npy"), &bad, &[]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("x has 180 rows but y has 360"),
        "{}",
        stderr(&run)
    );
    assert!(!bad.exists());
}

/// `train-blender --optimizer adam`: the training module's optimizer on the same
/// objective (weight decay 1 / (C × rows) on the weights) comes near the L-BFGS fit,
/// scikit-learn's probabilities, on the 360 test digits; `--hidden 16` trains a
/// two-layer blender that runs as a stack; flags that cannot be honoured are errors
/// naming them.
#[test]
fn train_blender_with_a_training_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let x = read_matrix(digits("x_test.npy")).unwrap();
    let (_, want) = read_f64(&fixture("proba.npy"));
    let y = fixture("y_fit.npy");
    let train = |out: &Path, extra: &[&str]| train_blender(&y, out, extra);

    let adam = dir.path().join("adam.safetensors");
    let run = train(&adam, &["--optimizer", "adam", "--epochs", "300"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("trained with adam"),
        "{}",
        stderr(&run)
    );
    let blender = load_model(&adam, &LoadOptions::default()).unwrap();
    assert_eq!(blender.layers().len(), 1);
    assert_eq!(blender.layers()[0].weight().shape(), &[10, 50]);
    let got = digits_stack(blender)
        .run(&x, &RunOptions::default())
        .unwrap();
    // First-order steps stop near the optimum L-BFGS reaches, not on it (1.2e-2 at
    // most here).
    assert_close_tol(
        "adam's blender vs scikit-learn's",
        got.aggregate.as_slice(),
        &want,
        2e-2,
        0.0,
    );

    let deep = dir.path().join("deep.safetensors");
    let run = train(
        &deep,
        &["--optimizer", "adamw", "--hidden", "16", "--epochs", "100"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let blender = load_model(&deep, &LoadOptions::default()).unwrap();
    let shapes: Vec<&[usize]> = blender
        .layers()
        .iter()
        .map(|l| l.weight().shape())
        .collect();
    assert_eq!(shapes, [&[16, 50][..], &[10, 16][..]]);
    assert_eq!(blender.layers()[1].activation(), Softmax);
    let held_x = read_matrix(fixture("x_held_out.npy")).unwrap();
    let held_y = read_labels(&fixture("y_held_out.npy")).unwrap();
    let out = digits_stack(blender)
        .run(&held_x, &RunOptions::default())
        .unwrap();
    assert_eq!(out.stacked, Some(true));
    let acc = accuracy(out.aggregate.as_slice(), &held_y);
    assert!(acc > 0.9, "a two-layer blender's held-out accuracy {acc}");

    for (extra, flag) in [
        (&["--hidden", "8"][..], "--hidden"),
        (&["--optimizer", "rmsprop"][..], "--optimizer"),
        (&["--optimizer", "adam", "--c", "0"][..], "--c"),
        // A decay 1 / (C × rows) beyond f32 (it was an error naming weight_decay).
        (&["--optimizer", "adam", "--c", "1e-300"][..], "--c"),
    ] {
        let bad = dir.path().join("bad.safetensors");
        let run = train(&bad, extra);
        assert!(!run.status.success(), "{extra:?} succeeded");
        assert!(stderr(&run).contains(flag), "{extra:?}: {}", stderr(&run));
        assert!(!bad.exists(), "{extra:?} wrote a blender");
    }
}

/// `fit_blender` refuses a problem beyond `MAX_BLENDER_PARAMETERS` (classes ×
/// (features + 1)) with an error naming both, before it allocates L-BFGS's vectors;
/// a number of classes whose product overflows is refused the same way.
#[test]
fn a_blender_fit_too_large_is_refused_before_it_allocates() {
    use wgpu_ensemble::train::MAX_BLENDER_PARAMETERS;
    let features = MAX_BLENDER_PARAMETERS / 2;
    let x = Tensor::matrix(1, features, vec![0.5; features]).unwrap();
    for classes in [2, usize::MAX] {
        match fit_blender(&x, &[1], classes, 1.0) {
            Err(e @ Error::TrainData { key: "x", .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("{classes} classes")) && text.contains("2^22"),
                    "{text}"
                );
            }
            other => panic!(
                "{classes} classes × {features} features: {:?}",
                other.map(|f| f.iterations)
            ),
        }
    }
}
