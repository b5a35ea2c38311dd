//! `.npy` arrays through `npyz`: f32 or f64 `[batch, features]` matrices in, f32
//! tensors out.

use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};

use super::io_error;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn npy_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a `[rows, cols]` matrix of f32 or f64 (converted to f32) in C order.
///
/// Any other dtype, Fortran order, or a number of dimensions other than 2 is an
/// [`Error::Npy`] that says what was found and what is expected.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let npy = NpyFile::new(BufReader::new(file))
        .map_err(|e| npy_error(path, format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.len() != 2 {
        return Err(npy_error(
            path,
            format!(
                "expected 2 dimensions [batch, features], got {} with shape {shape:?}",
                shape.len()
            ),
        ));
    }
    if npy.order() != Order::C {
        return Err(npy_error(
            path,
            "array is in Fortran order; expected C order (numpy.ascontiguousarray)",
        ));
    }
    let dtype = npy.dtype();
    let float_size = match &dtype {
        DType::Plain(t) if t.type_char() == TypeChar::Float => Some(t.size_field()),
        _ => None,
    };
    let read = |e: std::io::Error| npy_error(path, format!("reading the data: {e}"));
    let values: Vec<f32> = match float_size {
        Some(4) => npy.into_vec::<f32>().map_err(read)?,
        Some(8) => npy
            .into_vec::<f64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        _ => {
            return Err(npy_error(
                path,
                format!(
                    "dtype {} is not supported; expected float32 or float64",
                    dtype.descr()
                ),
            ))
        }
    };
    Tensor::new(shape, values).map_err(|e| npy_error(path, e.to_string()))
}

/// Writes a tensor as a little-endian f32 `.npy` in C order, of the tensor's shape.
///
/// The file is written to a temporary name and renamed, so `path` never holds a
/// partial file.
pub fn write_tensor(path: impl AsRef<Path>, tensor: &Tensor) -> Result<()> {
    let path = path.as_ref();
    super::write_tensors(&[(path.to_path_buf(), tensor.clone())])
}

/// The bytes of a `.npy` file holding `tensor`.
pub(crate) fn npy_bytes(path: &Path, tensor: &Tensor) -> Result<Vec<u8>> {
    let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()
        .map_err(|e| io_error(path, e))?;
    writer
        .extend(tensor.as_slice().iter().copied())
        .map_err(|e| io_error(path, e))?;
    writer.finish().map_err(|e| io_error(path, e))?;
    Ok(bytes)
}
