//! Files in and out: member weights in safetensors (PyTorch's layout), the ensemble
//! manifest (TOML), and `.npy` arrays.

mod manifest;
mod npy;
mod weights;

use std::path::{Path, PathBuf};

pub use manifest::{Manifest, ManifestMember};
pub use npy::{matrix_from_bytes, read_matrix, write_tensor};
pub(crate) use npy::{read_array, Array};
pub use weights::ACTIVATIONS_KEY;
pub use weights::{load_model, model_from_bytes, save_model, LoadOptions};

pub(crate) use crate::files::io_error;
pub use crate::files::{
    check_outputs, stop_writes, write_atomically, StagedOutputs, WritesStopped,
};

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
/// meanwhile). Refused before anything is written: two outputs naming one file
/// (however spelled), and an output that is a symbolic link, a directory, a device
/// node (`/dev/null`), a fifo or a socket ([`check_outputs`]). To refuse also outputs
/// that name the files a run reads, use [`stage_tensors`] with them.
pub fn write_tensors(files: &[(PathBuf, crate::Tensor)]) -> Result<()> {
    stage_tensors(files, &[])?.commit()
}

/// The first half of [`write_tensors`]: checks the outputs against each other and
/// against `inputs` ([`check_outputs`]: an output naming one of `inputs`, however
/// spelled or hard-linked, is refused) and writes every tensor in full under a
/// temporary name beside its target. Nothing is in place until
/// [`StagedOutputs::commit`]; dropping the staged outputs removes them, and so does
/// [`stop_writes`] (a termination signal's handler).
///
/// ```no_run
/// # fn main() -> wgpu_ensemble::Result<()> {
/// use std::path::{Path, PathBuf};
/// use wgpu_ensemble::{io, Tensor};
/// let input = Path::new("x.npy");
/// let x = io::read_matrix(input)?;
/// let y: Tensor = x.clone(); // a run's output
/// io::stage_tensors(&[(PathBuf::from("y.npy"), y)], &[input])?.commit()?;
/// # Ok(())
/// # }
/// ```
pub fn stage_tensors(
    files: &[(PathBuf, crate::Tensor)],
    inputs: &[&Path],
) -> Result<StagedOutputs> {
    let outputs: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
    check_outputs(&outputs, inputs)?;
    let mut staged = StagedOutputs::new();
    for (path, tensor) in files {
        // On an error `staged` is dropped: the files written so far are removed.
        let bytes = npy::npy_bytes(path, tensor)?;
        staged.add(path, &bytes)?;
    }
    Ok(staged)
}
