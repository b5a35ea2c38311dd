//! Bad model files and bad manifests: each gives an error naming the file and the
//! tensor or key, never a panic.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::golden;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use wgpu_ensemble::io::{load_model, LoadOptions, Manifest};
use wgpu_ensemble::{Activation, Error};

/// Writes a safetensors file of f32 tensors (or any dtype given as raw bytes).
fn write(
    dir: &Path,
    name: &str,
    tensors: &[(&str, Dtype, Vec<usize>)],
    activations: Option<&str>,
) -> PathBuf {
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, dtype, shape)| {
            let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            (n.to_string(), *dtype, shape.clone(), vec![0u8; bytes])
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let metadata = activations.map(|a| HashMap::from([("activations".to_string(), a.to_string())]));
    let path = dir.join(name);
    std::fs::write(&path, safetensors::serialize(views, metadata).unwrap()).unwrap();
    path
}

fn load(path: &Path) -> Result<wgpu_ensemble::Model, Error> {
    load_model(path, &LoadOptions::default())
}

/// The error of loading `m.safetensors` holding `tensors` (zeros) and `activations`.
fn load_error(tensors: &[(&str, Dtype, Vec<usize>)], activations: Option<&str>) -> Error {
    let dir = tempfile::tempdir().unwrap();
    load(&write(dir.path(), "m.safetensors", tensors, activations)).unwrap_err()
}

#[test]
fn every_float_dtype_loads() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        let path = write(
            dir.path(),
            "m.safetensors",
            &[("0.weight", dtype, vec![3, 2]), ("0.bias", dtype, vec![3])],
            Some("relu"),
        );
        let m = load(&path).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        assert_eq!((m.in_features(), m.out_features()), (2, 3));
    }
}

#[test]
fn natural_order_of_layer_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    // 0: 2->3, 2: 3->4, 10: 4->5; lexicographic order (0, 10, 2) would not chain.
    let path = write(
        dir.path(),
        "m.safetensors",
        &[
            ("10.weight", Dtype::F32, vec![5, 4]),
            ("10.bias", Dtype::F32, vec![5]),
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
            ("2.weight", Dtype::F32, vec![4, 3]),
            ("2.bias", Dtype::F32, vec![4]),
        ],
        Some("relu,tanh,softmax"),
    );
    let m = load(&path).unwrap();
    let widths: Vec<usize> = m.layers().iter().map(|l| l.out_features()).collect();
    assert_eq!(widths, [3, 4, 5]);
    assert_eq!(m.layers()[2].activation(), Activation::Softmax);
}

#[test]
fn missing_bias() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.safetensors",
        &[("fc1.weight", Dtype::F32, vec![3, 2])],
        Some("relu"),
    );
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { tensor, path: p, .. } if tensor == "fc1.bias" && p == &path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("m.safetensors") && err.to_string().contains("fc1.bias"),
        "{err}"
    );
}

#[test]
fn missing_layer_named_in_the_manifest_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.safetensors",
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
        ],
        None,
    );
    let options = LoadOptions::default()
        .activations(vec![Activation::Relu, Activation::Relu])
        .layers(vec!["0".into(), "1".into()]);
    let err = load_model(&path, &options).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { tensor, .. } if tensor == "1.weight"),
        "{err:?}"
    );
}

#[test]
fn shapes_that_do_not_chain() {
    let err = load_error(
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
            ("1.weight", Dtype::F32, vec![4, 5]),
            ("1.bias", Dtype::F32, vec![4]),
        ],
        Some("relu,relu"),
    );
    match &err {
        Error::TensorShape {
            tensor,
            got,
            expected,
            ..
        } => {
            assert_eq!(tensor, "1.weight");
            assert_eq!(got, &[4, 5]);
            assert!(expected.contains("[4, 3]"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bias_of_the_wrong_length_and_weight_of_the_wrong_rank() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.safetensors",
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![2]),
        ],
        Some("relu"),
    );
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, Error::TensorShape { tensor, got, .. } if tensor == "0.bias" && got == &[2]),
        "{err:?}"
    );
    let path = write(
        dir.path(),
        "m.safetensors",
        &[
            ("0.weight", Dtype::F32, vec![6]),
            ("0.bias", Dtype::F32, vec![6]),
        ],
        Some("relu"),
    );
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, Error::TensorShape { tensor, .. } if tensor == "0.weight"),
        "{err:?}"
    );
}

/// A NaN or infinity in a file's tensor is named with the file, the tensor and its
/// position.
/// A finite f64 weight beyond f32's range is refused with its own value and
/// position (it would have become infinite).
#[test]
fn f64_values_beyond_f32() {
    let dir = tempfile::tempdir().unwrap();
    let mut weight = [0.5f64; 6];
    weight[3] = -1e300;
    let w: Vec<u8> = weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b: Vec<u8> = [0.0f64; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "0.weight",
            TensorView::new(Dtype::F64, vec![3, 2], &w).unwrap(),
        ),
        ("0.bias", TensorView::new(Dtype::F64, vec![3], &b).unwrap()),
    ];
    let metadata = HashMap::from([("activations".to_string(), "relu".to_string())]);
    let path = dir.path().join("wide.safetensors");
    std::fs::write(
        &path,
        safetensors::serialize(views, Some(metadata)).unwrap(),
    )
    .unwrap();
    match load(&path) {
        Err(Error::TensorOutOfRange {
            path: p,
            tensor,
            index,
            value,
        }) => {
            assert_eq!((p, tensor.as_str(), index), (path, "0.weight", vec![1, 1]));
            assert_eq!(value, -1e300);
        }
        other => panic!("expected TensorOutOfRange, got {other:?}"),
    }
}

#[test]
fn non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let bytes =
        |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let mut weight = vec![0.5f32; 6];
    weight[4] = f32::NAN;
    let cases = [
        (bytes(&weight), bytes(&[0.0; 3]), "0.weight", vec![2, 0]),
        (
            bytes(&[0.5; 6]),
            bytes(&[0.0, f32::INFINITY, 0.0]),
            "0.bias",
            vec![1],
        ),
    ];
    for (w, b, tensor, index) in cases {
        let views = vec![
            (
                "0.weight",
                TensorView::new(Dtype::F32, vec![3, 2], &w).unwrap(),
            ),
            ("0.bias", TensorView::new(Dtype::F32, vec![3], &b).unwrap()),
        ];
        let metadata = HashMap::from([("activations".to_string(), "relu".to_string())]);
        let path = dir.path().join("m.safetensors");
        std::fs::write(
            &path,
            safetensors::serialize(views, Some(metadata)).unwrap(),
        )
        .unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteTensor { path: p, tensor: t, index: i, .. }
                if p == &path && t == tensor && i == &index),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("m.safetensors") && text.contains(tensor),
            "{text}"
        );
    }
}

#[test]
fn unknown_activation() {
    let err = load_error(
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
        ],
        Some("swish"),
    );
    assert!(
        matches!(&err, Error::UnknownActivation { name, .. } if name == "swish"),
        "{err:?}"
    );
}

#[test]
fn activations_missing_or_miscounted() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = [
        ("0.weight", Dtype::F32, vec![3, 2]),
        ("0.bias", Dtype::F32, vec![3]),
    ];
    let err = load(&write(dir.path(), "a.safetensors", &tensors, None)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ActivationCount {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let err = load(&write(
        dir.path(),
        "b.safetensors",
        &tensors,
        Some("relu,relu"),
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ActivationCount {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unsupported_dtype() {
    let err = load_error(
        &[
            ("0.weight", Dtype::I32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
        ],
        Some("relu"),
    );
    assert!(
        matches!(&err, Error::UnsupportedDtype { tensor, dtype, .. } if tensor == "0.weight" && dtype == "I32"),
        "{err:?}"
    );
}

#[test]
fn tensor_that_is_not_a_layer() {
    let err = load_error(
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
            ("bn.running_mean", Dtype::F32, vec![3]),
        ],
        Some("relu"),
    );
    assert!(
        matches!(&err, Error::UnexpectedTensor { tensor, .. } if tensor == "bn.running_mean"),
        "{err:?}"
    );
}

#[test]
fn truncated_corrupt_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(golden("seq-relu.safetensors")).unwrap();
    for (name, bytes) in [
        ("truncated.safetensors", good[..good.len() / 2].to_vec()),
        ("header-only.safetensors", good[..20].to_vec()),
        (
            "garbage.safetensors",
            b"this is not a safetensors file at all".to_vec(),
        ),
        ("empty.safetensors", Vec::new()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(&err, Error::CorruptFile { path: p, .. } if p == &path),
            "{name}: {err:?}"
        );
    }
    let err = load(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

fn manifest_error(text: &str) -> String {
    match Manifest::parse(Path::new("ensemble.toml"), text) {
        Err(Error::Manifest { path, message }) => {
            assert_eq!(path, Path::new("ensemble.toml"));
            message
        }
        Err(other) => panic!("expected a manifest error, got {other:?}"),
        Ok(_) => panic!("manifest accepted:\n{text}"),
    }
}

const MEMBER: &str = "[[member]]\nname = \"a\"\nfile = \"a.safetensors\"\n";

#[test]
fn manifest_keys_that_are_unknown() {
    let message = manifest_error(&format!("{MEMBER}colour = \"blue\"\n"));
    assert!(message.contains("colour"), "{message}");
    let message = manifest_error(&format!(
        "[aggregate]\nkind = \"mean\"\nwieghts = [1.0]\n{MEMBER}"
    ));
    assert!(message.contains("wieghts"), "{message}");
    let message = manifest_error(&format!("[extra]\n{MEMBER}"));
    assert!(message.contains("extra"), "{message}");
}

#[test]
fn manifest_values_that_are_invalid() {
    let message = manifest_error(&format!("[aggregate]\nkind = \"median\"\n{MEMBER}"));
    assert!(message.contains("median"), "{message}");
    let message = manifest_error(&format!("[aggregate]\nkind = \"weighted_mean\"\n{MEMBER}"));
    assert!(message.contains("weights"), "{message}");
    let message = manifest_error(&format!("{MEMBER}device = \"gpu:0\"\n"));
    assert!(message.contains("gpu:0"), "{message}");
    let message = manifest_error("");
    assert!(message.contains("member"), "{message}");
    let message = manifest_error("[[member]]\nname = \"a\"\n");
    assert!(message.contains("file"), "{message}");
    let message = manifest_error(&format!("{MEMBER}layers = []\n"));
    assert!(message.contains("`layers` is empty"), "{message}");
    // A huge weight is normalised with the others (hardening.rs); one beside a
    // weight that cannot be normalised (negative) is still beyond f32's range.
    let message = manifest_error(&format!(
        "[aggregate]\nkind = \"weighted_mean\"\nweights = [1e300, -1.0]\n{MEMBER}"
    ));
    assert!(message.contains("weight 0 is 1e300"), "{message}");
    let message = manifest_error(&format!("{MEMBER}{MEMBER}"));
    assert!(message.contains("two [[member]] are named"), "{message}");
    match Manifest::parse(
        Path::new("e.toml"),
        &format!("{MEMBER}activations = [\"relu\", \"mish\"]\n"),
    ) {
        Err(Error::UnknownActivation { name, .. }) => assert_eq!(name, "mish"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn manifest_member_files_are_relative_to_the_manifest() {
    let m = Manifest::parse(Path::new("/models/ens/e.toml"), MEMBER).unwrap();
    assert_eq!(m.members[0].file, Path::new("/models/ens/a.safetensors"));
    // A missing member file is an error naming it when the graph is built.
    match m.graph(None) {
        Err(Error::Io { path, .. }) => assert_eq!(path, Path::new("/models/ens/a.safetensors")),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("graph built from a missing file"),
    }
}

#[test]
fn manifest_aggregate_weights_are_checked_against_the_members() {
    let text = std::fs::read_to_string(golden("weighted_mean.toml"))
        .unwrap()
        .replace(
            "weights = [0.3, 0.2, 0.2, 0.2, 0.1]",
            "weights = [0.5, 0.5]",
        );
    let message = manifest_error(&text);
    assert!(message.contains("2 values for 5 [[member]]"), "{message}");
    let vote = format!("[aggregate]\nkind = \"vote\"\nweights = [1.0, 2.0]\n{MEMBER}");
    let message = manifest_error(&vote);
    assert!(message.contains("2 values for 1 [[member]]"), "{message}");
    let message = manifest_error("[[member]]\nname = \"\"\nfile = \"a.safetensors\"\n");
    assert!(message.contains("empty `name`"), "{message}");
}

/// Activations given in the manifest that do not match the file's layers are the
/// manifest's error, naming the member and the file.
#[test]
fn manifest_activations_that_do_not_match_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.safetensors",
        &[
            ("0.weight", Dtype::F32, vec![3, 2]),
            ("0.bias", Dtype::F32, vec![3]),
            ("1.weight", Dtype::F32, vec![2, 3]),
            ("1.bias", Dtype::F32, vec![2]),
        ],
        None,
    );
    let path = dir.path().join("e.toml");
    let m = Manifest::parse(&path, &format!("{MEMBER}activations = [\"relu\"]\n")).unwrap();
    match m.graph(None) {
        Err(Error::Manifest { path: p, message }) => {
            assert_eq!(p, path);
            assert!(
                message.contains("member \"a\"")
                    && message.contains("lists 1 for the 2 layers")
                    && message.contains("a.safetensors"),
                "{message}"
            );
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("graph built with 1 activation for 2 layers"),
    }
}

/// A version 1.0 `.npy` file with the given dtype, shape (as numpy writes it) and data.
fn npy(dir: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) -> PathBuf {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `.npy` inputs whose header lies: a shape whose values overflow, a shape with more
/// values than the file holds, and f64 values beyond f32's range; each an
/// `Error::Npy` saying what, never a panic or a silent infinity. A good file reads.
#[test]
fn npy_inputs_whose_header_or_values_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let read = |path: &Path| wgpu_ensemble::io::read_matrix(path);
    let message = |path: &Path| match read(path) {
        Err(Error::Npy { path: p, message }) => {
            assert_eq!(p, path);
            message
        }
        other => panic!("{}: expected Error::Npy, got {other:?}", path.display()),
    };

    let overflow = npy(
        dir.path(),
        "overflow.npy",
        "<f4",
        "(4294967296, 4294967297)",
        &[0; 24],
    );
    let m = message(&overflow);
    assert!(m.contains("more values than can be addressed"), "{m}");

    let floats: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let short = npy(dir.path(), "short.npy", "<f4", "(3, 4)", &floats);
    let m = message(&short);
    assert!(
        m.contains("needs 48 bytes") && m.contains("holds 40"),
        "{m}"
    );

    let wide: Vec<u8> = [1.0f64, 2.0, 1e300, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let beyond = npy(dir.path(), "beyond.npy", "<f8", "(2, 2)", &wide);
    let m = message(&beyond);
    assert!(m.contains("1e300 at [1, 0]"), "{m}");

    let good: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let fine = npy(dir.path(), "fine.npy", "<f8", "(2, 2)", &good);
    let x = read(&fine).unwrap();
    assert_eq!(
        (x.shape(), x.as_slice()),
        (&[2, 2][..], &[1.0, 2.0, 3.0, 4.0][..])
    );
}

/// Two outputs that name one file in different spellings are refused before anything
/// is written: the file keeps what it held, and no temporary file is left.
#[test]
fn outputs_that_are_one_file_spelled_twice() {
    use wgpu_ensemble::io::{read_matrix, write_tensor, write_tensors};
    use wgpu_ensemble::Tensor;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let target = dir.path().join("o.npy");
    let old = Tensor::matrix(1, 1, vec![42.0]).unwrap();
    write_tensor(&target, &old).unwrap();
    let a = Tensor::matrix(1, 2, vec![1.0, 2.0]).unwrap();
    let b = Tensor::matrix(2, 1, vec![3.0, 4.0]).unwrap();
    for alias in [
        dir.path().join(".").join("o.npy"),
        dir.path().join("sub").join("..").join("o.npy"),
    ] {
        let err =
            write_tensors(&[(target.clone(), a.clone()), (alias.clone(), b.clone())]).unwrap_err();
        assert!(
            matches!(&err, Error::Io { message, .. } if message.contains("same file")),
            "{}: {err:?}",
            alias.display()
        );
        let kept = read_matrix(&target).unwrap();
        assert_eq!(kept.as_slice(), &[42.0], "{}", alias.display());
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    // Distinct files are all written.
    let other = dir.path().join("sub").join("p.npy");
    write_tensors(&[(target.clone(), a.clone()), (other.clone(), b.clone())]).unwrap();
    assert_eq!(read_matrix(&target).unwrap().as_slice(), a.as_slice());
    assert_eq!(read_matrix(&other).unwrap().as_slice(), b.as_slice());
}
