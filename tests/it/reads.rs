//! Every file the tool reads is a regular file whose size is checked before it is
//! read, and every error quotes a bounded excerpt of the bad input: a device node, a
//! fifo or a directory is refused at once, a manifest or autotune cache over 1 MiB is
//! refused unread, and a 10 MB value is quoted in at most 200 characters. Errors of
//! malformed files name what is wrong: an empty member `file`, a tensor named twice, a
//! tensor whose bytes do not fit its shape, a truncated `.npy` header.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::golden;
use wgpu_ensemble::io::{load_model, read_matrix, LoadOptions, Manifest};
use wgpu_ensemble::{Error, Graph, Model, Placement, Session, SessionOptions};

/// The limit on a manifest's or an autotune cache's size (docs/GUIDE.md).
const TEXT_FILE_LIMIT: u64 = 1 << 20;

/// `f()` on a thread of its own, waited for at most 10 s: a read that does not
/// refuse a device or a fifo at once would block or fill memory, and the test fails
/// instead of hanging (the thread is left behind).
fn at_once<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(f());
    });
    receive
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: still reading after 10 s"))
}

/// Asserts `err` is `NotRegularFile` for `path` of `kind`, and says so in words.
fn assert_not_regular(err: &Error, path: &Path, kind: &str) {
    match err {
        Error::NotRegularFile { path: p, kind: k } => {
            assert_eq!((p.as_path(), *k), (path, kind), "{err}");
        }
        other => panic!(
            "expected NotRegularFile for {}, got {other:?}",
            path.display()
        ),
    }
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string())
            && text.contains(kind)
            && text.contains("not a regular file"),
        "{text}"
    );
}

/// A manifest of one member, `a`, whose `file` is `file`.
fn manifest_naming(dir: &Path, file: &Path) -> PathBuf {
    let path = dir.join("e.toml");
    let text = format!(
        "[[member]]\nname = \"a\"\nfile = \"{}\"\nactivations = [\"relu\"]\n",
        file.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A fifo at `dir/name`, made by `mkfifo`.
#[cfg(unix)]
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

#[cfg(unix)]
#[test]
fn dev_zero_as_manifest_is_refused_at_once() {
    let err = at_once("--manifest /dev/zero", || {
        Manifest::load("/dev/zero").unwrap_err()
    });
    assert_not_regular(&err, Path::new("/dev/zero"), "character device");
}

#[cfg(unix)]
#[test]
fn dev_zero_as_member_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::load(manifest_naming(dir.path(), Path::new("/dev/zero"))).unwrap();
    let err = at_once("file = \"/dev/zero\"", move || {
        manifest.graph(None).unwrap_err()
    });
    assert_not_regular(&err, Path::new("/dev/zero"), "character device");
    let err = at_once("load_model(/dev/zero)", || {
        load_model("/dev/zero", &LoadOptions::default()).unwrap_err()
    });
    assert_not_regular(&err, Path::new("/dev/zero"), "character device");
}

/// `--input /dev/zero` was refused by its header check; it is now refused as a device,
/// before any of it is read, as every other file is.
#[cfg(unix)]
#[test]
fn dev_zero_as_input_is_refused_as_a_device() {
    let err = at_once("--input /dev/zero", || {
        read_matrix("/dev/zero").unwrap_err()
    });
    assert_not_regular(&err, Path::new("/dev/zero"), "character device");
}

/// A fifo would block the open until a writer came; a directory is named as one.
#[cfg(unix)]
#[test]
fn fifo_or_directory_as_manifest_or_member_file() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path(), "m.toml");
    let path = pipe.clone();
    let err = at_once("--manifest <fifo>", move || {
        Manifest::load(&path).unwrap_err()
    });
    assert_not_regular(&err, &pipe, "fifo");

    let folder = dir.path().join("folder.toml");
    std::fs::create_dir(&folder).unwrap();
    let err = Manifest::load(&folder).unwrap_err();
    assert_not_regular(&err, &folder, "directory");

    let member = fifo(dir.path(), "a.safetensors");
    let manifest = Manifest::load(manifest_naming(dir.path(), &member)).unwrap();
    let err = at_once("file = <fifo>", move || manifest.graph(None).unwrap_err());
    assert_not_regular(&err, &member, "fifo");

    let input = fifo(dir.path(), "x.npy");
    let path = input.clone();
    let err = at_once("--input <fifo>", move || read_matrix(&path).unwrap_err());
    assert_not_regular(&err, &input, "fifo");
}

/// A manifest of one byte over the limit is refused unread, naming its size and the
/// limit; one at the limit is read.
#[test]
fn manifest_over_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let member = "[[member]]\nname = \"a\"\nfile = \"a.safetensors\"\n";
    let padded = |bytes: u64| {
        let mut text = member.to_string();
        text.push('#');
        text.push_str(&" ".repeat(bytes as usize - text.len() - 1));
        text.push('\n');
        assert_eq!(text.len() as u64, bytes);
        text
    };
    let path = dir.path().join("big.toml");
    std::fs::write(&path, padded(TEXT_FILE_LIMIT + 1)).unwrap();
    match Manifest::load(&path).unwrap_err() {
        Error::FileTooLarge {
            path: p,
            size,
            limit,
        } => {
            assert_eq!(
                (p, size, limit),
                (path.clone(), TEXT_FILE_LIMIT + 1, TEXT_FILE_LIMIT)
            );
        }
        other => panic!("{other:?}"),
    }
    let text = Manifest::load(&path).unwrap_err().to_string();
    assert!(
        text.contains("1048577") && text.contains("1048576"),
        "{text}"
    );
    std::fs::write(&path, padded(TEXT_FILE_LIMIT)).unwrap();
    let m = Manifest::load(&path).unwrap();
    assert_eq!(m.members.len(), 1);
}

/// An autotune cache is read under the same rules: a device or a file over 1 MiB is
/// refused when the session is made (on the CPU too, where the cache is read but not
/// used).
#[cfg(unix)]
#[test]
fn autotune_cache_that_is_a_device_or_over_the_limit() {
    let session = |cache: PathBuf| {
        let g = Graph::builder(2)
            .member(
                "m",
                Model::random(&[2, 3], &[wgpu_ensemble::Activation::Relu], 1).unwrap(),
                Placement::Cpu,
            )
            .build()
            .unwrap();
        let options = SessionOptions::default().autotune(8).autotune_cache(cache);
        Session::with_options(g, options).err()
    };
    let err = at_once("autotune cache /dev/zero", move || {
        session(PathBuf::from("/dev/zero"))
    });
    let err = err.expect("a session with /dev/zero as its autotune cache");
    assert_not_regular(&err, Path::new("/dev/zero"), "character device");

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("tune.toml");
    std::fs::write(&big, "#".repeat(TEXT_FILE_LIMIT as usize + 1)).unwrap();
    match session(big.clone()) {
        Some(Error::FileTooLarge { path, size, limit }) => {
            assert_eq!(
                (path, size, limit),
                (big, TEXT_FILE_LIMIT + 1, TEXT_FILE_LIMIT)
            );
        }
        other => panic!("{other:?}"),
    }
    // A cache that does not exist yet is an empty one.
    assert!(session(dir.path().join("absent.toml")).is_none());
}

/// The error of parsing `text` as a manifest, as the user reads it.
fn manifest_message(text: &str) -> String {
    match Manifest::parse(Path::new("e.toml"), text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("manifest accepted"),
    }
}

/// A 10 MB value, key or line is quoted in at most 200 characters, with an ellipsis
/// and its length, wherever the manifest is wrong: TOML's own errors (which quote the
/// whole line), an unknown key, and the values the crate checks.
#[test]
fn ten_megabyte_values_are_quoted_in_200_characters() {
    let huge = "x".repeat(10_000_000);
    let member = "[[member]]\nname = \"a\"\nfile = \"a.safetensors\"\n";
    let cases = [
        (
            "unknown key with a huge value",
            format!("{member}colour = \"{huge}\"\n"),
        ),
        ("huge unknown key", format!("{member}{huge} = 1\n")),
        (
            "unterminated huge string",
            format!("{member}activations = [\"{huge}\n"),
        ),
        (
            "huge value of the wrong type",
            format!("[[member]]\nname = [\"{huge}\"]\nfile = \"a.safetensors\"\n"),
        ),
        (
            "huge aggregate kind",
            format!("[aggregate]\nkind = \"{huge}\"\n{member}"),
        ),
        (
            "huge device",
            format!("{member}device = \"{huge}\"\n"),
        ),
        (
            "huge activation",
            format!("{member}activations = [\"{huge}\"]\n"),
        ),
        (
            "huge name twice",
            format!("[[member]]\nname = \"{huge}\"\nfile = \"a\"\n[[member]]\nname = \"{huge}\"\nfile = \"b\"\n"),
        ),
        (
            "huge file path",
            format!("[[member]]\nname = \"a\"\nfile = \"{huge}\"\n"),
        ),
    ];
    for (what, text) in cases {
        let message = manifest_message(&text);
        assert!(
            message.chars().count() <= 1000,
            "{what}: a message of {} characters: {}",
            message.chars().count(),
            message.chars().take(300).collect::<String>()
        );
        let longest_run = message.split(|c| c != 'x').map(str::len).max().unwrap_or(0);
        assert!(
            longest_run <= 200,
            "{what}: quotes {longest_run} x: {message}"
        );
        assert!(
            message.contains('…') && message.contains(" characters"),
            "{what}: no ellipsis and length: {message}"
        );
    }
}

/// `file = ""` named the manifest's folder ("Is a directory"); it is the manifest's
/// error, naming the member.
#[test]
fn empty_member_file() {
    let message = manifest_message("[[member]]\nname = \"a\"\nfile = \"\"\n");
    assert!(
        message.contains("member \"a\"") && message.contains("`file` is empty"),
        "{message}"
    );
}

/// A safetensors file of `header` (JSON) and `data` zero bytes.
fn safetensors(dir: &Path, name: &str, header: &str, data: usize) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; data]);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn entry(name: &str, shape: &[usize], offsets: (usize, usize)) -> String {
    format!(
        "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
        offsets.0, offsets.1
    )
}

fn load(path: &Path) -> Error {
    let options = LoadOptions::default().activations(vec![wgpu_ensemble::Activation::Relu]);
    match load_model(path, &options) {
        Err(e) => e,
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

/// A tensor named twice in a header was "invalid offset" (the `safetensors` crate
/// keeps one entry of a name and finds a gap), or loaded silently when both entries
/// were the same; it is named.
#[test]
fn tensor_named_twice() {
    let dir = tempfile::tempdir().unwrap();
    let bias = entry("0.bias", &[1], (8, 12));
    for (name, header) in [
        (
            "apart.safetensors",
            format!(
                "{{{},{},{bias}}}",
                entry("0.weight", &[1, 1], (0, 4)),
                entry("0.weight", &[1, 1], (4, 8))
            ),
        ),
        (
            "same.safetensors",
            format!(
                "{{{},{},{}}}",
                entry("0.weight", &[1, 1], (0, 4)),
                entry("0.weight", &[1, 1], (0, 4)),
                entry("0.bias", &[1], (4, 8))
            ),
        ),
    ] {
        let data = if name == "same.safetensors" { 8 } else { 12 };
        let path = safetensors(dir.path(), name, &header, data);
        let err = load(&path);
        assert!(
            matches!(&err, Error::DuplicateTensor { path: p, tensor } if p == &path && tensor == "0.weight"),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("'0.weight'") && text.contains("named twice"),
            "{text}"
        );
    }
}

/// Data offsets that span other bytes than the dtype and shape need were "invalid
/// shape, data type, or offset for tensor" without a name; the tensor is named with
/// both lengths.
#[test]
fn tensor_whose_bytes_do_not_fit_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let header = format!(
        "{{{},{}}}",
        entry("0.weight", &[2, 2], (0, 12)),
        entry("0.bias", &[2], (12, 20))
    );
    let path = safetensors(dir.path(), "short.safetensors", &header, 20);
    match load(&path) {
        Error::TensorByteLength {
            path: p,
            tensor,
            dtype,
            shape,
            expected,
            got,
        } => {
            assert_eq!(
                (p, tensor.as_str(), dtype.as_str(), shape, expected, got),
                (path, "0.weight", "F32", vec![2, 2], 16, 12)
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A `.npy` file that ends inside its header said "failed to fill whole buffer"; it
/// says the header is truncated, with the file's length and what the header needs.
#[test]
fn truncated_npy_header() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(golden("x.npy")).unwrap();
    let header_end = 10 + u16::from_le_bytes([good[8], good[9]]) as usize;
    for (cut, needs) in [
        (40, format!("needs {header_end}")),
        (9, "needs at least 10".to_string()),
        (0, "needs at least 10".to_string()),
    ] {
        let path = dir.path().join(format!("cut-{cut}.npy"));
        std::fs::write(&path, &good[..cut]).unwrap();
        match read_matrix(&path) {
            Err(Error::Npy { path: p, message }) => {
                assert_eq!(p, path);
                assert!(
                    message.contains("header is truncated")
                        && message.contains(&format!("the file has {cut} bytes"))
                        && message.contains(&needs),
                    "{cut}: {message}"
                );
            }
            other => panic!("{cut}: {other:?}"),
        }
    }
}

/// A tensor of a crafted, very high rank is named with at most 200 characters of its
/// shape (the shape was printed in full).
#[test]
fn a_high_rank_tensor_shape_is_quoted_in_200_characters() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let shape = vec![1usize; 5000];
    let bytes = 4u32.to_le_bytes().to_vec();
    let bias = [0u8; 4];
    let views = vec![
        (
            "0.weight",
            TensorView::new(Dtype::F32, shape, &bytes).unwrap(),
        ),
        (
            "0.bias",
            TensorView::new(Dtype::F32, vec![1], &bias).unwrap(),
        ),
    ];
    let path = dir.path().join("rank.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let options = wgpu_ensemble::io::LoadOptions::default()
        .activations(vec![wgpu_ensemble::Activation::Identity]);
    let err = wgpu_ensemble::io::load_model(&path, &options).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, wgpu_ensemble::Error::TensorShape { .. }),
        "{message}"
    );
    assert!(
        message.len() < 1000,
        "{} characters: {message:.300}",
        message.len()
    );
}

/// Found by fuzzing the `.npy` reader: a 150-byte header with a value of 40 nested
/// brackets kept the general Python-literal parser the header went through busy for
/// hours (20 brackets took 7 s, each one more doubled it). The header is now read by a
/// strict parser of the dict numpy writes: refused at once, naming what was expected.
/// (The answer is awaited on another thread, so that a regression fails, not hangs.)
#[test]
fn a_header_of_nested_brackets_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': {}}}\n",
        "[".repeat(40)
    );
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(1.5f32.to_le_bytes());
    let path = dir.path().join("brackets.npy");
    std::fs::write(&path, bytes).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_matrix(&path));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(Error::Npy { message, .. })) => assert!(
            message.contains("the key 'x'; expected only 'descr', 'fortran_order' and 'shape'"),
            "{message}"
        ),
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("no answer in 60 s: the header parser is not linear"),
    }
}

/// The header is the dict numpy writes and nothing else: every way of departing from it
/// is an `Error::Npy` naming the problem, and numpy's own spellings all read.
#[test]
fn npy_headers_numpy_writes_and_others() {
    let read = |header: &str, data: &[u8]| {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        wgpu_ensemble::io::matrix_from_bytes(Path::new("h.npy"), &bytes)
    };
    let one: Vec<u8> = 1.5f32.to_le_bytes().to_vec();
    let one_be: Vec<u8> = 1.5f32.to_be_bytes().to_vec();
    for (header, data) in [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }   \n",
            &one,
        ),
        (
            "{\"shape\": (1,1), \"descr\": \"<f4\", \"fortran_order\": False}\n",
            &one,
        ),
        (
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1,)}",
            &one_be,
        ),
    ] {
        match read(header, data) {
            Ok(x) => assert_eq!(
                (x.shape(), x.as_slice()),
                (&[1, 1][..], &[1.5][..]),
                "{header}"
            ),
            Err(e) => panic!("{header}: {e}"),
        }
    }
    for (header, problem) in [
        ("{'descr': '<f4', 'fortran_order': False}", "has no 'shape'"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'shape': (1, 1)}",
            "names 'shape' twice",
        ),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1, 1)}",
            "not True or False",
        ),
        (
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 1)}",
            "structured dtypes",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': 1}",
            "the key 'x'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)} 1",
            "text after",
        ),
        ("['descr']", "not a dict"),
        (
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1)}",
            "dtype '<i4' is not supported",
        ),
    ] {
        match read(header, &one) {
            Err(Error::Npy { message, .. }) => {
                assert!(message.contains(problem), "{header}: {message}")
            }
            other => panic!("{header}: {other:?}"),
        }
    }
    let long = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}}{}",
        " ".repeat(10_000)
    );
    match read(&long, &one) {
        Err(Error::Npy { message, .. }) => assert!(message.contains("at most 10000"), "{message}"),
        other => panic!("{other:?}"),
    }
}
