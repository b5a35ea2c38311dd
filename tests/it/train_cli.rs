//! `wgpu-ensemble train`: a study's records, its ensemble that `predict` runs, the
//! `--json` lines, the one-trial mode, a bad study's error.

use crate::common::{self, cli, stderr};
use crate::train_study::{digits, digits_study};

use wgpu_ensemble::io::read_matrix;

fn write_study(dir: &std::path::Path, search: &str, space: &str) -> std::path::PathBuf {
    let base = digits();
    let text = digits_study(search, space)
        .replace(
            "\"x_train.npy\"",
            &format!("\"{}\"", base.join("x_train.npy").display()),
        )
        .replace(
            "\"y_train.npy\"",
            &format!("\"{}\"", base.join("y_train.npy").display()),
        );
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn train_writes_records_and_an_ensemble_predict_runs() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(
        dir.path(),
        "trials = 2\nseed = 2\nkeep = 2",
        "hidden = [[16], [32]]\nlearning_rate = 0.005\nbatch_size = 64\nepochs = 3",
    );
    let out = dir.path().join("out");
    let run = cli(&[
        "train",
        "--study",
        study.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "cpu",
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    // Every stdout line is JSON: 2 × 3 epochs, 2 trials, the study.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let count = |kind: &str| lines.iter().filter(|l| l["event"] == kind).count();
    assert_eq!((count("epoch"), count("trial"), count("study")), (6, 2, 1));
    let epoch = lines.iter().find(|l| l["event"] == "epoch").unwrap();
    for key in [
        "trial",
        "device",
        "epoch",
        "train_loss",
        "validation_loss",
        "accuracy",
    ] {
        assert!(!epoch[key].is_null(), "{key} in {epoch}");
    }
    let trial = lines.iter().find(|l| l["event"] == "trial").unwrap();
    assert_eq!(trial["status"], "finished");
    assert_eq!(trial["device"], "cpu");
    // The records file: one line per trial.
    let records = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 2);
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(r["accuracy"].as_f64().unwrap() > 0.5, "{r}");
    }
    assert!(
        stderr(&run).contains("ensemble of the 2 best"),
        "{}",
        stderr(&run)
    );

    // `predict` runs the ensemble as it is.
    let y = dir.path().join("y.npy");
    let predicted = cli(&[
        "predict",
        "--manifest",
        out.join("ensemble.toml").to_str().unwrap(),
        "--input",
        digits().join("x_test.npy").to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let y = read_matrix(&y).unwrap();
    assert_eq!(y.shape(), &[360, 10]);
    // Softmax outputs: every row sums to 1.
    for row in y.as_slice().chunks(10) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    }
}

#[test]
fn one_trial_mode_prints_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(
        dir.path(),
        "trials = 4",
        "hidden = [[16], [32]]\nlearning_rate = { log_uniform = [1e-3, 1e-2] }\nepochs = 2",
    );
    let params = dir.path().join("params.json");
    std::fs::write(&params, r#"{"hidden": [32], "learning_rate": 0.004}"#).unwrap();
    let out = dir.path().join("out");
    let run = cli(&[
        "train",
        "--trial",
        params.to_str().unwrap(),
        "--study",
        study.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "cpu",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(record["status"], "finished");
    assert_eq!(record["params"]["hidden"], serde_json::json!([32]));
    assert_eq!(record["params"]["learning_rate"], 0.004);
    assert_eq!(record["epochs_run"], 2);
    let name = record["name"].as_str().unwrap();
    assert!(out.join(format!("{name}.safetensors")).is_file());
}

/// `--devices` naming an adapter that does not exist is refused before any trial,
/// naming the flag (a trial found it on its first job, naming a 'trained member').
#[test]
fn devices_naming_a_missing_adapter_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(dir.path(), "trials = 2", "epochs = 1");
    let out = dir.path().join("out");
    let run = cli(&[
        "train",
        "--study",
        study.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "cpu,adapter:99",
    ]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("--devices") && err.contains("adapter 99"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_bad_study_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(dir.path(), "trials = 2\nkeep = 3", "epochs = 1");
    let out = dir.path().join("out");
    let run = cli(&[
        "train",
        "--study",
        study.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("search.keep"), "{}", stderr(&run));
    assert!(!out.exists(), "nothing written");
}

/// SIGINT stops the study after the running epochs: the finished trial keeps its
/// record and weights, the command exits non-zero saying how to resume. Where the
/// tests run with SIGINT ignored (a background job of a non-interactive shell), the
/// command keeps it ignored, as it should, and SIGTERM, handled the same way, is sent
/// instead.
#[cfg(unix)]
#[test]
fn sigint_keeps_finished_trials_and_says_how_to_resume() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    // Trial 0 runs 2 epochs, trial 1 a very long time.
    let study = write_study(
        dir.path(),
        "strategy = \"grid\"\nkeep = 1",
        "hidden = [[16]]\nbatch_size = 64\nepochs = [2, 1000000]\npatience = 0",
    );
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
        .args(["train", "--study", study.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--devices", "cpu", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Wait for the second trial's first epoch.
    let mut seen = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("\"epoch\"") && line.contains("trial-001") {
            seen = true;
            break;
        }
    }
    assert!(seen, "the second trial never ran an epoch");
    let signal = if common::ignored_here(2) {
        eprintln!("note: the tests run with SIGINT ignored; sending SIGTERM instead");
        "-TERM"
    } else {
        "-INT"
    };
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // Drain stdout so that the command never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.count());
    let status = common::wait_bounded(
        &mut child,
        Duration::from_secs(60),
        &format!("train after kill {signal}"),
    );
    let _ = drain.join();
    let mut message = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut message);
    assert!(!status.success(), "{message}");
    assert!(
        message.contains("run the same command again to resume"),
        "{message}"
    );
    let records = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(records.contains("\"trial-000\""), "{records}");
    assert!(out.join("trial-000.safetensors").is_file());
    assert!(!out.join("trial-001.safetensors").exists());
}

/// `--trial` reads a regular file within the text limit: a device (which would be
/// read until memory runs out) is refused naming it, and a file that is not JSON is
/// refused naming the `trial` key.
#[cfg(unix)]
#[test]
fn trial_parameters_come_from_a_regular_json_file() {
    let dir = tempfile::tempdir().unwrap();
    let study = write_study(dir.path(), "trials = 2", "epochs = 1");
    let out = dir.path().join("out");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "not json").unwrap();
    for (params, words) in [
        ("/dev/zero", &["/dev/zero", "not a regular file"][..]),
        (junk.to_str().unwrap(), &["`trial`", "not JSON"][..]),
    ] {
        let run = cli(&[
            "train",
            "--trial",
            params,
            "--study",
            study.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--devices",
            "cpu",
        ]);
        assert!(!run.status.success(), "{params}");
        let err = stderr(&run);
        for w in words {
            assert!(err.contains(w), "{params}: no {w:?} in {err}");
        }
    }
}
