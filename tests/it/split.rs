//! One member across several devices (`Split`): split outputs equal the whole member's
//! (f64 reference) for both kinds, 1 to 3 parts, uneven and width-1 column parts,
//! every activation, micro-batches that do not divide the batch; on the CPU, every
//! adapter and across CPU + Vulkan + GL; through `predict` from a manifest; faults on
//! one part; bad splits and manifests.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{
    assert_close, cli, golden, input, placement_tests, read_f64, reference_forward, reference_mean,
    reference_vote, stderr,
};
use wgpu_ensemble::io::Manifest;
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, ExecutionDevice, Fault, FaultPlan, Graph, MemberStatus, Model,
    Placement, QuorumPolicy, RunOptions, RunOutput, Session, SessionOptions, Split, SplitKind,
};

const IN: usize = 7;
const OUT: usize = 3;

/// Models of 7 inputs and 3 outputs covering every activation, with layers of 1 to 9
/// outputs: `a` pairs its first two layers by columns, `b` gathers a softmax then
/// pairs, `c` has one layer, `d` has a layer of 2 outputs before a wider one (not
/// paired: gathered with its activation on the device).
fn models() -> [(&'static str, Model); 4] {
    [
        (
            "a",
            Model::random(&[IN, 5, 4, OUT], &[Relu, Tanh, Softmax], 11).unwrap(),
        ),
        (
            "b",
            Model::random(&[IN, 6, 9, OUT], &[Softmax, Sigmoid, Gelu], 12).unwrap(),
        ),
        ("c", Model::random(&[IN, OUT], &[Identity], 13).unwrap()),
        (
            "d",
            Model::random(&[IN, 2, 8, OUT], &[Gelu, Relu, Softmax], 14).unwrap(),
        ),
    ]
}

fn model(name: &str) -> Model {
    models()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| m)
        .unwrap()
}

/// The splits each model is run with, over `n` devices from `devices(n)`: columns over
/// 1, 2 and 3 parts (uneven widths: 5 outputs in 3 parts are 2, 2, 1; 3 outputs are
/// three parts of width 1), layers over 1 to 3 stages with 1 to 8 micro-batches
/// (batches of 5 and 13 rows, which none of 2, 3, 4, 8 divides) and with boundaries.
fn splits(devices: &dyn Fn(usize) -> Vec<Placement>) -> Vec<(String, &'static str, Split)> {
    let mut s = Vec::new();
    let mut add = |model: &'static str, label: String, split: Split| {
        s.push((format!("{model} {label}"), model, split));
    };
    for n in 1..=3 {
        add("a", format!("columns x{n}"), Split::columns(devices(n)));
        add("c", format!("columns x{n}"), Split::columns(devices(n)));
    }
    for n in 2..=3 {
        add("b", format!("columns x{n}"), Split::columns(devices(n)));
    }
    add("d", "columns x2".into(), Split::columns(devices(2)));
    add(
        "a",
        "layers x1 mb4".into(),
        Split::layers(devices(1)).micro_batches(4),
    );
    add(
        "a",
        "layers x2 mb2".into(),
        Split::layers(devices(2)).micro_batches(2),
    );
    add(
        "a",
        "layers x3 mb4".into(),
        Split::layers(devices(3)).micro_batches(4),
    );
    add(
        "a",
        "layers x2 at [2] mb3".into(),
        Split::layers(devices(2))
            .boundaries(vec![2])
            .micro_batches(3),
    );
    add(
        "b",
        "layers x3 default mb".into(),
        Split::layers(devices(3)),
    );
    add(
        "b",
        "layers x2 at [1] mb1".into(),
        Split::layers(devices(2))
            .boundaries(vec![1])
            .micro_batches(1),
    );
    add(
        "c",
        "layers x1 mb8".into(),
        Split::layers(devices(1)).micro_batches(8),
    );
    add(
        "d",
        "layers x2 mb8".into(),
        Split::layers(devices(2)).micro_batches(8),
    );
    s
}

/// One graph holding every split of [`splits`] and two whole members, run at 5, 13
/// and 1 rows: each member's output against its model's f64 reference, and the mean.
fn check_splits(devices: &dyn Fn(usize) -> Vec<Placement>, whole: Placement, label: &str) {
    let splits = splits(devices);
    let mut g = Graph::builder(IN);
    for (name, m, split) in &splits {
        g = g.split_member(name.clone(), model(m), split.clone());
    }
    g = g.member("whole a", model("a"), whole.clone());
    g = g.member("whole b", model("b"), whole);
    let session = Session::new(g.build().unwrap()).unwrap();
    for ((name, _, split), (member, device)) in splits.iter().zip(session.members()) {
        assert_eq!(name, member);
        match device {
            ExecutionDevice::Split { kind, parts } => {
                assert_eq!(*kind, split.kind(), "{label} {name}");
                assert_eq!(parts.len(), split.devices().len(), "{label} {name}");
            }
            other => panic!("{label} {name}: reported on {other}, not as a split"),
        }
    }
    let mut names: Vec<&str> = splits.iter().map(|s| s.1).collect();
    names.extend(["a", "b"]);
    for (rows, seed) in [(5, 1), (13, 2), (1, 3)] {
        let x = input(rows, IN, seed);
        let out = session
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        assert!(out.is_complete(), "{label}: {:?}", statuses(&out));
        let mut refs = Vec::new();
        for (report, m) in out.members.iter().zip(&names) {
            let want = reference_forward(&model(m), &x);
            let got = report.output.as_ref().unwrap();
            assert_close(
                &format!("{label}: {} at {rows} rows", report.name),
                got.as_slice(),
                &want,
            );
            refs.push(want);
        }
        let weights = vec![1.0; refs.len()];
        assert_close(
            &format!("{label}: the mean at {rows} rows"),
            out.aggregate.as_slice(),
            &reference_mean(&refs, &weights),
        );
    }
}

fn statuses(out: &RunOutput) -> Vec<String> {
    out.members
        .iter()
        .map(|m| format!("{}: {:?}", m.name, m.status))
        .collect()
}

/// Every part on `place`: the CPU, or separate devices (queues) of one adapter.
fn split_on(place: Placement, label: &str) {
    let devices = |n: usize| -> Vec<Placement> {
        (0..n)
            .map(|slot| match place {
                Placement::Adapter(adapter) => Placement::Queue { adapter, slot },
                _ => Placement::Cpu,
            })
            .collect()
    };
    check_splits(&devices, place.clone(), label);
}

placement_tests!(split_outputs_equal_the_whole_member;
    split_outputs_equal_the_whole_member_cpu: Cpu,
    split_outputs_equal_the_whole_member_vulkan: Vulkan,
    split_outputs_equal_the_whole_member_gl: Gl);

fn split_outputs_equal_the_whole_member(place: Placement, label: &str) {
    split_on(place, label);
}

/// Parts on the CPU, a Vulkan adapter and a GL adapter, in that order and rotated.
#[test]
fn split_across_cpu_vulkan_and_gl() {
    let test = "split across cpu, vulkan and gl";
    let on = |t| common::adapters_on(test, t).first().map(|a| a.index);
    let (Some(vk), Some(gl)) = (on(common::Target::Vulkan), on(common::Target::Gl)) else {
        return;
    };
    let all = [
        Placement::Cpu,
        Placement::Adapter(vk),
        Placement::Adapter(gl),
    ];
    let devices = |n: usize| -> Vec<Placement> { all.iter().take(n).cloned().collect() };
    check_splits(&devices, Placement::Adapter(vk), "cpu+vulkan+gl");
    let rotated =
        |n: usize| -> Vec<Placement> { all.iter().cycle().skip(1).take(n).cloned().collect() };
    check_splits(&rotated, Placement::Cpu, "vulkan+gl+cpu");
}

/// A vote over split members counts each as one member.
#[test]
fn a_vote_counts_a_split_member_once() {
    let w = [0.5f32, 0.3, 0.2];
    let g = Graph::builder(IN)
        .split_member(
            "layers",
            model("a"),
            Split::layers(vec![Placement::Cpu, Placement::Cpu]),
        )
        .split_member(
            "columns",
            model("b"),
            Split::columns(vec![Placement::Cpu; 3]),
        )
        .member("whole", model("d"), Placement::Cpu)
        .aggregate(Aggregate::Vote {
            weights: Some(w.to_vec()),
        })
        .build()
        .unwrap();
    let session = Session::new(g).unwrap();
    let x = input(11, IN, 5);
    let out = session.run(&x, &RunOptions::default()).unwrap();
    let refs: Vec<Vec<f64>> = ["a", "b", "d"]
        .iter()
        .map(|m| reference_forward(&model(m), &x))
        .collect();
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    assert_close(
        "vote with split members",
        out.aggregate.as_slice(),
        &reference_vote(&refs, &w64, OUT),
    );
}

/// A split of one device is the member whole, whatever the kind.
#[test]
fn splits_check_their_model() {
    let m = model("a"); // 7-5-4-3, three layers
    let bad = |split: Split, key: &str| {
        let e = Graph::builder(IN)
            .split_member("m", m.clone(), split)
            .build()
            .err()
            .unwrap_or_else(|| panic!("{key}: built"));
        match &e {
            Error::Split { key: k, member, .. } => {
                assert_eq!((*k, member.as_str()), (key, "m"), "{e}");
            }
            other => panic!("{key}: {other}"),
        }
        e.to_string()
    };
    let cpu = |n| vec![Placement::Cpu; n];
    let e = bad(Split::layers(vec![]), "devices");
    assert!(e.contains("empty"), "{e}");
    let e = bad(Split::columns(vec![]), "devices");
    assert!(e.contains("empty"), "{e}");
    let e = bad(Split::layers(cpu(2)).micro_batches(0), "micro_batches");
    assert!(e.contains("0; expected at least 1"), "{e}");
    let e = bad(Split::layers(cpu(4)), "devices");
    assert!(e.contains("4 devices") && e.contains("3 layer"), "{e}");
    let e = bad(Split::layers(cpu(2)).boundaries(vec![3]), "boundaries");
    assert!(
        e.contains("3 is out of range") && e.contains("from 1 to 2"),
        "{e}"
    );
    let e = bad(Split::layers(cpu(2)).boundaries(vec![0]), "boundaries");
    assert!(e.contains("0 is out of range"), "{e}");
    let e = bad(Split::layers(cpu(3)).boundaries(vec![2, 1]), "boundaries");
    assert!(e.contains("[2, 1]") && e.contains("increasing"), "{e}");
    let e = bad(Split::layers(cpu(3)).boundaries(vec![1, 1]), "boundaries");
    assert!(e.contains("increasing"), "{e}");
    let e = bad(Split::layers(cpu(3)).boundaries(vec![1]), "boundaries");
    assert!(e.contains("1 value(s) for 3 devices; expected 2"), "{e}");
    // Layer 2 of `a` has 3 outputs: four devices cannot each take one.
    let e = bad(Split::columns(cpu(4)), "devices");
    assert!(e.contains("layer 2 of 3 output(s)"), "{e}");
    let e = bad(Split::columns(cpu(2)).micro_batches(2), "micro_batches");
    assert!(e.contains("for split = \"layers\" only"), "{e}");
    let e = bad(Split::columns(cpu(2)).boundaries(vec![1]), "boundaries");
    assert!(e.contains("for split = \"layers\" only"), "{e}");
}

/// A fault plan may name a part of a split member, and no part beyond its devices.
#[test]
fn a_fault_plan_names_parts_that_exist() {
    let g = Graph::builder(IN)
        .split_member("s", model("a"), Split::layers(vec![Placement::Cpu; 2]))
        .member("w", model("a"), Placement::Cpu)
        .build()
        .unwrap();
    for (member, part) in [("s", 2), ("w", 1)] {
        let plan = FaultPlan::new().on_part_runs(member, part, 0..1, Fault::LoseDevice);
        let e = Session::with_options(g.clone(), SessionOptions::default().faults(plan))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(&format!("part {part} of member '{member}'")),
            "{member} part {part}: {e}"
        );
    }
}

/// A member's status in one word (`failed: <error>` for a failure).
pub(crate) fn status(out: &RunOutput, name: &str) -> String {
    let m = out.members.iter().find(|m| m.name == name).unwrap();
    match &m.status {
        MemberStatus::Finished => "finished".into(),
        MemberStatus::Late => "late".into(),
        MemberStatus::Failed(e) => format!("failed: {e}"),
        other => format!("{other:?}"),
    }
}

/// A split member over two devices of one adapter and a whole member on the CPU:
/// losing the device of part 1 fails the split member on that run only (the device is
/// made again), losing it for good fails it from then on; the whole member is
/// unaffected and the quorum of 1 is met every time.
fn part_device_loss(kind: SplitKind, label: &str) {
    let Some(adapter) = common::usable_adapters(label).first().map(|a| a.index) else {
        return;
    };
    let devices = vec![
        Placement::Queue { adapter, slot: 1 },
        Placement::Queue { adapter, slot: 2 },
    ];
    let graph = || {
        Graph::builder(IN)
            .split_member("split", model("a"), Split::new(kind, devices.clone()))
            .member("whole", model("b"), Placement::Cpu)
            .build()
            .unwrap()
    };
    let options = RunOptions::default().quorum(QuorumPolicy::Quorum(1));
    let both = |x: &wgpu_ensemble::Tensor| {
        reference_mean(
            &[
                reference_forward(&model("a"), x),
                reference_forward(&model("b"), x),
            ],
            &[1.0, 1.0],
        )
    };
    let plan = FaultPlan::new().on_part_runs("split", 1, 1..2, Fault::LoseDevice);
    let s = Session::with_options(graph(), SessionOptions::default().faults(plan)).unwrap();
    for run in 0..4 {
        let x = input(6, IN, 40 + run);
        let out = s.run(&x, &options).unwrap();
        if run == 1 {
            let st = status(&out, "split");
            assert!(
                st.starts_with("failed") && st.contains("lost"),
                "{label}: {st}"
            );
            assert_eq!(status(&out, "whole"), "finished");
            assert_close(
                &format!("{label} run 1: the whole member alone"),
                out.aggregate.as_slice(),
                &reference_forward(&model("b"), &x),
            );
        } else {
            assert!(out.is_complete(), "{label} run {run}: {:?}", statuses(&out));
            assert_close(
                &format!("{label} run {run}"),
                out.aggregate.as_slice(),
                &both(&x),
            );
        }
    }
    let plan = FaultPlan::new()
        .from_run("split", 1, Fault::Fail)
        .on_part_runs("split", 1, 1..2, Fault::LoseDevicePermanently);
    let s = Session::with_options(graph(), SessionOptions::default().faults(plan)).unwrap();
    let x = input(6, IN, 50);
    assert!(s.run(&x, &options).unwrap().is_complete());
    let s = Session::with_options(
        graph(),
        SessionOptions::default().faults(FaultPlan::new().on_part_runs(
            "split",
            1,
            1..2,
            Fault::LoseDevicePermanently,
        )),
    )
    .unwrap();
    for run in 0..3 {
        let x = input(6, IN, 60 + run);
        let out = s.run(&x, &options).unwrap();
        let st = status(&out, "split");
        if run == 0 {
            assert_eq!(st, "finished", "{label}");
        } else {
            assert!(st.starts_with("failed"), "{label} run {run}: {st}");
            assert_eq!(status(&out, "whole"), "finished", "{label} run {run}");
        }
    }
}

#[test]
fn losing_a_part_device_fails_the_split_member_only_layers() {
    part_device_loss(SplitKind::Layers, "part device loss, layers");
}

#[test]
fn losing_a_part_device_fails_the_split_member_only_columns() {
    part_device_loss(SplitKind::Columns, "part device loss, columns");
}

/// A CPU part cannot be lost: the member fails that run as injected; a late part makes
/// the member late; a panic in a part fails the member; the session goes on.
#[test]
fn faults_on_cpu_parts_and_late_parts() {
    let graph = |kind| {
        Graph::builder(IN)
            .split_member(
                "split",
                model("a"),
                Split::new(kind, vec![Placement::Cpu; 2]),
            )
            .member("whole", model("b"), Placement::Cpu)
            .build()
            .unwrap()
    };
    for kind in [SplitKind::Layers, SplitKind::Columns] {
        let plan = FaultPlan::new()
            .on_part_runs("split", 1, 0..1, Fault::LoseDevice)
            .on_run("split", 1, Fault::Sleep(Duration::from_millis(400)))
            .on_run("split", 2, Fault::Panic);
        let s = Session::with_options(graph(kind), SessionOptions::default().faults(plan)).unwrap();
        let options = RunOptions::default()
            .quorum(QuorumPolicy::Quorum(1))
            .timeout(Duration::from_millis(150));
        let x = input(4, IN, 70);
        let out = s.run(&x, &options).unwrap();
        let st = status(&out, "split");
        assert!(st.contains("fault injection"), "{kind}: {st}");
        let out = s.run(&x, &options).unwrap();
        assert_eq!(status(&out, "split"), "late", "{kind}");
        // The late job ends before the next run starts.
        std::thread::sleep(Duration::from_millis(400));
        let out = s.run(&x, &options).unwrap();
        assert!(status(&out, "split").starts_with("failed"), "{kind}");
        let out = s.run(&x, &RunOptions::default()).unwrap();
        assert!(out.is_complete(), "{kind}: {:?}", statuses(&out));
        let both = reference_mean(
            &[
                reference_forward(&model("a"), &x),
                reference_forward(&model("b"), &x),
            ],
            &[1.0, 1.0],
        );
        assert_close(
            &format!("{kind} after the faults"),
            out.aggregate.as_slice(),
            &both,
        );
    }
}

/// A manifest of the golden members with two of them split: `predict` writes the
/// golden outputs.
#[test]
fn predict_from_a_manifest_with_split_members() {
    let dir = tempfile::tempdir().unwrap();
    let g = |f: &str| golden(f).display().to_string().replace('\\', "/");
    let manifest = dir.path().join("split.toml");
    let text = format!(
        r#"[aggregate]
kind = "mean"

[[member]]
name = "seq-relu"
file = "{}"
devices = ["cpu", "cpu"]
split = "columns"

[[member]]
name = "deep-tanh-gelu"
file = "{}"
devices = ["cpu", "cpu", "cpu"]
split = "layers"
micro_batches = 4

[[member]]
name = "half-sigmoid"
file = "{}"
device = "cpu"

[[member]]
name = "fc-f64"
file = "{}"
activations = ["relu", "tanh", "softmax"]
devices = ["cpu", "cpu"]
split = "layers"
boundaries = [2]
micro_batches = 5

[[member]]
name = "bf16-gelu"
file = "{}"
activations = ["gelu", "identity"]
layers = ["b", "a"]
devices = ["cpu", "cpu"]
split = "columns"
"#,
        g("seq-relu.safetensors"),
        g("deep-tanh-gelu.safetensors"),
        g("half-sigmoid.safetensors"),
        g("fc-f64.safetensors"),
        g("bf16-gelu.safetensors"),
    );
    std::fs::write(&manifest, text).unwrap();
    let output = dir.path().join("y.npy");
    let out = cli(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--input",
        golden("x_f64.npy").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, want) = read_f64(&golden("expected_mean.npy"));
    let y = wgpu_ensemble::io::read_matrix(&output).unwrap();
    assert_close("predict with split members", y.as_slice(), &want);
}

/// `text` as a manifest's error (parsing, or building its graph).
fn manifest_error(dir: &Path, member: &str) -> String {
    let file = golden("seq-relu.safetensors")
        .display()
        .to_string()
        .replace('\\', "/");
    let text = format!("[[member]]\nname = \"m\"\nfile = \"{file}\"\n{member}\n");
    let path = dir.join("bad.toml");
    match Manifest::parse(&path, &text) {
        Err(e) => e.to_string(),
        Ok(m) => m
            .graph(None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted: {member}")),
    }
}

#[test]
fn bad_split_manifests_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // seq-relu is 12-16-5 (relu, softmax): two layers; by columns its pair's first
    // layer, of 16 outputs, is the one split by outputs.
    let many = |n: usize| vec!["\"cpu\""; n].join(", ");
    let columns17 = format!("devices = [{}]\nsplit = \"columns\"", many(17));
    let layers3 = format!("devices = [{}]\nsplit = \"layers\"", many(3));
    for (member, wants) in [
        (
            "device = \"cpu\"\ndevices = [\"cpu\"]\nsplit = \"layers\"",
            &["`devices`", "with `device`"][..],
        ),
        (
            "devices = []\nsplit = \"layers\"",
            &["`devices`", "empty"][..],
        ),
        ("devices = [\"cpu\"]", &["`split`", "missing"][..]),
        (
            "devices = [\"cpu\"]\nsplit = \"rows\"",
            &["`split`", "\"rows\"", "\"layers\" or \"columns\""][..],
        ),
        ("split = \"layers\"", &["`split`", "without `devices`"][..]),
        (
            "micro_batches = 2",
            &["`micro_batches`", "without `devices`"][..],
        ),
        (
            "devices = [\"cpu\", \"gpu\"]\nsplit = \"layers\"",
            &["invalid device 'gpu'"][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\"]\nsplit = \"layers\"\nmicro_batches = 0",
            &["`micro_batches`", "0; expected at least 1"][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\"]\nsplit = \"layers\"\nmicro_batches = -1",
            &["micro_batches"][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\", \"cpu\"]\nsplit = \"layers\"\nboundaries = [1, 1]",
            &["`boundaries`", "increasing"][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\"]\nsplit = \"layers\"\nboundaries = [2]",
            &[
                "`boundaries`",
                "2 is out of range; expected a layer from 1 to 1",
            ][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\"]\nsplit = \"columns\"\nmicro_batches = 2",
            &["`micro_batches`", "layers\" only"][..],
        ),
        (
            "devices = [\"cpu\", \"cpu\"]\nsplit = \"columns\"\nboundaries = [1]",
            &["`boundaries`", "layers\" only"][..],
        ),
        (
            columns17.as_str(),
            &["`devices`", "17 devices for layer 0 of 16 output(s)"][..],
        ),
        (
            layers3.as_str(),
            &["`devices`", "3 devices for a model of 2 layer(s)"][..],
        ),
    ] {
        let e = manifest_error(dir.path(), member);
        assert!(e.contains("bad.toml"), "{member}: {e}");
        for want in wants {
            assert!(e.contains(want), "{member}: {e} (wants {want})");
        }
    }
}

/// A pipeline (between-graph) runs split members as a session does, with a worker
/// per device or per member.
#[test]
fn a_pipeline_runs_split_members() {
    use wgpu_ensemble::{Pipeline, PipelineOptions};
    for per_member in [false, true] {
        let g = Graph::builder(IN)
            .split_member(
                "layers",
                model("a"),
                Split::layers(vec![Placement::Cpu; 3]).micro_batches(2),
            )
            .split_member(
                "columns",
                model("b"),
                Split::columns(vec![Placement::Cpu; 2]),
            )
            .member("whole", model("d"), Placement::Cpu)
            .build()
            .unwrap();
        let pipeline =
            Pipeline::new(g, PipelineOptions::default().worker_per_member(per_member)).unwrap();
        let inputs: Vec<_> = (0..5)
            .map(|i| input(1 + i * 3, IN, 80 + i as u64))
            .collect();
        for x in &inputs {
            pipeline.send(x).unwrap();
        }
        for (i, x) in inputs.iter().enumerate() {
            let out = pipeline.recv().expect("a result per input");
            assert_eq!(out.id, i as u64);
            let refs: Vec<Vec<f64>> = ["a", "b", "d"]
                .iter()
                .map(|m| reference_forward(&model(m), x))
                .collect();
            assert_close(
                &format!("pipeline (worker per member: {per_member}) input {i}"),
                out.aggregate.unwrap().as_slice(),
                &reference_mean(&refs, &[1.0; 3]),
            );
        }
    }
}
