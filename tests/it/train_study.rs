//! Training studies (`train::study`): study files refused with the key named, random
//! search seeded, the grid complete, a digits study reaching scikit-learn's accuracy
//! with its best trial and its exported ensemble, resume, failed trials recorded.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use wgpu_ensemble::io::{read_matrix, write_tensor, Manifest};
use wgpu_ensemble::train::study::{Devices, Study, StudyEvent, TrialStatus};
use wgpu_ensemble::{Error, Placement, RunOptions, Session, Tensor};

/// The digits data's folder (the training and test splits of
/// `examples/data/digits/train_digits.py`).
pub fn digits() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits")
}

/// A classification study of the digits training split with `search` and `space`.
pub fn digits_study(search: &str, space: &str) -> String {
    format!(
        "[data]\nx = \"x_train.npy\"\ny = \"y_train.npy\"\ntask = \"classification\"\n\
         validation_fraction = 0.2\nstandardize = true\n\n[search]\n{search}\n\n[space]\n{space}\n"
    )
}

/// The test split's labels.
pub fn test_labels() -> Vec<usize> {
    let file = std::fs::File::open(digits().join("y_test.npy")).unwrap();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    npy.into_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

/// The accuracy of class scores `[rows, classes]` on the test labels.
pub fn accuracy(scores: &Tensor, labels: &[usize]) -> f64 {
    let predicted = scores.argmax_rows().unwrap();
    let right = predicted.iter().zip(labels).filter(|(p, y)| p == y).count();
    right as f64 / labels.len() as f64
}

fn no_progress(_: &StudyEvent) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// The key of a study error, or a panic naming what came instead.
fn key_of(result: wgpu_ensemble::Result<Study>) -> String {
    match result {
        Err(Error::Study { key, message, .. }) => {
            assert!(!message.is_empty());
            key
        }
        Err(other) => panic!("expected Error::Study, got {other}"),
        Ok(_) => panic!("expected Error::Study, the study parsed"),
    }
}

/// Writes an int64 `.npy` of `values`.
fn write_labels(path: &Path, values: &[i64]) {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[values.len() as u64])
        .writer(&mut bytes)
        .begin_nd()
        .unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn study_errors_name_the_key() {
    let base = digits();
    let ok_search = "trials = 4\nseed = 1";
    let ok_space = "hidden = [[8]]\nepochs = 1";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key in [space]",
            digits_study(ok_search, "hiddn = [[8]]"),
            "space.hiddn",
        ),
        (
            "unknown key in [data]",
            digits_study(ok_search, ok_space).replace("standardize", "standardise"),
            "data.standardise",
        ),
        (
            "unknown key in [search]",
            digits_study("trials = 4\nseeds = 1", ok_space),
            "search.seeds",
        ),
        (
            "unknown section",
            format!("{}\n[bogus]\na = 1\n", digits_study(ok_search, ok_space)),
            "bogus",
        ),
        (
            "a missing key",
            digits_study(ok_search, ok_space).replace("task = \"classification\"\n", ""),
            "data.task",
        ),
        ("no [data]", format!("[search]\n{ok_search}\n"), "data"),
        (
            "empty space list",
            digits_study(ok_search, "activation = []"),
            "space.activation",
        ),
        (
            "log_uniform with low >= high",
            digits_study(ok_search, "learning_rate = { log_uniform = [0.1, 0.01] }"),
            "space.learning_rate",
        ),
        (
            "log_uniform with a bound <= 0",
            digits_study(ok_search, "learning_rate = { log_uniform = [0.0, 0.1] }"),
            "space.learning_rate",
        ),
        (
            "uniform with low == high",
            digits_study(ok_search, "weight_decay = { uniform = [0.1, 0.1] }"),
            "space.weight_decay",
        ),
        (
            "unknown distribution",
            digits_study(ok_search, "learning_rate = { normal = [0.1, 0.2] }"),
            "space.learning_rate",
        ),
        (
            "keep = 0",
            digits_study("trials = 4\nkeep = 0", ok_space),
            "search.keep",
        ),
        (
            "keep > trials",
            digits_study("trials = 4\nkeep = 5", ok_space),
            "search.keep",
        ),
        (
            "hidden width 0",
            digits_study(ok_search, "hidden = [[16, 0]]"),
            "space.hidden",
        ),
        (
            "fixed hidden width 0",
            digits_study(ok_search, "hidden = [0]"),
            "space.hidden",
        ),
        (
            "unknown activation",
            digits_study(ok_search, "activation = [\"relu\", \"swish\"]"),
            "space.activation",
        ),
        (
            "unknown optimizer",
            digits_study(ok_search, "optimizer = \"lbfgs\""),
            "space.optimizer",
        ),
        (
            "batch size 0",
            digits_study(ok_search, "batch_size = [0, 32]"),
            "space.batch_size",
        ),
        (
            "a wrong type",
            digits_study(ok_search, "epochs = \"many\""),
            "space.epochs",
        ),
        (
            "a distribution in a grid",
            digits_study(
                "strategy = \"grid\"",
                "learning_rate = { log_uniform = [1e-3, 1e-2] }",
            ),
            "space.learning_rate",
        ),
        (
            "unknown strategy",
            digits_study("strategy = \"bayes\"", ok_space),
            "search.strategy",
        ),
        (
            "unknown task",
            digits_study(ok_search, ok_space).replace("\"classification\"", "\"ranking\""),
            "data.task",
        ),
        (
            "validation fraction 1",
            digits_study(ok_search, ok_space).replace("= 0.2", "= 1.0"),
            "data.validation_fraction",
        ),
        (
            "labels out of range of data.classes",
            digits_study(ok_search, ok_space).replace("standardize", "classes = 5\nstandardize"),
            "data.y",
        ),
        (
            "x / y rows differ",
            digits_study(ok_search, ok_space).replace("x_train", "x_test"),
            "data.y",
        ),
        (
            "a missing data file",
            digits_study(ok_search, ok_space).replace("x_train", "no_such_file"),
            "data.x",
        ),
    ];
    for (what, text, key) in &cases {
        assert_eq!(&key_of(Study::parse(text, &base)), key, "{what}");
    }
    // The message names the file and the key.
    let e = Study::parse(&digits_study(ok_search, "hiddn = 1"), &base).unwrap_err();
    assert!(e.to_string().contains("space.hiddn"), "{e}");
}

#[test]
fn study_data_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let x = read_matrix(digits().join("x_test.npy")).unwrap();
    let mut nan = x.to_vec();
    nan[3 * 64 + 5] = f32::NAN;
    write_tensor(
        dir.path().join("x_nan.npy"),
        &Tensor::matrix(360, 64, nan).unwrap(),
    )
    .unwrap();
    write_tensor(dir.path().join("x.npy"), &x).unwrap();
    let mut labels: Vec<i64> = (0..360).map(|i| i % 10).collect();
    write_labels(&dir.path().join("y.npy"), &labels);
    labels[7] = -1;
    write_labels(&dir.path().join("y_negative.npy"), &labels);
    let study = |x: &str, y: &str| {
        format!(
            "[data]\nx = \"{x}\"\ny = \"{y}\"\ntask = \"classification\"\n\n[space]\nepochs = 1\n"
        )
    };
    assert!(Study::parse(&study("x.npy", "y.npy"), dir.path()).is_ok());
    let e = Study::parse(&study("x_nan.npy", "y.npy"), dir.path());
    assert_eq!(key_of(e), "data.x");
    let e = Study::parse(&study("x.npy", "y_negative.npy"), dir.path());
    assert_eq!(key_of(e), "data.y");
    // Float targets for classification.
    let e = Study::parse(&study("x.npy", "x.npy"), dir.path());
    assert_eq!(key_of(e), "data.y");
    // A single class parses, and cannot train: the training set says so as a study
    // error naming the file and `data.y` (it was a bare TrainData error).
    write_labels(&dir.path().join("y_one.npy"), &[0; 360]);
    let one = Study::parse(&study("x.npy", "y_one.npy"), dir.path()).unwrap();
    match one.train_set() {
        Err(Error::Study { key, message, .. }) => {
            assert_eq!(key, "data.y", "{message}");
            assert!(message.contains("class"), "{message}");
        }
        other => panic!("a single class: {:?}", other.map(|_| ())),
    }
}

#[test]
fn random_search_is_seeded() {
    let space = "hidden = [[16], [32], [16, 8]]\nactivation = [\"relu\", \"tanh\", \"gelu\"]\n\
                 optimizer = [\"adam\", \"sgd\", \"adamw\", \"sgd_nesterov\"]\n\
                 learning_rate = { log_uniform = [1e-4, 1e-1] }\nbatch_size = { int_uniform = [8, 128] }\n\
                 momentum = { uniform = [0.5, 0.95] }\nepochs = 3";
    let a = Study::parse(&digits_study("trials = 20\nseed = 3", space), digits()).unwrap();
    let b = Study::parse(&digits_study("trials = 20\nseed = 3", space), digits()).unwrap();
    let c = Study::parse(&digits_study("trials = 20\nseed = 4", space), digits()).unwrap();
    let longer = Study::parse(&digits_study("trials = 40\nseed = 3", space), digits()).unwrap();
    let pa: Vec<_> = (0..20).map(|i| a.params(i)).collect();
    let pb: Vec<_> = (0..20).map(|i| b.params(i)).collect();
    let pc: Vec<_> = (0..20).map(|i| c.params(i)).collect();
    assert_eq!(pa, pb, "the same seed gives the same parameters");
    assert_ne!(pa, pc, "another seed gives other parameters");
    // A trial's parameters depend on the seed and its index only.
    for (i, p) in pa.iter().enumerate() {
        assert_eq!(*p, longer.params(i), "trial {i}");
    }
    for p in &pa {
        assert!((1e-4..=1e-1).contains(&p.learning_rate), "{p:?}");
        assert!((8..=128).contains(&p.batch_size), "{p:?}");
        assert!((0.5..=0.95).contains(&p.momentum), "{p:?}");
        assert_eq!(p.epochs, 3);
    }
    // The draws cover the lists.
    let activations: HashSet<_> = pa.iter().map(|p| p.activation.clone()).collect();
    assert_eq!(activations.len(), 3, "{activations:?}");
    let seeds: HashSet<_> = pa.iter().map(|p| p.seed).collect();
    assert_eq!(seeds.len(), 20, "every trial has its own seed");
}

#[test]
fn grid_gives_every_combination() {
    let space = "hidden = [[8], [16]]\nactivation = [\"relu\", \"tanh\", \"sigmoid\"]\n\
                 learning_rate = [0.01, 0.001]\nepochs = 2";
    let study = Study::parse(
        &digits_study("strategy = \"grid\"\ntrials = 3", space),
        digits(),
    )
    .unwrap();
    assert_eq!(study.trials(), 12, "`trials` is ignored by a grid");
    let combos: HashSet<String> = (0..12)
        .map(|i| {
            let p = study.params(i);
            assert_eq!(p.epochs, 2);
            format!("{:?} {} {}", p.hidden, p.activation, p.learning_rate)
        })
        .collect();
    let mut want = HashSet::new();
    for h in ["[8]", "[16]"] {
        for a in ["relu", "tanh", "sigmoid"] {
            for lr in ["0.01", "0.001"] {
                want.insert(format!("{h} {a} {lr}"));
            }
        }
    }
    assert_eq!(combos, want);
}

/// A small study of the digits on `devices`: its best trial and its exported
/// ensemble, loaded back through the manifest, reach 95 % test accuracy.
fn digits_study_reaches_95_percent(devices: Devices, label: &str) {
    let text = digits_study(
        "trials = 3\nseed = 11\nkeep = 2",
        "hidden = [[32], [64]]\nactivation = [\"relu\", \"tanh\"]\noptimizer = \"adam\"\n\
         learning_rate = { log_uniform = [2e-3, 1e-2] }\nbatch_size = 32\nepochs = 25\npatience = 5",
    );
    let study = Study::parse(&text, digits()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let result = study.run(out.path(), &devices, &mut no_progress).unwrap();
    assert_eq!(result.trials.len(), 3, "{label}");
    for r in &result.trials {
        assert_eq!(r.status, TrialStatus::Finished, "{label}: {r:?}");
        println!("{label}: {} trained on {}", r.name, r.device);
    }
    let best = result.best();
    assert_eq!(best.len(), 2);
    assert!(best[0].validation_loss <= best[1].validation_loss);

    let x = read_matrix(digits().join("x_test.npy")).unwrap();
    let labels = test_labels();
    // The best trial alone, from memory.
    let (name, model) = &result.models()[0];
    assert_eq!(name, &best[0].name);
    let graph = wgpu_ensemble::Graph::builder(64)
        .member(name.clone(), model.clone(), Placement::Cpu)
        .build()
        .unwrap();
    let run = Session::new(graph)
        .unwrap()
        .run(&x, &RunOptions::default())
        .unwrap();
    let best_accuracy = accuracy(&run.aggregate, &labels);
    assert!(
        best_accuracy >= 0.95,
        "{label}: best trial: {best_accuracy}"
    );

    // The exported ensemble, through the manifest path.
    let manifest = Manifest::load(out.path().join("ensemble.toml")).unwrap();
    assert_eq!(manifest.members.len(), 2);
    let session = Session::new(manifest.graph(Some(&Placement::Cpu)).unwrap()).unwrap();
    let from_disk = session.run(&x, &RunOptions::default()).unwrap();
    let ensemble_accuracy = accuracy(&from_disk.aggregate, &labels);
    assert!(
        ensemble_accuracy >= 0.95,
        "{label}: ensemble: {ensemble_accuracy}"
    );
    // The same ensemble in memory (members on `auto`) gives the same answers.
    let in_memory = Session::new(result.graph().unwrap())
        .unwrap()
        .run(&x, &RunOptions::default())
        .unwrap();
    let worst = in_memory
        .aggregate
        .as_slice()
        .iter()
        .zip(from_disk.aggregate.as_slice())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "{label}: in memory and from disk differ by {worst}"
    );
}

#[test]
fn digits_study_reaches_95_percent_cpu() {
    digits_study_reaches_95_percent(Devices::List(vec![Placement::Cpu]), "cpu");
}

/// Every usable adapter (software ones too) plus the CPU, trials side by side (an
/// adapter that cannot train is dropped and its trial runs elsewhere).
#[test]
fn digits_study_reaches_95_percent_every_device() {
    let mut every: Vec<Placement> = wgpu_ensemble::probe_adapters()
        .into_iter()
        .filter(|p| p.usable.is_ok())
        .map(|p| Placement::Adapter(p.info.index))
        .collect();
    every.push(Placement::Cpu);
    digits_study_reaches_95_percent(Devices::List(every), "every device");
}

/// `auto` is every usable GPU (discrete, integrated or virtual, not llvmpipe), then
/// the CPU: no software adapter, which trains many times slower than the CPU engine
/// on the same cores.
#[test]
fn auto_devices_are_the_hardware_adapters_and_the_cpu() {
    use wgpu_ensemble::wgpu::DeviceType;
    let is_gpu = |info: &wgpu_ensemble::AdapterInfo| {
        matches!(
            info.device_type,
            DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
        ) && !info.name.contains("llvmpipe")
    };
    let placements = Devices::Auto.placements();
    assert!(
        matches!(placements.last(), Some(Placement::Cpu)),
        "{placements:?}"
    );
    let probes = wgpu_ensemble::probe_adapters();
    for p in &placements[..placements.len() - 1] {
        let Placement::Adapter(i) = p else {
            panic!("auto gave {p:?}");
        };
        let info = &probes.iter().find(|q| q.info.index == *i).unwrap().info;
        assert!(is_gpu(info), "auto trains on {info}");
    }
    let hardware = probes
        .iter()
        .filter(|p| p.usable.is_ok() && is_gpu(&p.info))
        .count();
    assert_eq!(placements.len(), hardware + 1, "{placements:?}");
}

#[test]
fn resume_skips_finished_trials() {
    // Trial 0 runs 2 epochs, trials 1 and 2 long enough to be stopped in.
    let grid = |epochs: &str| {
        digits_study(
            "strategy = \"grid\"\nseed = 5\nkeep = 1",
            &format!("hidden = [[8]]\nbatch_size = 256\npatience = 0\nepochs = {epochs}"),
        )
    };
    let text = grid("[2, 300, 301]");
    let study = Study::parse(&text, digits()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let cpu = Devices::List(vec![Placement::Cpu]);
    // Stopped once the first trial is recorded.
    let mut started = 0;
    let stopped = study.run(out.path(), &cpu, &mut |e| match e {
        StudyEvent::Started { .. } => {
            started += 1;
            ControlFlow::Continue(())
        }
        StudyEvent::Finished(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    match stopped {
        Err(Error::StudyStopped {
            finished, trials, ..
        }) => assert_eq!((finished, trials), (1, 3)),
        other => panic!("expected StudyStopped, got {other:?}"),
    }
    assert!(started <= 2, "one slot: at most the next trial started");
    assert!(out.path().join("trial-000.safetensors").is_file());
    assert!(!out.path().join("ensemble.toml").exists());

    // The same study again: the recorded trial is skipped, the others trained.
    let (mut skipped, mut trained) = (Vec::new(), Vec::new());
    let result = study
        .run(out.path(), &cpu, &mut |e| {
            match e {
                StudyEvent::Skipped(r) => skipped.push(r.name.clone()),
                StudyEvent::Started { trial, .. } => trained.push(trial.clone()),
                _ => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(skipped, ["trial-000"]);
    trained.sort();
    assert_eq!(trained, ["trial-001", "trial-002"]);
    assert_eq!(result.trials.len(), 3);
    let lines = std::fs::read_to_string(out.path().join("trials.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3, "one record per trial");
    assert!(out.path().join("ensemble.toml").is_file());

    // A third run trains nothing.
    let mut started = 0;
    study
        .run(out.path(), &cpu, &mut |e| {
            if matches!(e, StudyEvent::Started { .. }) {
                started += 1;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(started, 0);

    // Another study on the same folder is refused.
    let changed = Study::parse(&grid("[2, 300, 302]"), digits()).unwrap();
    match changed.run(out.path(), &cpu, &mut no_progress) {
        Err(Error::Study { key, .. }) => assert_eq!(key, "space"),
        other => panic!("expected Error::Study, got {other:?}"),
    }
}

#[test]
fn a_diverging_trial_is_recorded_as_failed_cpu() {
    let text = digits_study(
        "strategy = \"grid\"\nkeep = 1",
        "hidden = [[16]]\noptimizer = \"sgd\"\nlearning_rate = [0.01, 1e9]\nbatch_size = 64\nepochs = 4",
    );
    let study = Study::parse(&text, digits()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let result = study
        .run(
            out.path(),
            &Devices::List(vec![Placement::Cpu]),
            &mut no_progress,
        )
        .unwrap();
    let failed: Vec<_> = result
        .trials
        .iter()
        .filter(|r| r.status == TrialStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", result.trials);
    assert_eq!(failed[0].params.learning_rate, 1e9);
    let error = failed[0].error.as_deref().unwrap_or("");
    assert!(error.contains("diverged"), "{error}");
    assert!(!out
        .path()
        .join(format!("{}.safetensors", failed[0].name))
        .exists());
    assert_eq!(result.best().len(), 1);
    assert!(result.best()[0].finished());
}

#[test]
fn one_trial_mode_trains_given_parameters_cpu() {
    let text = digits_study(
        "trials = 2",
        "hidden = [[16], [32]]\nlearning_rate = { log_uniform = [1e-3, 1e-2] }\nepochs = 2",
    );
    let study = Study::parse(&text, digits()).unwrap();
    let path = Path::new("params.json");
    // Searched keys must be given; unknown keys are refused.
    match study.trial_params(path, r#"{"hidden": [16]}"#) {
        Err(Error::Study { key, .. }) => assert_eq!(key, "learning_rate"),
        other => panic!("expected Error::Study, got {other:?}"),
    }
    match study.trial_params(path, r#"{"hidden": [16], "learning_rate": 0.01, "lr": 1}"#) {
        Err(Error::Study { key, .. }) => assert_eq!(key, "lr"),
        other => panic!("expected Error::Study, got {other:?}"),
    }
    let params = study
        .trial_params(path, r#"{"hidden": [16], "learning_rate": 0.005}"#)
        .unwrap();
    assert_eq!(params.epochs, 2, "a fixed key takes the study's value");
    let out = tempfile::tempdir().unwrap();
    let record = study
        .run_trial(out.path(), &params, &Placement::Cpu, &mut no_progress)
        .unwrap();
    assert!(record.finished());
    assert_eq!(record.epochs_run, 2);
    assert!(out
        .path()
        .join(format!("{}.safetensors", record.name))
        .is_file());
    // Asked again, it is not trained again.
    let mut started = 0;
    let again = study
        .run_trial(out.path(), &params, &Placement::Cpu, &mut |e| {
            if matches!(e, StudyEvent::Started { .. }) {
                started += 1;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(started, 0);
    assert_eq!(again, record);
}

/// A study whose `trials` grew past a power of ten names its trials with more digits
/// (`trial-0007` where there were `trial-007`): the trials recorded under the
/// narrower names are still recognised by their number and skipped. (Simulated here
/// the other way round: a study of 2 trials recorded under 4-digit names, as a study
/// of a thousand would have, then run with 3.)
#[test]
fn resume_recognises_trials_recorded_with_other_zero_padding() {
    let study_of = |trials: usize| {
        let text = digits_study(
            &format!("strategy = \"random\"\nseed = 5\nkeep = 1\ntrials = {trials}"),
            "hidden = [[8]]\nbatch_size = 256\npatience = 0\nepochs = [2]",
        );
        Study::parse(&text, digits()).unwrap()
    };
    let out = tempfile::tempdir().unwrap();
    let cpu = Devices::List(vec![Placement::Cpu]);
    study_of(2)
        .run(out.path(), &cpu, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let records = out.path().join("trials.jsonl");
    let mut lines = std::fs::read_to_string(&records).unwrap();
    for i in 0..2 {
        let (old, new) = (format!("trial-00{i}"), format!("trial-000{i}"));
        assert!(lines.contains(&format!("\"{old}\"")), "{lines}");
        lines = lines.replace(&format!("\"{old}\""), &format!("\"{new}\""));
        std::fs::rename(
            out.path().join(format!("{old}.safetensors")),
            out.path().join(format!("{new}.safetensors")),
        )
        .unwrap();
    }
    std::fs::write(&records, lines).unwrap();
    let (mut skipped, mut trained) = (Vec::new(), Vec::new());
    let result = study_of(3)
        .run(out.path(), &cpu, &mut |e| {
            match e {
                StudyEvent::Skipped(r) => skipped.push(r.name.clone()),
                StudyEvent::Started { trial, .. } => trained.push(trial.clone()),
                _ => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    skipped.sort();
    assert_eq!(skipped, ["trial-0000", "trial-0001"]);
    assert_eq!(trained, ["trial-002"]);
    assert_eq!(result.trials.len(), 3);
}

/// A finished trial whose weights file is cut short (a crash of the system after the
/// record was written) is trained again when the study resumes, rather than failing
/// the study when its ensemble is written.
#[test]
fn resume_trains_again_a_trial_whose_weights_do_not_load() {
    let text = digits_study(
        "strategy = \"random\"\nseed = 5\nkeep = 2\ntrials = 2",
        "hidden = [[8]]\nbatch_size = 256\npatience = 0\nepochs = [2]",
    );
    let study = Study::parse(&text, digits()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let cpu = Devices::List(vec![Placement::Cpu]);
    study
        .run(out.path(), &cpu, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let weights = out.path().join("trial-001.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(out.path().join("ensemble.toml")).unwrap();
    let mut trained = Vec::new();
    study
        .run(out.path(), &cpu, &mut |e| {
            if let StudyEvent::Started { trial, .. } = e {
                trained.push(trial.clone());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(trained, ["trial-001"]);
    assert_eq!(std::fs::read(&weights).unwrap().len(), bytes.len());
    assert!(out.path().join("ensemble.toml").is_file());
}
