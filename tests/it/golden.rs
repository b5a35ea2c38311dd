//! The crate's results on model files made by an independent implementation
//! (`tests/fixtures/make_golden.py`, numpy only), on every placement available.

use crate::common;

use common::{assert_close, golden, placement_tests, read_f64};
use wgpu_ensemble::io::{load_model, read_matrix, save_model, LoadOptions, Manifest};
use wgpu_ensemble::{Placement, RunOptions, Session};

const MANIFESTS: [(&str, &str); 3] = [
    ("mean.toml", "expected_mean.npy"),
    ("weighted_mean.toml", "expected_weighted_mean.npy"),
    ("vote.toml", "expected_vote.npy"),
];

fn check_manifest(manifest: &str, expected: &str, device: Option<&Placement>, label: &str) {
    let manifest = Manifest::load(golden(manifest)).unwrap();
    let session = Session::new(manifest.graph(device).unwrap()).unwrap();
    let (member_shape, members) = read_f64(&golden("expected_members.npy"));
    let (_, want) = read_f64(&golden(expected));
    for input in ["x.npy", "x_f64.npy"] {
        let x = read_matrix(golden(input)).unwrap();
        let run = session
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        let per_member = member_shape[1] * member_shape[2];
        assert_eq!(run.members.len(), member_shape[0]);
        for (i, m) in run.members.iter().enumerate() {
            assert_eq!(m.name, manifest.members[i].name);
            assert_close(
                &format!("{label}: {input}: member {} on {}", m.name, m.device),
                m.output.as_ref().unwrap().as_slice(),
                &members[i * per_member..(i + 1) * per_member],
            );
        }
        assert_close(
            &format!("{label}: {input}: {}", manifest.aggregate.name()),
            run.aggregate.as_slice(),
            &want,
        );
    }
}

fn golden_ensembles(place: Placement, label: &str) {
    for (manifest, expected) in MANIFESTS {
        check_manifest(manifest, expected, Some(&place), label);
    }
}

placement_tests!(golden_ensembles;
    golden_ensembles_on_cpu: Cpu,
    golden_ensembles_on_vulkan: Vulkan,
    golden_ensembles_on_gl: Gl,
);

#[test]
fn golden_ensembles_with_the_manifest_devices() {
    // The manifests say `auto` for every member.
    common::usable_adapters("golden auto");
    for (manifest, expected) in MANIFESTS {
        check_manifest(manifest, expected, None, "manifest devices");
    }
}

#[test]
fn saved_members_load_back_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::load(golden("mean.toml")).unwrap();
    for m in &manifest.members {
        let model = load_model(&m.file, &m.options).unwrap();
        let path = dir.path().join(format!("{}.safetensors", m.name));
        save_model(&model, &path).unwrap();
        // The saved file carries its activations: no options needed.
        let back = load_model(&path, &LoadOptions::default()).unwrap();
        assert_eq!(back.layers().len(), model.layers().len());
        for (a, b) in model.layers().iter().zip(back.layers()) {
            assert_eq!(a.activation(), b.activation());
            assert_eq!(a.weight().shape(), b.weight().shape());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(a.weight().as_slice()),
                bits(b.weight().as_slice()),
                "{}",
                m.name
            );
            assert_eq!(bits(a.bias()), bits(b.bias()), "{}", m.name);
        }
    }
}
