//! Outputs never destroy anything: `predict --output` / `--members-output` (and the
//! library's writes) refuse a device node, a fifo, a socket, a directory, a symbolic
//! link and the run's own inputs however spelled, before anything is written; and a
//! SIGINT, SIGTERM or SIGHUP while the outputs are partial removes them and exits
//! 128 + the signal's number.

#![cfg(unix)]

use crate::common::{self, golden, stderr};

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wgpu_ensemble::io::{check_outputs, stage_tensors, write_tensor, write_tensors};
use wgpu_ensemble::Tensor;

/// A folder holding a run's inputs, copied from the golden fixtures: `mean.toml`, its
/// five weight files, the input `x.npy`, a hard link to it `x-link.npy` and an empty
/// folder `sub/`.
struct Run {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

const WEIGHTS: [&str; 5] = [
    "seq-relu.safetensors",
    "deep-tanh-gelu.safetensors",
    "half-sigmoid.safetensors",
    "fc-f64.safetensors",
    "bf16-gelu.safetensors",
];

impl Run {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for file in WEIGHTS.iter().chain(&["mean.toml", "x.npy"]) {
            std::fs::copy(golden(file), dir.join(file)).unwrap();
        }
        std::fs::hard_link(dir.join("x.npy"), dir.join("x-link.npy")).unwrap();
        Run { _tmp: tmp, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `predict` in the run's folder on its inputs (relative paths), on the CPU.
    fn predict(&self, output: &Path, members: &Path) -> Output {
        self.command(output, members)
            .output()
            .expect("the wgpu-ensemble binary runs")
    }

    fn command(&self, output: &Path, members: &Path) -> Command {
        self.command_under(&[], output, members)
    }

    /// `predict` run by `wrapper` (such as `nohup`), when not empty.
    fn command_under(&self, wrapper: &[&str], output: &Path, members: &Path) -> Command {
        let bin = env!("CARGO_BIN_EXE_wgpu-ensemble");
        let mut command = match wrapper {
            [] => Command::new(bin),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        command
            .current_dir(&self.dir)
            .args(["predict", "--manifest", "mean.toml", "--input", "x.npy"])
            .arg("--output")
            .arg(output)
            .arg("--members-output")
            .arg(members)
            .args(["--device", "cpu"]);
        command
    }

    /// Every entry of the folder (recursively): a regular file's bytes, a link's
    /// target, or another kind's name.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut all = BTreeMap::new();
        snapshot_into(&self.dir, &mut all);
        all
    }
}

fn snapshot_into(dir: &Path, all: &mut BTreeMap<PathBuf, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        let what = if kind.is_symlink() {
            format!("link to {}", std::fs::read_link(&path).unwrap().display())
        } else if kind.is_dir() {
            snapshot_into(&path, all);
            "folder".to_string()
        } else if kind.is_file() {
            format!("{:?}", std::fs::read(&path).unwrap())
        } else {
            kind_name(&kind).to_string()
        };
        all.insert(path, what);
    }
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "other"
    }
}

/// `out` failed, with an error that names `path` and says `what` it is.
fn assert_refused(out: &Output, path: &Path, what: &str) {
    let message = stderr(out);
    assert!(
        !out.status.success(),
        "{}: exited 0: {message}",
        path.display()
    );
    assert!(
        message.contains("error")
            && message.contains("refused as an output")
            && message.contains(&path.display().to_string())
            && message.contains(what),
        "{} ({what}): {message}",
        path.display()
    );
}

#[test]
fn dev_null_as_an_output_is_refused_and_stays_a_device() {
    let run = Run::new();
    let before = run.snapshot();
    let null = Path::new("/dev/null");
    for (output, members) in [
        (null.to_path_buf(), run.path("members.npy")),
        (run.path("y.npy"), null.to_path_buf()),
    ] {
        let out = run.predict(&output, &members);
        assert_refused(&out, null, "a character device");
        let kind = std::fs::symlink_metadata(null).unwrap().file_type();
        assert!(kind.is_char_device(), "/dev/null is now {kind:?}");
        assert_eq!(run.snapshot(), before, "something was written");
    }
}

/// `mknod NAME c 1 3` (a null device) where the tests run as root; `None` elsewhere.
fn make_char_device(path: &Path) -> Option<()> {
    let made = Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("skipping the character device made by mknod: not root here");
    }
    made.then_some(())
}

#[test]
fn outputs_that_are_not_regular_files_are_refused_and_kept() {
    let run = Run::new();
    let specials = run.path("specials");
    std::fs::create_dir(&specials).unwrap();
    let fifo = specials.join("fifo.npy");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let socket = specials.join("socket.npy");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let folder = specials.join("folder.npy");
    std::fs::create_dir(&folder).unwrap();
    let device = specials.join("null.npy");
    let mut cases = vec![
        (fifo, "a named pipe (fifo)"),
        (socket, "a socket"),
        (folder, "a directory"),
    ];
    if make_char_device(&device).is_some() {
        cases.push((device, "a character device"));
    }
    // The snapshot holds each special file's kind: they are all still what they were.
    let before = run.snapshot();
    for (path, what) in &cases {
        for as_members in [false, true] {
            let (output, members) = if as_members {
                (run.path("y.npy"), path.clone())
            } else {
                (path.clone(), run.path("members.npy"))
            };
            let out = run.predict(&output, &members);
            assert_refused(&out, path, what);
            assert_eq!(run.snapshot(), before, "{what}: something was written");
        }
    }
}

#[test]
fn a_symbolic_link_as_an_output_is_refused_and_its_target_kept() {
    let run = Run::new();
    std::fs::write(run.path("target.npy"), b"what the user keeps").unwrap();
    std::os::unix::fs::symlink("target.npy", run.path("link.npy")).unwrap();
    std::os::unix::fs::symlink("absent.npy", run.path("dangling.npy")).unwrap();
    // A link to an input would otherwise replace the input's link, not the input.
    std::os::unix::fs::symlink("mean.toml", run.path("manifest-link.toml")).unwrap();
    let before = run.snapshot();
    for link in ["link.npy", "dangling.npy", "manifest-link.toml"] {
        for as_members in [false, true] {
            let (output, members) = if as_members {
                (PathBuf::from("y.npy"), PathBuf::from(link))
            } else {
                (PathBuf::from(link), PathBuf::from("members.npy"))
            };
            let out = run.predict(&output, &members);
            assert_refused(&out, Path::new(link), "a symbolic link");
            assert_eq!(run.snapshot(), before, "{link}: something was written");
        }
    }
    assert!(!run.path("absent.npy").exists());
}

#[test]
fn outputs_naming_the_runs_inputs_are_refused_however_spelled() {
    let run = Run::new();
    let absolute_manifest = run.path("mean.toml");
    let cases: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from("mean.toml"), "mean.toml"),
        (PathBuf::from("./mean.toml"), "mean.toml"),
        (PathBuf::from("sub/../mean.toml"), "mean.toml"),
        (absolute_manifest, "mean.toml"),
        (
            PathBuf::from("seq-relu.safetensors"),
            "seq-relu.safetensors",
        ),
        (
            PathBuf::from("./sub/../bf16-gelu.safetensors"),
            "bf16-gelu.safetensors",
        ),
        (PathBuf::from("../run/x.npy"), "x.npy"),
        // A hard link to the input: the same file under another name.
        (PathBuf::from("x-link.npy"), "x.npy"),
    ];
    let before = run.snapshot();
    for (path, input) in &cases {
        for as_members in [false, true] {
            let (output, members) = if as_members {
                (PathBuf::from("y.npy"), path.clone())
            } else {
                (path.clone(), PathBuf::from("members.npy"))
            };
            let out = run.predict(&output, &members);
            assert_refused(&out, path, "this run's input");
            assert!(
                stderr(&out).contains(input),
                "{}: {}",
                path.display(),
                stderr(&out)
            );
            assert_eq!(
                run.snapshot(),
                before,
                "{}: something was written",
                path.display()
            );
        }
    }
    // The same run with outputs of their own writes both.
    let out = run.predict(Path::new("y.npy"), Path::new("sub/members.npy"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.path("y.npy").is_file() && run.path("sub/members.npy").is_file());
}

/// The library's writes make the same checks: `write_tensor` refuses a link and a
/// device node, `stage_tensors` an output that is one of the inputs it is given, and
/// dropping staged outputs removes them.
#[test]
fn the_library_refuses_what_the_tool_refuses() {
    let run = Run::new();
    let t = Tensor::matrix(1, 2, vec![1.0, 2.0]).unwrap();
    std::fs::write(run.path("target.npy"), b"kept").unwrap();
    std::os::unix::fs::symlink("target.npy", run.path("link.npy")).unwrap();
    let before = run.snapshot();
    for (path, what) in [
        (run.path("link.npy"), "a symbolic link"),
        (PathBuf::from("/dev/null"), "a character device"),
        (run.path("sub"), "a directory"),
    ] {
        let err = write_tensor(&path, &t).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains(what),
            "{message}"
        );
        let err = write_tensors(&[(run.path("y.npy"), t.clone()), (path.clone(), t.clone())])
            .unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    assert!(std::fs::symlink_metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    let input = run.path("x.npy");
    let spelled = run.dir.join("sub").join("..").join("x-link.npy");
    let err = stage_tensors(&[(spelled.clone(), t.clone())], &[&input]).unwrap_err();
    assert!(err.to_string().contains("this run's input"), "{err}");
    let err = check_outputs(
        &[&run.path("./fc-f64.safetensors")],
        &[&run.path("fc-f64.safetensors")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("this run's input"), "{err}");
    assert_eq!(run.snapshot(), before, "something was written");

    let staged = stage_tensors(&[(run.path("y.npy"), t.clone())], &[&input]).unwrap();
    assert!(partial_files(&run.dir).len() == 1 && !run.path("y.npy").exists());
    drop(staged);
    assert_eq!(run.snapshot(), before, "dropped staged outputs were left");
    stage_tensors(&[(run.path("y.npy"), t.clone())], &[&input])
        .unwrap()
        .commit()
        .unwrap();
    assert!(partial_files(&run.dir).is_empty() && run.path("y.npy").is_file());
}

fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

/// Starts `predict` (by `wrapper`) held `pause_ms` by its test-only pause with both
/// outputs written under temporary names, and waits until they are there.
fn start_with_partial_outputs(run: &Run, wrapper: &[&str], pause_ms: u64) -> Child {
    let mut child = run
        .command_under(wrapper, Path::new("y.npy"), Path::new("members.npy"))
        .env(
            "WGPU_ENSEMBLE_TEST_PAUSE_BEFORE_RENAME_MS",
            pause_ms.to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_files(&run.dir).len() < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "predict exited ({status}) before its outputs were partial: {}",
                child_stderr(&mut child)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no partial outputs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn child_stderr(child: &mut Child) -> String {
    let mut message = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut message);
    }
    message
}

fn send(signal: &str, child: &Child) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal}");
}

/// `predict` held with both outputs partial, then sent `signal`: it exits with
/// `code`, and neither a partial file nor an output is left.
fn signal_while_outputs_are_partial(signal: &str, code: i32) {
    if common::ignored_here(code - 128) {
        eprintln!("skipping SIG{signal}: the tests run with it ignored, as would predict");
        return;
    }
    let run = Run::new();
    let before = run.snapshot();
    let mut child = start_with_partial_outputs(&run, &[], 60_000);
    send(signal, &child);
    let status = common::wait_bounded(&mut child, Duration::from_secs(10), signal);
    let message = child_stderr(&mut child);
    assert_eq!(status.code(), Some(code), "{signal}: {status}: {message}");
    assert!(message.contains(&format!("SIG{signal}")), "{message}");
    assert_eq!(
        run.snapshot(),
        before,
        "{signal}: partial files or outputs were left"
    );
}

/// A signal ignored when `predict` starts stays ignored: SIGHUP under `nohup`
/// neither stops the run nor loses its outputs.
#[test]
fn sighup_under_nohup_is_ignored() {
    let run = Run::new();
    let mut child = start_with_partial_outputs(&run, &["nohup"], 2_000);
    send("HUP", &child);
    let status = common::wait_bounded(&mut child, Duration::from_secs(30), "nohup");
    let message = child_stderr(&mut child);
    assert!(status.success(), "{status}: {message}");
    assert!(partial_files(&run.dir).is_empty(), "{message}");
    assert!(run.path("y.npy").is_file() && run.path("members.npy").is_file());
}

#[test]
fn sigint_while_outputs_are_partial_removes_them() {
    signal_while_outputs_are_partial("INT", 130);
}

#[test]
fn sigterm_while_outputs_are_partial_removes_them() {
    signal_while_outputs_are_partial("TERM", 143);
}

#[test]
fn sighup_while_outputs_are_partial_removes_them() {
    signal_while_outputs_are_partial("HUP", 129);
}

/// A signal while the members run (one sleeps a minute) stops `predict` at once, with
/// 128 + its number, without waiting for the member, and writes nothing.
#[test]
fn sigterm_during_a_run_stops_it_without_waiting_for_the_members() {
    let run = Run::new();
    let before = run.snapshot();
    let mut child = run
        .command(Path::new("y.npy"), Path::new("members.npy"))
        .args(["--fault", "seq-relu=sleep:60000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its signal thread (named "signals") is there: the handler is in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
    while !std::fs::read_dir(&tasks).is_ok_and(|tasks| {
        tasks.filter_map(|t| t.ok()).any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "signals")
        })
    }) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("predict exited ({status}): {}", child_stderr(&mut child));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no signal thread after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    send("TERM", &child);
    let status = common::wait_bounded(&mut child, Duration::from_secs(10), "TERM during a run");
    let message = child_stderr(&mut child);
    assert_eq!(status.code(), Some(143), "{status}: {message}");
    assert_eq!(run.snapshot(), before, "something was written");
}
