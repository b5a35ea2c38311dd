//! Files in and out: member weights in safetensors (PyTorch's layout), the ensemble
//! manifest (TOML), and `.npy` arrays.

mod manifest;
mod npy;
mod weights;

use std::path::Path;

pub use manifest::{Manifest, ManifestMember};
pub use npy::{read_matrix, write_tensor};
pub use weights::ACTIVATIONS_KEY;
pub use weights::{load_model, save_model, LoadOptions};

pub use crate::files::write_atomically;
pub(crate) use crate::files::{io_error, temporary_path};

use crate::error::Result;

/// f64 values as f32; `Err((index, value))` for the first finite value beyond f32's
/// range, which would become infinite (NaN and infinities pass, for the finiteness
/// checks that name them).
pub(crate) fn narrow(values: &[f64]) -> std::result::Result<Vec<f32>, (usize, f64)> {
    match values
        .iter()
        .position(|v| v.is_finite() && v.abs() > f64::from(f32::MAX))
    {
        Some(i) => Err((i, values[i])),
        None => Ok(values.iter().map(|&v| v as f32).collect()),
    }
}

/// The position of the `i`-th value (in C order) of a tensor of `shape`.
pub(crate) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (at, &d) in index.iter_mut().zip(shape).rev() {
        if d > 0 {
            *at = i % d;
            i /= d;
        }
    }
    index
}

/// Writes several tensors as `.npy` files, all or none: every file is first written
/// under a temporary name beside its target, and only when all of them are complete
/// are they renamed into place (a rename can then fail only if the folder changed
/// meanwhile). Two outputs with the same path, or a path that is a folder, are refused
/// before anything is written.
pub fn write_tensors(files: &[(std::path::PathBuf, crate::Tensor)]) -> Result<()> {
    let places: Vec<std::path::PathBuf> = files.iter().map(|(p, _)| place(p)).collect();
    for (i, (path, _)) in files.iter().enumerate() {
        if places[..i].contains(&places[i]) {
            return Err(io_error(path, "the same file is given for two outputs"));
        }
        if path.is_dir() {
            return Err(io_error(path, "is a directory"));
        }
    }
    let mut written: Vec<(std::path::PathBuf, &Path)> = Vec::new();
    let cleanup = |written: &[(std::path::PathBuf, &Path)]| {
        for (tmp, _) in written {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (path, tensor) in files {
        let tmp = temporary_path(path);
        let bytes = match npy::npy_bytes(path, tensor) {
            Ok(b) => b,
            Err(e) => {
                cleanup(&written);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::write(&tmp, bytes) {
            let _ = std::fs::remove_file(&tmp);
            cleanup(&written);
            return Err(io_error(path, e));
        }
        written.push((tmp, path));
    }
    for (i, (tmp, path)) in written.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&written[i..]);
            return Err(io_error(path, e));
        }
    }
    Ok(())
}

/// Where `path` is, whatever its spelling (`o.npy`, `./o.npy`, `d/../o.npy`): its
/// folder resolved, then its name; the path itself when the folder does not exist.
fn place(path: &Path) -> std::path::PathBuf {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (folder.canonicalize(), path.file_name()) {
        (Ok(folder), Some(name)) => folder.join(name),
        _ => path.to_path_buf(),
    }
}
