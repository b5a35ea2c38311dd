//! `.npy` arrays through `npyz`: f32 or f64 `[batch, features]` matrices in, f32
//! tensors out.

use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};

use super::io_error;
use crate::error::{Error, Result};
use crate::files::{bound_quotes, excerpt, read_regular};
use crate::tensor::Tensor;

fn npy_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Where a `.npy` file's header text is (`Ok(Some(range))`), `Ok(None)` when the file
/// does not start as a `.npy` file of a version this knows (`npyz` then says why), or
/// the error of a file that ends before its header does.
fn header_text(path: &Path, bytes: &[u8]) -> Result<Option<std::ops::Range<usize>>> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let truncated = |needed: String| {
        npy_error(
            path,
            format!(
                "the .npy header is truncated: the file has {} bytes, its header needs {needed}",
                bytes.len()
            ),
        )
    };
    let known = bytes.len().min(MAGIC.len());
    if bytes[..known] != MAGIC[..known] {
        return Ok(None);
    }
    let Some(&version) = bytes.get(6) else {
        return Err(truncated("at least 10".to_string()));
    };
    let (preamble, length) = match version {
        1 => (
            10,
            bytes
                .get(8..10)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        2 | 3 => (
            12,
            bytes
                .get(8..12)
                .and_then(|b| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()),
        ),
        _ => return Ok(None),
    };
    let Some(length) = length else {
        return Err(truncated(format!("at least {preamble}")));
    };
    let end = preamble + length;
    if bytes.len() < end {
        return Err(truncated(format!("{end} ({preamble} + {length} of text)")));
    }
    Ok(Some(preamble..end))
}

/// The dimensions a `.npy` header's text declares, read before `npyz` parses it (which
/// multiplies the dimensions without an overflow check): the value of its one `shape`
/// key, a tuple of decimal integers.
fn declared_shape(header: &str) -> std::result::Result<Vec<u64>, &'static str> {
    // Every `'shape':` or `"shape":` (a field of a structured dtype named `shape` is
    // followed by a comma, not a colon).
    let mut values = header
        .match_indices("shape")
        .filter(|(i, _)| {
            let quote = header[..*i].chars().next_back();
            matches!(quote, Some('\'' | '"'))
                && header[i + 5..].starts_with(quote.unwrap_or('\''))
                && header[i + 6..].trim_start().starts_with(':')
        })
        .map(|(i, _)| header[i + 6..].trim_start()[1..].trim_start());
    let value = values.next().ok_or("has no 'shape'")?;
    if values.next().is_some() {
        return Err("names 'shape' twice");
    }
    let tuple = value
        .strip_prefix('(')
        .and_then(|v| v.split_once(')'))
        .ok_or("has a 'shape' that is not a tuple")?
        .0;
    tuple
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| d.parse::<u64>().ok())
                .flatten()
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or("has a 'shape' whose values are not decimal integers below 2^64")
}

/// A shape as errors quote it: `[2, 3]`, at most 200 characters of it.
fn quoted_shape<T: std::fmt::Debug>(shape: &[T]) -> String {
    excerpt(&format!("{shape:?}"))
}

/// Reads a `[rows, cols]` matrix of f32 or f64 (converted to f32) in C order.
///
/// Any other dtype, Fortran order, a number of dimensions other than 2, a shape
/// with more values than the file holds, a header longer than the file, or an f64
/// value beyond f32's range is an [`Error::Npy`] that says what was found and what is
/// expected. The file must be a regular file (or a symbolic link to one): anything
/// else is [`Error::NotRegularFile`], refused before it is read.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = read_regular(path, u64::MAX)?;
    let file_len = bytes.len() as u64;
    let declared = match header_text(path, &bytes)? {
        None => None,
        Some(range) => {
            let header = String::from_utf8_lossy(&bytes[range.clone()]);
            let dims = declared_shape(&header).map_err(|problem| {
                npy_error(
                    path,
                    format!(
                        "not a valid .npy file: its header {problem}: {}",
                        excerpt(header.trim_end())
                    ),
                )
            })?;
            if dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .is_none()
            {
                return Err(npy_error(
                    path,
                    format!(
                        "shape {} has more values than can be addressed",
                        quoted_shape(&dims)
                    ),
                ));
            }
            Some((dims, range.end as u64))
        }
    };
    let npy = NpyFile::new(&bytes[..]).map_err(|e| {
        npy_error(
            path,
            format!("not a valid .npy file: {}", bound_quotes(&e.to_string())),
        )
    })?;
    let Some((dims, data_start)) = &declared else {
        // `npyz` read a header that `header_text` does not know.
        return Err(npy_error(
            path,
            "not a valid .npy file: expected the magic string and version 1, 2 or 3",
        ));
    };
    if npy.shape() != dims.as_slice() {
        return Err(npy_error(
            path,
            format!(
                "not a valid .npy file: its header's shape reads as {} and as {}",
                quoted_shape(dims),
                quoted_shape(npy.shape())
            ),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.len() != 2 {
        return Err(npy_error(
            path,
            format!(
                "expected 2 dimensions [batch, features], got {} with shape {}",
                shape.len(),
                quoted_shape(&shape)
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
    if let Some(size) = float_size {
        // The data the shape needs against what follows the header.
        let needed = npy.len().checked_mul(size);
        let held = file_len.saturating_sub(*data_start);
        if needed.is_none_or(|n| n > held) {
            return Err(npy_error(
                path,
                format!(
                    "shape {shape:?} of {} needs {} bytes of data; the file holds {held}",
                    excerpt(&dtype.descr()),
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
                    excerpt(&dtype.descr())
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
