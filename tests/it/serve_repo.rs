//! The model repository at the library level: version policies, labels, polling (new,
//! broken, half-written and removed versions), a hot swap under load, per-device
//! replicas. No HTTP: `Repository` is driven directly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgpu_ensemble::io::Manifest;
use wgpu_ensemble::serve::{
    InferAnswer, InferRequest, Metrics, Replicas, Repository, RepositoryConfig, ServeError,
    VersionSelector, VersionState,
};
use wgpu_ensemble::{RunOptions, Session, Tensor};

use crate::common;

/// The golden members: name, extra manifest lines.
const MEMBERS: &[(&str, &str)] = &[
    ("seq-relu", ""),
    ("deep-tanh-gelu", ""),
    ("half-sigmoid", ""),
    (
        "fc-f64",
        "activations = [\"relu\", \"tanh\", \"softmax\"]\n",
    ),
    (
        "bf16-gelu",
        "activations = [\"gelu\", \"identity\"]\nlayers = [\"b\", \"a\"]\n",
    ),
];

/// Each version's members: the versions differ in their answers.
fn members_of(version: u64) -> &'static [usize] {
    match version % 4 {
        1 => &[0],
        2 => &[0, 3],
        3 => &[1, 2],
        _ => &[0, 1, 2, 3, 4],
    }
}

/// The ensemble of `version`'s members on the CPU, written into `dir` (created).
fn write_version_at(dir: &Path, version: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut manifest = String::from("[aggregate]\nkind = \"mean\"\n");
    for &i in members_of(version) {
        let (name, extra) = MEMBERS[i];
        let file = format!("{name}.safetensors");
        std::fs::copy(common::golden(&file), dir.join(&file)).unwrap();
        manifest.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\nfile = \"{file}\"\n{extra}device = \"cpu\"\n"
        ));
    }
    std::fs::write(dir.join("ensemble.toml"), manifest).unwrap();
}

/// Writes `root/model/version` as the documented rule says: under another name, then
/// renamed into place.
fn add_version(root: &Path, model: &str, version: u64) -> PathBuf {
    let partial = root.join(model).join(format!(".{version}.partial"));
    write_version_at(&partial, version);
    let dir = root.join(model).join(version.to_string());
    std::fs::rename(&partial, &dir).unwrap();
    dir
}

fn write_config(root: &Path, model: &str, text: &str) {
    std::fs::create_dir_all(root.join(model)).unwrap();
    std::fs::write(root.join(model).join("config.toml"), text).unwrap();
}

fn open(root: &Path) -> Repository {
    open_with(root, Replicas::Manifest)
}

fn open_with(root: &Path, replicas: Replicas) -> Repository {
    Repository::open(
        RepositoryConfig::new(root).replicas(replicas),
        Metrics::new(),
    )
    .unwrap()
}

/// What `Session::run` answers for `version`'s manifest (written anywhere), on `x`.
fn expected(version: u64, x: &Tensor) -> Tensor {
    let dir = tempfile::tempdir().unwrap();
    write_version_at(dir.path(), version);
    let manifest = Manifest::load(dir.path().join("ensemble.toml")).unwrap();
    let session = Session::new(manifest.graph(None).unwrap()).unwrap();
    session.run(x, &RunOptions::default()).unwrap().aggregate
}

fn input_width() -> usize {
    let manifest = Manifest::load(common::golden("mean.toml")).unwrap();
    manifest
        .graph(Some(&wgpu_ensemble::Placement::Cpu))
        .unwrap()
        .input_width()
}

fn x() -> Tensor {
    common::input(3, input_width(), 17)
}

fn infer(
    repo: &Repository,
    model: &str,
    selector: &VersionSelector,
    x: &Tensor,
) -> Result<InferAnswer, ServeError> {
    let (_served, reply) = repo.submit(model, selector, InferRequest::new(x.clone()))?;
    reply
        .blocking_recv()
        .map_err(|e| ServeError::Internal(format!("no answer: {e}")))?
}

/// `(version, state)` of every version the model reports.
fn states(repo: &Repository, model: &str) -> Vec<(u64, VersionState)> {
    repo.status(model, None)
        .unwrap()
        .into_iter()
        .map(|s| (s.version, s.state))
        .collect()
}

fn available(repo: &Repository, model: &str) -> Vec<u64> {
    states(repo, model)
        .into_iter()
        .filter(|(_, s)| *s == VersionState::Available)
        .map(|(v, _)| v)
        .collect()
}

/// Waits (at most 10 s) until `version` reaches `state` (an unloaded version reaches
/// `END` once its queue is drained, on a thread of its own).
#[track_caller]
fn wait_state(repo: &Repository, model: &str, version: u64, state: VersionState) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = repo.status(model, Some(version)).unwrap()[0].state;
        if now == state {
            return;
        }
        assert!(
            Instant::now() < until,
            "model {model} version {version}: state {now:?}, expected {state:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn error_of(repo: &Repository, model: &str, version: u64) -> String {
    repo.status(model, Some(version)).unwrap()[0]
        .error
        .clone()
        .unwrap_or_default()
}

#[track_caller]
fn assert_answer(answer: &InferAnswer, want: &Tensor) {
    common::assert_close_tol(
        &format!("version {}", answer.version),
        answer.output.as_slice(),
        &want
            .as_slice()
            .iter()
            .map(|&v| f64::from(v))
            .collect::<Vec<_>>(),
        common::ABS,
        common::REL,
    );
}

#[test]
fn version_policies_latest_all_specific() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    for v in 1..=3 {
        add_version(root, "m", v);
    }
    let repo = open(root);
    repo.poll();
    assert_eq!(available(&repo, "m"), [3], "default policy: the highest");
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        3
    );

    write_config(root, "m", "[version_policy]\nlatest = 2\n");
    repo.poll();
    assert_eq!(available(&repo, "m"), [2, 3]);

    write_config(root, "m", "[version_policy]\nall = true\n");
    repo.poll();
    assert_eq!(available(&repo, "m"), [1, 2, 3]);
    let x = x();
    for v in 1..=3 {
        let answer = infer(&repo, "m", &VersionSelector::Number(v), &x).unwrap();
        assert_eq!(answer.version, v);
        assert_answer(&answer, &expected(v, &x));
    }

    write_config(root, "m", "[version_policy]\nspecific = [1, 3]\n");
    repo.poll();
    assert_eq!(available(&repo, "m"), [1, 3]);
    wait_state(&repo, "m", 2, VersionState::End);
    let e = repo.resolve("m", &VersionSelector::Number(2)).unwrap_err();
    assert_eq!(e.status(), 404);
    assert!(
        e.to_string().contains("version 2") && e.to_string().contains("1, 3"),
        "{e}"
    );
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        3
    );
}

#[test]
fn labels_resolve_and_a_label_of_a_version_not_served_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    for v in 1..=3 {
        add_version(root, "m", v);
    }
    write_config(
        root,
        "m",
        "labels = { stable = 1, canary = 2, old = 3, future = 9 }\n[version_policy]\nspecific = [1, 2]\n",
    );
    let repo = open(root);
    repo.poll();
    assert_eq!(available(&repo, "m"), [1, 2]);
    let label = |l: &str| VersionSelector::Label(l.to_string());
    assert_eq!(repo.resolve("m", &label("stable")).unwrap().version, 1);
    assert_eq!(repo.resolve("m", &label("canary")).unwrap().version, 2);
    let x = x();
    let answer = infer(&repo, "m", &label("canary"), &x).unwrap();
    assert_eq!(answer.version, 2);
    assert_answer(&answer, &expected(2, &x));
    assert_eq!(
        repo.labels("m").unwrap().into_iter().collect::<Vec<_>>(),
        [("canary".to_string(), 2), ("stable".to_string(), 1)]
    );

    // Version 3 is present but not in the policy; 9 does not exist.
    for (l, v) in [("old", 3), ("future", 9)] {
        let e = repo.resolve("m", &label(l)).unwrap_err();
        assert_eq!(e.status(), 404);
        let text = e.to_string();
        assert!(
            text.contains(&format!("label '{l}'")) && text.contains(&format!("version {v}")),
            "{text}"
        );
        let status = error_of(&repo, "m", 1);
        assert!(
            status.contains(&format!("label '{l}'")),
            "status of version 1: {status}"
        );
    }
    let errors = repo.model_errors("m").unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");

    let e = repo.resolve("m", &label("nope")).unwrap_err();
    assert_eq!(e.status(), 404);
    assert!(
        e.to_string().contains("'nope'") && e.to_string().contains("canary, future, old, stable"),
        "{e}"
    );

    // The label moves with the configuration.
    write_config(
        root,
        "m",
        "labels = { stable = 2 }\n[version_policy]\nall = true\n",
    );
    repo.poll();
    assert_eq!(repo.resolve("m", &label("stable")).unwrap().version, 2);
    assert!(repo.model_errors("m").unwrap().is_empty());
    assert_eq!(error_of(&repo, "m", 1), "");
}

#[test]
fn a_config_that_does_not_parse_is_reported_and_what_was_served_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    add_version(root, "m", 2);
    write_config(root, "m", "[version_policy]\nall = true\n");
    let repo = open(root);
    repo.poll();
    assert_eq!(available(&repo, "m"), [1, 2]);

    for (text, key) in [
        ("lables = { stable = 1 }\n", "lables"),
        ("[version_policy]\nlatest = 0\n", "latest"),
        ("replicas = \"everywhere\"\n", "replicas"),
        ("max_batch_size = [\n", "line 1"),
        (
            &format!(
                "labels = {{ stable = 1 }}\nreplicas = \"{}\"\n",
                "z".repeat(5000)
            ),
            "replicas",
        ),
    ] {
        write_config(root, "m", text);
        repo.poll();
        assert_eq!(available(&repo, "m"), [1, 2], "{text:?}");
        for v in [1, 2] {
            let e = error_of(&repo, "m", v);
            assert!(
                e.contains("config.toml") && e.contains(key),
                "{text:?}: {e}"
            );
            assert!(
                e.chars().count() < 1200,
                "unbounded quote: {} characters",
                e.len()
            );
        }
        assert_eq!(
            repo.resolve("m", &VersionSelector::Default)
                .unwrap()
                .version,
            2
        );
    }
    write_config(root, "m", "[version_policy]\nlatest = 1\n");
    repo.poll();
    assert_eq!(available(&repo, "m"), [2]);
    assert_eq!(error_of(&repo, "m", 2), "");

    // A model whose configuration never parsed loads nothing, and says why.
    add_version(root, "n", 1);
    write_config(root, "n", "[version_policy]\nlatest = \"one\"\n");
    repo.poll();
    let e = repo.status("n", None).unwrap_err();
    assert_eq!(e.status(), 404);
    assert!(
        e.to_string().contains("config.toml") && e.to_string().contains("latest"),
        "{e}"
    );
    assert_eq!(
        repo.load_attempts(),
        2,
        "versions 1 and 2 of m; nothing of n"
    );
}

#[test]
fn a_new_version_is_served_after_a_poll_and_the_old_one_unloaded() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    let repo = open(root);
    assert!(
        repo.resolve("m", &VersionSelector::Default).is_err(),
        "nothing before a poll"
    );
    repo.poll();
    let x = x();
    let answer = infer(&repo, "m", &VersionSelector::Default, &x).unwrap();
    assert_eq!(answer.version, 1);
    assert_answer(&answer, &expected(1, &x));

    // Requests queued for version 1 when version 2 replaces it: version 1 answers them.
    let queued: Vec<_> = (0..64)
        .map(|_| {
            repo.submit("m", &VersionSelector::Default, InferRequest::new(x.clone()))
                .unwrap()
                .1
        })
        .collect();
    add_version(root, "m", 2);
    repo.poll();
    let answer = infer(&repo, "m", &VersionSelector::Default, &x).unwrap();
    assert_eq!(answer.version, 2);
    for reply in queued {
        let answer = reply.blocking_recv().unwrap().unwrap();
        assert_eq!(answer.version, 1);
        assert_answer(&answer, &expected(1, &x));
    }
    assert_answer(&answer, &expected(2, &x));
    wait_state(&repo, "m", 1, VersionState::End);
    assert_eq!(error_of(&repo, "m", 1), "");
    assert!(repo.resolve("m", &VersionSelector::Number(1)).is_err());
}

#[test]
fn a_broken_version_ends_with_its_error_and_is_retried_only_once_changed() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    let repo = open(root);
    repo.poll();
    assert_eq!(repo.load_attempts(), 1);

    // A manifest that does not parse.
    let dir = add_version(root, "m", 2);
    std::fs::write(dir.join("ensemble.toml"), "[[member]\nname = ").unwrap();
    repo.poll();
    assert_eq!(
        states(&repo, "m"),
        [(1, VersionState::Available), (2, VersionState::End)]
    );
    let e = error_of(&repo, "m", 2);
    assert!(e.contains("ensemble.toml") && e.contains("line 1"), "{e}");
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        1
    );
    assert_eq!(repo.load_attempts(), 2);
    repo.poll();
    repo.poll();
    assert_eq!(
        repo.load_attempts(),
        2,
        "an unchanged broken version is not tried again"
    );

    // A truncated weight file.
    let dir3 = add_version(root, "m", 3);
    let weights = dir3.join("deep-tanh-gelu.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    repo.poll();
    let e = error_of(&repo, "m", 3);
    assert_eq!(
        repo.status("m", Some(3)).unwrap()[0].state,
        VersionState::End
    );
    assert!(e.contains("deep-tanh-gelu.safetensors"), "{e}");
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        1
    );
    assert_eq!(repo.load_attempts(), 3);
    repo.poll();
    assert_eq!(repo.load_attempts(), 3);

    // A device that cannot be made.
    let dir4 = add_version(root, "m", 4);
    let manifest = std::fs::read_to_string(dir4.join("ensemble.toml")).unwrap();
    std::fs::write(
        dir4.join("ensemble.toml"),
        manifest.replace("device = \"cpu\"", "device = \"adapter:99\""),
    )
    .unwrap();
    repo.poll();
    assert_eq!(
        repo.status("m", Some(4)).unwrap()[0].state,
        VersionState::End
    );
    let e = error_of(&repo, "m", 4);
    assert!(e.contains("99"), "{e}");
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        1
    );
    assert_eq!(repo.load_attempts(), 4);
    std::fs::remove_dir_all(&dir4).unwrap();

    // The weights are complete now: tried again and served.
    std::fs::write(&weights, &bytes).unwrap();
    repo.poll();
    assert_eq!(repo.load_attempts(), 5);
    let x = x();
    let answer = infer(&repo, "m", &VersionSelector::Default, &x).unwrap();
    assert_eq!(answer.version, 3);
    assert_answer(&answer, &expected(3, &x));
    wait_state(&repo, "m", 1, VersionState::End);
    assert_eq!(error_of(&repo, "m", 3), "");
}

#[test]
fn a_half_written_version_is_ignored_until_renamed_into_place() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    let repo = open(root);
    repo.poll();
    for name in ["tmp-2", ".2.partial", "02", "+2", "2.0"] {
        write_version_at(&root.join("m").join(name), 2);
    }
    repo.poll();
    assert_eq!(states(&repo, "m"), [(1, VersionState::Available)]);
    assert_eq!(
        repo.load_attempts(),
        1,
        "no folder that is not a version was tried"
    );

    std::fs::rename(root.join("m/tmp-2"), root.join("m/2")).unwrap();
    repo.poll();
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        2
    );
    wait_state(&repo, "m", 1, VersionState::End);

    // Written in place: the manifest before its weights fails, and is tried again
    // once the folder changes.
    let dir = root.join("m/3");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("ensemble.toml"),
        "[[member]]\nname = \"a\"\nfile = \"seq-relu.safetensors\"\ndevice = \"cpu\"\n",
    )
    .unwrap();
    repo.poll();
    assert_eq!(
        repo.status("m", Some(3)).unwrap()[0].state,
        VersionState::End
    );
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        2
    );
    std::fs::copy(
        common::golden("seq-relu.safetensors"),
        dir.join("seq-relu.safetensors"),
    )
    .unwrap();
    repo.poll();
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        3
    );
}

#[test]
fn a_removed_version_is_unloaded() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    add_version(root, "m", 2);
    let repo = open(root);
    repo.poll();
    assert_eq!(available(&repo, "m"), [2]);

    std::fs::remove_dir_all(root.join("m/2")).unwrap();
    repo.poll();
    wait_state(&repo, "m", 2, VersionState::End);
    // Latest = 1 again selects version 1.
    assert_eq!(available(&repo, "m"), [1]);
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .version,
        1
    );

    // The model's folder goes: its version is unloaded, then the model forgotten.
    std::fs::remove_dir_all(root.join("m")).unwrap();
    repo.poll();
    let e = repo.resolve("m", &VersionSelector::Default).unwrap_err();
    assert_eq!(e.status(), 404);
    let until = Instant::now() + Duration::from_secs(10);
    while repo.knows("m") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        repo.poll();
    }
    assert!(!repo.knows("m"), "{:?}", repo.status("m", None));
    assert!(repo.models().is_empty(), "{:?}", repo.models());
    for e in [
        repo.status("m", None).unwrap_err(),
        repo.resolve("m", &VersionSelector::Default).unwrap_err(),
    ] {
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("unknown model 'm'"), "{e}");
    }
    let e = repo
        .resolve("other", &VersionSelector::Default)
        .unwrap_err();
    assert!(e.to_string().contains("unknown model 'other'"), "{e}");
}

/// Over HTTP: a model whose folder is removed answers 404 on both protocols once its
/// versions are unloaded (its `END` statuses were kept for ever), its later requests are
/// counted as an unknown model's, and a folder of the same name served again is served.
#[test]
fn a_removed_model_is_forgotten_over_http() {
    use crate::common::serve::{assert_ok, get, post_json, TestServer};
    let server = TestServer::start(
        &[("mean", 1, "mean.toml"), ("other", 1, "mean.toml")],
        "cpu",
    );
    assert_eq!(get(&server.url("/v1/models/mean")).status, 200);
    std::fs::remove_dir_all(server.dir.path().join("mean")).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut status = get(&server.url("/v1/models/mean"));
    while status.status != 404 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        status = get(&server.url("/v1/models/mean"));
    }
    assert_eq!(
        status.status,
        404,
        "{}",
        String::from_utf8_lossy(&status.body)
    );
    assert!(
        status.error().contains("unknown model 'mean'"),
        "{}",
        status.error()
    );
    for path in [
        "/v2/models/mean",
        "/v2/models/mean/ready",
        "/v1/models/mean/metadata",
    ] {
        let reply = get(&server.url(path));
        assert_eq!(reply.status, 404, "{path}");
        assert!(
            reply.error().contains("unknown model 'mean'"),
            "{path}: {}",
            reply.error()
        );
    }
    let body = serde_json::json!({"instances": [vec![0.5; 12]]});
    assert_eq!(
        post_json(&server.url("/v1/models/mean:predict"), &body).status,
        404
    );
    let metrics = String::from_utf8(get(&server.url("/metrics")).body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wgpu_ensemble_inference_requests_total{")
                && l.contains("model=\"\"")
                && l.contains("outcome=\"not_found\"")),
        "{metrics}"
    );
    // The other model is untouched; the removed one comes back with its folder.
    assert_eq!(
        post_json(&server.url("/v1/models/other:predict"), &body).status,
        200
    );
    crate::common::serve::add_version(server.dir.path(), "mean", 2, "mean.toml", "cpu");
    let until = Instant::now() + Duration::from_secs(30);
    let mut reply = post_json(&server.url("/v1/models/mean:predict"), &body);
    while reply.status != 200 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        reply = post_json(&server.url("/v1/models/mean:predict"), &body);
    }
    assert_ok(&reply);
}

/// Sends `x` to `selector` from a thread of its own until `stop` (at most 20 000
/// requests or 30 s), keeping every answer's version and output and every error.
fn client(
    repo: &Arc<Repository>,
    selector: VersionSelector,
    x: &Tensor,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<InferAnswer>, Vec<ServeError>)> {
    let (repo, x, stop) = (Arc::clone(repo), x.clone(), Arc::clone(stop));
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        let (mut answers, mut errors) = (Vec::new(), Vec::new());
        while !stop.load(Ordering::SeqCst)
            && answers.len() + errors.len() < 20_000
            && Instant::now() < until
        {
            match infer(&repo, "m", &selector, &x) {
                Ok(a) => answers.push(a),
                Err(e) => errors.push(e),
            }
        }
        (answers, errors)
    })
}

/// Polls until `repo` answers `selector` with `version` (at most 10 s).
#[track_caller]
fn wait_served(repo: &Repository, selector: &VersionSelector, version: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while repo.resolve("m", selector).map(|s| s.version).ok() != Some(version) {
        assert!(
            Instant::now() < until,
            "{selector:?} never reached version {version}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn hot_swap_under_load_loses_no_request() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    write_config(
        root,
        "m",
        "labels = { stable = 1 }\n[version_policy]\nlatest = 2\n",
    );
    let repo = Arc::new(open(root));
    repo.poll();
    let x = x();
    let want: Vec<Tensor> = (0..=3).map(|v| expected(v.max(1), &x)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let by_default = client(&repo, VersionSelector::Default, &x, &stop);
    let by_label = client(&repo, VersionSelector::Label("stable".into()), &x, &stop);
    let pause = || std::thread::sleep(Duration::from_millis(30));

    pause();
    add_version(root, "m", 2);
    repo.poll();
    wait_served(&repo, &VersionSelector::Default, 2);
    pause();
    // The label moves to 2 while both are served.
    write_config(
        root,
        "m",
        "labels = { stable = 2 }\n[version_policy]\nlatest = 2\n",
    );
    repo.poll();
    wait_served(&repo, &VersionSelector::Label("stable".into()), 2);
    pause();
    // A broken version 3: kept off, 2 goes on.
    let dir = add_version(root, "m", 3);
    std::fs::write(dir.join("ensemble.toml"), "not a manifest").unwrap();
    repo.poll();
    assert_eq!(
        repo.status("m", Some(3)).unwrap()[0].state,
        VersionState::End
    );
    assert!(!error_of(&repo, "m", 3).is_empty());
    pause();
    // The label goes back to 1, then 2 is removed: everything goes to 1.
    write_config(
        root,
        "m",
        "labels = { stable = 1 }\n[version_policy]\nlatest = 2\n",
    );
    repo.poll();
    wait_served(&repo, &VersionSelector::Label("stable".into()), 1);
    std::fs::remove_dir_all(root.join("m/2")).unwrap();
    repo.poll();
    wait_served(&repo, &VersionSelector::Default, 1);
    wait_state(&repo, "m", 2, VersionState::End);
    pause();
    stop.store(true, Ordering::SeqCst);

    for (who, client) in [("default", by_default), ("label", by_label)] {
        let (answers, errors) = client.join().unwrap();
        assert!(
            errors.is_empty(),
            "{who}: {} failed requests: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        let seen: std::collections::BTreeSet<u64> = answers.iter().map(|a| a.version).collect();
        assert_eq!(seen, [1, 2].into(), "{who}: versions that answered");
        for a in &answers {
            assert_answer(a, &want[a.version as usize]);
        }
        eprintln!("{who}: {} answers, 0 failed", answers.len());
    }
}

#[test]
fn per_device_replicas_one_whole_copy_on_every_usable_adapter() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 4);
    add_version(root, "pd", 4);
    write_config(root, "pd", "replicas = \"per-device\"\n");
    let usable = common::usable_adapters("serve_repo::per_device_replicas");
    // Placement::Auto's rule: hardware adapters when there is any.
    let hardware: Vec<_> = usable
        .iter()
        .filter(|a| {
            a.device_type != wgpu_ensemble::wgpu::DeviceType::Cpu
                && a.device_type != wgpu_ensemble::wgpu::DeviceType::Other
        })
        .collect();
    let chosen: Vec<String> = if usable.is_empty() {
        vec!["cpu".to_string()]
    } else if hardware.is_empty() {
        usable
            .iter()
            .map(|a| format!("adapter:{}", a.index))
            .collect()
    } else {
        hardware
            .iter()
            .map(|a| format!("adapter:{}", a.index))
            .collect()
    };
    let x = x();
    let want = expected(4, &x);
    for (replicas, per_device_model) in [(Replicas::Manifest, "pd"), (Replicas::PerDevice, "m")] {
        let repo = open_with(root, replicas);
        repo.poll();
        assert_eq!(
            repo.resolve("m", &VersionSelector::Default)
                .map(|s| s.replicas.clone())
                .unwrap(),
            if replicas == Replicas::PerDevice {
                chosen.clone()
            } else {
                vec!["manifest".to_string()]
            }
        );
        assert_eq!(
            repo.resolve(per_device_model, &VersionSelector::Default)
                .unwrap()
                .replicas,
            chosen
        );
        // Answers from whichever replica takes them: as Session::run on the CPU.
        let replies: Vec<_> = (0..8)
            .map(|_| {
                repo.submit(
                    per_device_model,
                    &VersionSelector::Default,
                    InferRequest::new(x.clone()),
                )
                .unwrap()
                .1
            })
            .collect();
        for reply in replies {
            let answer = reply.blocking_recv().unwrap().unwrap();
            common::assert_close_tol(
                "per-device answer",
                answer.output.as_slice(),
                &want
                    .as_slice()
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>(),
                2.0 * common::ABS,
                2.0 * common::REL,
            );
        }
        repo.shutdown();
    }
}

#[test]
fn a_models_batching_overrides_the_servers_for_versions_loaded_after() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    add_version(root, "n", 1);
    write_config(root, "m", "max_batch_size = 7\nmax_queue_delay_us = 1234\n");
    let server = wgpu_ensemble::serve::BatchConfig::default();
    let repo = open(root);
    repo.poll();
    let m = repo.resolve("m", &VersionSelector::Default).unwrap();
    assert_eq!(m.batch.max_batch_size, 7);
    assert_eq!(m.batch.max_queue_delay, Duration::from_micros(1234));
    let n = repo.resolve("n", &VersionSelector::Default).unwrap();
    assert_eq!(n.batch.max_batch_size, server.max_batch_size);
    assert_eq!(n.batch.max_queue_delay, server.max_queue_delay);

    // Version 1 keeps its batching; version 2 gets the new one.
    write_config(root, "m", "max_batch_size = 3\n");
    repo.poll();
    assert_eq!(
        repo.resolve("m", &VersionSelector::Default)
            .unwrap()
            .batch
            .max_batch_size,
        7
    );
    add_version(root, "m", 2);
    repo.poll();
    let m2 = repo.resolve("m", &VersionSelector::Default).unwrap();
    assert_eq!((m2.version, m2.batch.max_batch_size), (2, 3));
    assert_eq!(m2.batch.max_queue_delay, server.max_queue_delay);
}

#[test]
fn shutdown_answers_what_is_queued_and_stops_polling() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_version(root, "m", 1);
    let repo = open(root);
    repo.poll();
    let x = x();
    let want = expected(1, &x);
    let queued: Vec<_> = (0..64)
        .map(|_| {
            repo.submit("m", &VersionSelector::Default, InferRequest::new(x.clone()))
                .unwrap()
                .1
        })
        .collect();
    repo.shutdown();
    for reply in queued {
        assert_answer(&reply.blocking_recv().unwrap().unwrap(), &want);
    }
    assert_eq!(states(&repo, "m"), [(1, VersionState::End)]);
    let e = infer(&repo, "m", &VersionSelector::Default, &x).unwrap_err();
    assert_eq!(e.status(), 404);
    add_version(root, "m", 2);
    repo.poll();
    assert_eq!(states(&repo, "m"), [(1, VersionState::End)]);
    assert_eq!(repo.load_attempts(), 1);
}

#[test]
fn a_repository_folder_that_cannot_be_listed_changes_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("models");
    add_version(&root, "m", 1);
    let repo = open(&root);
    repo.poll();
    let moved = parent.path().join("elsewhere");
    std::fs::rename(&root, &moved).unwrap();
    repo.poll();
    assert_eq!(states(&repo, "m"), [(1, VersionState::Available)]);
    let x = x();
    assert_answer(
        &infer(&repo, "m", &VersionSelector::Default, &x).unwrap(),
        &expected(1, &x),
    );
    std::fs::rename(&moved, &root).unwrap();
    std::fs::remove_dir_all(root.join("m/1")).unwrap();
    repo.poll();
    wait_state(&repo, "m", 1, VersionState::End);
}

/// A shutdown does not wait for a version being loaded longer than its shutdown
/// timeout (it waited for the load to end: a slow device held the exit). The warm-up
/// run of every load sleeps 20 s here (an injected fault); the load goes on on its own
/// thread and is dropped when it ends.
#[test]
fn a_shutdown_does_not_wait_for_a_version_being_loaded() {
    use crate::common::serve::{add_version, get, TestServer};
    use wgpu_ensemble::{Fault, FaultPlan, SessionOptions};
    let slow_warm_up =
        FaultPlan::new().on_run("seq-relu", 0, Fault::Sleep(Duration::from_secs(20)));
    let mut server = TestServer::start_with(&[], "cpu", |c| {
        c.shutdown_timeout(Duration::from_millis(500))
            .session(SessionOptions::default().faults(slow_warm_up))
    });
    add_version(server.dir.path(), "mean", 1, "mean.toml", "cpu");
    let until = Instant::now() + Duration::from_secs(10);
    let loading = loop {
        let reply = get(&server.url("/v1/models/mean"));
        let loading =
            reply.status == 200 && reply.json()["model_version_status"][0]["state"] == "LOADING";
        if loading || Instant::now() > until {
            break loading;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(loading, "version 1 was not seen loading within 10 s");
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the shutdown waited over 10 s for a load in progress"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The same while the versions found at start load: `Server::start_loading` returns
/// once it listens (`live` 200, `ready` 400), and a shutdown then waits for the load at
/// most its shutdown timeout (the command takes SIGTERM this way while it loads).
#[test]
fn a_shutdown_while_the_first_versions_load_does_not_wait_for_them() {
    use crate::common::serve::{add_version, get};
    use wgpu_ensemble::serve::{ServeConfig, Server};
    use wgpu_ensemble::{Fault, FaultPlan, SessionOptions};
    let dir = tempfile::tempdir().unwrap();
    add_version(dir.path(), "mean", 1, "mean.toml", "cpu");
    let slow_warm_up =
        FaultPlan::new().on_run("seq-relu", 0, Fault::Sleep(Duration::from_secs(20)));
    let server = Server::start_loading(
        ServeConfig::new(dir.path())
            .addr(([127, 0, 0, 1], 0).into())
            .shutdown_timeout(Duration::from_millis(500))
            .session(SessionOptions::default().faults(slow_warm_up)),
    )
    .unwrap();
    let base = format!("http://{}", server.addr());
    assert_eq!(get(&format!("{base}/v2/health/live")).status, 200);
    let ready = get(&format!("{base}/v2/health/ready"));
    assert_eq!(ready.status, 400);
    assert_eq!(ready.json()["ready"], false);
    assert!(ready.error().contains("loading"), "{}", ready.error());
    assert!(!server.wait_ready(Duration::from_millis(200)));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the shutdown waited over 10 s for the first load"
    );
}

/// Server readiness is every model's (KServe v2: "the server is ready ... if all the
/// models are ready"; Triton's strict readiness): a model whose only version fails to
/// load keeps `GET /v2/health/ready` at 400, naming it, while the other model serves;
/// a model folder with no version yet does not count; once the broken model has a
/// version that loads, 200. Without strict readiness the server is ready once the
/// first load is done. The bodies are `{"live": true}` and `{"ready": bool}`.
#[test]
fn the_server_is_ready_when_every_model_serves_a_version() {
    use crate::common::serve::{add_version, get};
    use wgpu_ensemble::serve::{ServeConfig, Server};
    let dir = tempfile::tempdir().unwrap();
    add_version(dir.path(), "good", 1, "mean.toml", "cpu");
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let broken = dir.path().join("broken").join("1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("ensemble.toml"), "not a manifest [").unwrap();
    let config = || {
        ServeConfig::new(dir.path())
            .addr(([127, 0, 0, 1], 0).into())
            .poll_interval(Duration::from_millis(50))
    };
    let lenient = Server::start(config().strict_readiness(false)).unwrap();
    let ready = get(&format!("http://{}/v2/health/ready", lenient.addr()));
    assert_eq!(ready.status, 200, "not strict: {:?}", ready.json());
    lenient.shutdown();
    let server = Server::start(config()).unwrap();
    let base = format!("http://{}", server.addr());
    let live = get(&format!("{base}/v2/health/live"));
    assert_eq!(
        (live.status, live.json()["live"].clone()),
        (200, true.into())
    );
    let ready = get(&format!("{base}/v2/health/ready"));
    assert_eq!(ready.status, 400, "a model with no version served");
    assert_eq!(ready.json()["ready"], false);
    assert!(ready.error().contains("'broken'"), "{}", ready.error());
    assert!(!ready.error().contains("'empty'"), "{}", ready.error());
    assert_eq!(get(&format!("{base}/v2/models/good/ready")).status, 200);
    // KServe's endpoints say why the model has no version served: version 1's load.
    let not_ready = get(&format!("{base}/v2/models/broken/ready"));
    assert_eq!(not_ready.status, 404);
    assert!(
        not_ready.error().contains("version 1:") && not_ready.error().contains("ensemble.toml"),
        "{}",
        not_ready.error()
    );
    add_version(dir.path(), "broken", 2, "mean.toml", "cpu");
    let started = std::time::Instant::now();
    let ready = loop {
        let ready = get(&format!("{base}/v2/health/ready"));
        if ready.status == 200 || started.elapsed() > Duration::from_secs(30) {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.status, 200, "version 2 loaded: {:?}", ready.json());
    assert_eq!(ready.json()["ready"], true);
    server.shutdown();
}
