//! The committed digits ensemble (scikit-learn MLPClassifiers exported by
//! `examples/data/digits/train_digits.py`) against scikit-learn's own `predict_proba` on the 360
//! test digits, on every placement available.

use crate::common;

use std::path::{Path, PathBuf};

use common::{assert_close, placement_tests};
use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::{Placement, RunOptions, Session};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data/digits")
        .join(file)
}

fn scikit_learn_probabilities(place: Placement, label: &str) {
    let manifest = Manifest::load(data("digits.toml")).unwrap();
    let x = read_matrix(data("x_test.npy")).unwrap();
    let file = std::fs::File::open(data("sklearn_proba.npy")).unwrap();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    assert_eq!(npy.shape(), &[5, 360, 10]);
    let want: Vec<f64> = npy
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let session = Session::new(manifest.graph(Some(&place)).unwrap()).unwrap();
    let run = session
        .run(&x, &RunOptions::default().member_outputs(true))
        .unwrap();
    for (i, m) in run.members.iter().enumerate() {
        // scikit-learn computes in float64 with float64 weights; the export
        // rounds them to float32, well inside the usual tolerance.
        assert_close(
            &format!("{label}: {}", m.name),
            m.output.as_ref().unwrap().as_slice(),
            &want[i * 3600..(i + 1) * 3600],
        );
    }
}

placement_tests!(scikit_learn_probabilities;
    members_reproduce_scikit_learn_probabilities_cpu: Cpu,
    members_reproduce_scikit_learn_probabilities_vulkan: Vulkan,
    members_reproduce_scikit_learn_probabilities_gl: Gl,
);
