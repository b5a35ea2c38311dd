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

/// The dimensions a `.npy` header declares and where its data starts, read before
/// `npyz` parses it (which multiplies the dimensions without an overflow check);
/// `None` when the header is not one this can read (`npyz` then says why).
fn declared_shape(file: &mut std::fs::File) -> Option<(Vec<u64>, u64)> {
    use std::io::Read;
    let mut start = [0u8; 10];
    file.read_exact(&mut start).ok()?;
    if &start[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, offset) = match start[6] {
        1 => (u64::from(u16::from_le_bytes([start[8], start[9]])), 10),
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more).ok()?;
            let len = u32::from_le_bytes([start[8], start[9], more[0], more[1]]);
            (u64::from(len), 12)
        }
        _ => return None,
    };
    let mut header = String::new();
    file.take(len.min(1 << 20))
        .read_to_string(&mut header)
        .ok()?;
    let after = &header[header.find("shape")? + 5..];
    let tuple = &after[after.find('(')? + 1..];
    let dims = tuple[..tuple.find(')')?]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((dims, offset + len))
}

/// Reads a `[rows, cols]` matrix of f32 or f64 (converted to f32) in C order.
///
/// Any other dtype, Fortran order, a number of dimensions other than 2, a shape
/// with more values than the file holds, or an f64 value beyond f32's range is an
/// [`Error::Npy`] that says what was found and what is expected.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let declared = declared_shape(&mut file);
    if let Some((dims, _)) = &declared {
        if dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .is_none()
        {
            return Err(npy_error(
                path,
                format!("shape {dims:?} has more values than can be addressed"),
            ));
        }
    }
    use std::io::Seek;
    file.rewind().map_err(|e| io_error(path, e))?;
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
    if let (Some(size), Some((_, data_start))) = (float_size, &declared) {
        // The data the shape needs against what follows the header.
        let needed = npy.len().checked_mul(size);
        let held = file_len.saturating_sub(*data_start);
        if needed.is_none_or(|n| n > held) {
            return Err(npy_error(
                path,
                format!(
                    "shape {shape:?} of {} needs {} bytes of data; the file holds {held}",
                    dtype.descr(),
                    needed.map_or("more than 2^64".to_string(), |n| n.to_string()),
                ),
            ));
        }
    }
    let read = |e: std::io::Error| npy_error(path, format!("reading the data: {e}"));
    let values: Vec<f32> = match float_size {
        Some(4) => npy.into_vec::<f32>().map_err(read)?,
        Some(8) => {
            let wide = npy.into_vec::<f64>().map_err(read)?;
            super::narrow(&wide).map_err(|(i, value)| {
                let at = super::unravel(i, &shape);
                let range = f32::MAX;
                npy_error(
                    path,
                    format!("value {value:e} at {at:?} is beyond float32's range (±{range:e})"),
                )
            })?
        }
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
