//! `.npy` arrays: f32 or f64 `[batch, features]` matrices in (read here, with a
//! strict header parser), f32 tensors out (written by `npyz`).

use std::path::Path;

use npyz::WriterBuilder;

use super::io_error;
use crate::error::{Error, Result};
use crate::files::{excerpt, read_regular};
use crate::tensor::Tensor;

fn npy_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Where a `.npy` file's header text is (`Ok(Some(range))`), `Ok(None)` when the file
/// does not start as a `.npy` file of a version this knows, or
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

/// The longest header read, as numpy's `np.load` (its `max_header_size`): a longer
/// one is refused before it is parsed.
const MAX_HEADER: usize = 10_000;

/// What a `.npy` header says: the dict numpy writes, `{'descr': '<f4',
/// 'fortran_order': False, 'shape': (3, 4), }`.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A strict, linear reader of the header dict (a Python literal): the three keys
/// numpy writes, each once, in any order; `descr` a string, `fortran_order` `True` or
/// `False`, `shape` a tuple of decimal integers; spaces and newlines between tokens.
/// Anything else (a structured dtype's list, another key, an expression) is refused
/// with what was expected, never handed to a general literal parser.
struct HeaderReader<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> HeaderReader<'a> {
    fn skip_space(&mut self) {
        while self
            .text
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    /// Consumes `token` after optional spaces; false (consuming nothing) when absent.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        let found = self.text[self.at..].starts_with(token.as_bytes());
        if found {
            self.at += token.len();
        }
        found
    }

    /// A quoted string without escapes.
    fn string(&mut self) -> Option<&'a str> {
        self.skip_space();
        let quote = *self
            .text
            .get(self.at)
            .filter(|q| matches!(q, b'\'' | b'"'))?;
        let body = &self.text[self.at + 1..];
        let len = body.iter().position(|&b| b == quote || b == b'\\')?;
        if body[len] != quote {
            return None;
        }
        self.at += len + 2;
        std::str::from_utf8(&body[..len]).ok()
    }

    /// A tuple of decimal integers: `()`, `(3,)`, `(3, 4)`, `(3, 4,)`.
    fn shape(&mut self) -> std::result::Result<Vec<u64>, &'static str> {
        const NOT_A_TUPLE: &str = "has a 'shape' that is not a tuple of decimal integers";
        if !self.eat("(") {
            return Err(NOT_A_TUPLE);
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(")") {
                return Ok(dims);
            }
            self.skip_space();
            let digits = self.text[self.at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                return Err(NOT_A_TUPLE);
            }
            let value = std::str::from_utf8(&self.text[self.at..self.at + digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or("has a 'shape' whose values are not decimal integers below 2^64")?;
            self.at += digits;
            dims.push(value);
            if !self.eat(",") {
                return if self.eat(")") {
                    Ok(dims)
                } else {
                    Err(NOT_A_TUPLE)
                };
            }
        }
    }

    fn header(mut self) -> std::result::Result<Header, String> {
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        if !self.eat("{") {
            return Err("is not a dict (it does not start with '{')".to_string());
        }
        loop {
            if self.eat("}") {
                break;
            }
            let key = self
                .string()
                .ok_or("has a key that is not a quoted string")?;
            if !self.eat(":") {
                return Err(format!("has no ':' after '{}'", excerpt(key)));
            }
            let twice = || format!("names '{key}' twice");
            match key {
                "descr" => {
                    let value = self.string().ok_or(
                        "has a 'descr' that is not a plain dtype string \
                         (structured dtypes are not supported)",
                    )?;
                    if descr.replace(value.to_string()).is_some() {
                        return Err(twice());
                    }
                }
                "fortran_order" => {
                    let value = if self.eat("True") {
                        true
                    } else if self.eat("False") {
                        false
                    } else {
                        return Err("has a 'fortran_order' that is not True or False".into());
                    };
                    if fortran_order.replace(value).is_some() {
                        return Err(twice());
                    }
                }
                "shape" => {
                    let value = self.shape()?;
                    if shape.replace(value).is_some() {
                        return Err(twice());
                    }
                }
                other => {
                    return Err(format!(
                        "has the key '{}'; expected only 'descr', 'fortran_order' and 'shape'",
                        excerpt(other)
                    ))
                }
            }
            if !self.eat(",") {
                if self.eat("}") {
                    break;
                }
                return Err("has no ',' or '}' after a value".to_string());
            }
        }
        self.skip_space();
        if self.at != self.text.len() {
            return Err("has text after its closing '}'".to_string());
        }
        Ok(Header {
            descr: descr.ok_or("has no 'descr'")?,
            fortran_order: fortran_order.ok_or("has no 'fortran_order'")?,
            shape: shape.ok_or("has no 'shape'")?,
        })
    }
}

/// A shape as errors quote it: `[2, 3]`, at most 200 characters of it.
fn quoted_shape<T: std::fmt::Debug>(shape: &[T]) -> String {
    excerpt(&format!("{shape:?}"))
}

/// The header of a `.npy` file's bytes and the data after it.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, &'a [u8])> {
    let Some(range) = header_text(path, bytes)? else {
        return Err(npy_error(
            path,
            "not a valid .npy file: expected the magic string \\x93NUMPY and version 1, 2 or 3",
        ));
    };
    if range.len() > MAX_HEADER {
        return Err(npy_error(
            path,
            format!(
                "not a valid .npy file: its header is {} bytes long; at most {MAX_HEADER} \
                 are read (numpy's own limit)",
                range.len()
            ),
        ));
    }
    let data = &bytes[range.end..];
    let header = HeaderReader {
        text: &bytes[range.clone()],
        at: 0,
    }
    .header()
    .map_err(|problem| {
        let text = String::from_utf8_lossy(&bytes[range]);
        npy_error(
            path,
            format!(
                "not a valid .npy file: its header {problem}: {}",
                excerpt(text.trim_end())
            ),
        )
    })?;
    Ok((header, data))
}

/// Reads a `[rows, cols]` matrix of f32 or f64 (converted to f32) in C order.
///
/// Any other dtype, Fortran order, a number of dimensions other than 2, a shape
/// with more values than the file holds, a header longer than the file (or than
/// numpy's own limit of 10 000 bytes), a header other than the dict numpy writes, or an
/// f64 value beyond f32's range is an [`Error::Npy`] that says what was found and what
/// is expected. The file must be a regular file (or a symbolic link to one): anything
/// else is [`Error::NotRegularFile`], refused before it is read.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = read_regular(path, u64::MAX)?;
    matrix_from_bytes(path, &bytes)
}

/// [`read_matrix`] of a `.npy` file's bytes already in memory; `path` only names the
/// file in errors. Every check of [`read_matrix`] applies, none reads a file. The
/// header is read by a strict parser of its own, in time linear in its length.
pub fn matrix_from_bytes(path: &Path, bytes: &[u8]) -> Result<Tensor> {
    let (header, data) = parse(path, bytes)?;
    float_matrix(path, &header, data)
}

/// The float matrix of a parsed header and its data.
fn float_matrix(path: &Path, header: &Header, data: &[u8]) -> Result<Tensor> {
    let dims = &header.shape;
    let Some(count) = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)) else {
        return Err(npy_error(
            path,
            format!(
                "shape {} has more values than can be addressed",
                quoted_shape(dims)
            ),
        ));
    };
    let [rows, cols] = dims[..] else {
        return Err(npy_error(
            path,
            format!(
                "expected 2 dimensions [batch, features], got {} with shape {}",
                dims.len(),
                quoted_shape(dims)
            ),
        ));
    };
    if header.fortran_order {
        return Err(npy_error(
            path,
            "array is in Fortran order; expected C order (numpy.ascontiguousarray)",
        ));
    }
    let descr = header.descr.as_str();
    let (little, size) = match descr.as_bytes() {
        [order @ (b'<' | b'>' | b'='), b'f', size @ (b'4' | b'8')] => {
            (*order != b'>', usize::from(size - b'0'))
        }
        _ => {
            return Err(npy_error(
                path,
                format!(
                    "dtype '{}' is not supported; expected float32 or float64 ('<f4', '<f8')",
                    excerpt(descr)
                ),
            ))
        }
    };
    let shape = [rows, cols].map(|d| usize::try_from(d).unwrap_or(usize::MAX));
    let needed = count.checked_mul(size as u64);
    let held = data.len() as u64;
    if needed.is_none_or(|n| n > held) {
        return Err(npy_error(
            path,
            format!(
                "shape {shape:?} of '{descr}' needs {} bytes of data; the file holds {held}",
                needed.map_or("more than 2^64".to_string(), |n| n.to_string()),
            ),
        ));
    }
    // `count * size <= data.len()`: the count fits a usize.
    let data = &data[..count as usize * size];
    let values: Vec<f32> = if size == 4 {
        data.chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if little {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                }
            })
            .collect()
    } else {
        let wide: Vec<f64> = data
            .chunks_exact(8)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }
            })
            .collect();
        super::narrow(&wide).map_err(|(i, value)| {
            let at = super::unravel(i, &shape);
            let range = f32::MAX;
            npy_error(
                path,
                format!("value {value:e} at {at:?} is beyond float32's range (±{range:e})"),
            )
        })?
    };
    Tensor::new(shape.to_vec(), values).map_err(|e| npy_error(path, e.to_string()))
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

/// A `.npy` array of one or two dimensions as training targets read it: integers
/// (labels) or floats (values, converted to f32).
#[derive(Debug)]
pub(crate) enum Array {
    /// Integer dtypes (`i1` … `i8`, `u1` … `u8`), as i64 (`u8` values above
    /// `i64::MAX` are refused).
    Int {
        /// The shape, one or two dimensions.
        shape: Vec<usize>,
        /// The values in C order.
        values: Vec<i64>,
    },
    /// float32 or float64 (converted to f32).
    Float(Tensor),
}

/// Reads a `.npy` array of one or two dimensions, integer or float, in C order (a
/// regular file, read whole): training targets, `[n]` labels or `[n, k]` values.
pub(crate) fn read_array(path: &Path) -> Result<Array> {
    let bytes = read_regular(path, u64::MAX)?;
    array_from_bytes(path, &bytes)
}

/// [`read_array`] of a file's bytes; `path` names it in errors.
fn array_from_bytes(path: &Path, bytes: &[u8]) -> Result<Array> {
    let (header, data) = parse(path, bytes)?;
    if header.fortran_order && header.shape.len() > 1 {
        return Err(npy_error(
            path,
            "array is in Fortran order; expected C order (numpy.ascontiguousarray)",
        ));
    }
    let descr = header.descr.as_str();
    let (order, kind, size) = match descr.as_bytes() {
        [order @ (b'<' | b'>' | b'=' | b'|'), kind @ (b'i' | b'u' | b'f'), size] => {
            (*order, *kind, usize::from(size.wrapping_sub(b'0')))
        }
        _ => (b'<', b'?', 0),
    };
    let known = match kind {
        b'i' | b'u' => matches!(size, 1 | 2 | 4 | 8),
        b'f' => matches!(size, 4 | 8),
        _ => false,
    };
    if !known {
        return Err(npy_error(
            path,
            format!(
                "dtype '{}' is not supported; expected an integer (int8 … int64, uint8 … uint64) \
                 or float32 / float64",
                excerpt(descr)
            ),
        ));
    }
    if kind == b'f' {
        if header.shape.len() == 1 {
            // [n] floats: read as the [n, 1] matrix they are.
            let column = Header {
                descr: header.descr.clone(),
                fortran_order: false,
                shape: vec![header.shape[0], 1],
            };
            return float_matrix(path, &column, data).map(Array::Float);
        }
        return float_matrix(path, &header, data).map(Array::Float);
    }
    let dims = &header.shape;
    if !matches!(dims.len(), 1 | 2) {
        return Err(npy_error(
            path,
            format!(
                "expected 1 or 2 dimensions, got {} with shape {}",
                dims.len(),
                quoted_shape(dims)
            ),
        ));
    }
    let count = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let needed = count.and_then(|c| c.checked_mul(size as u64));
    let held = data.len() as u64;
    let (Some(count), Some(needed)) = (count, needed) else {
        return Err(npy_error(
            path,
            format!(
                "shape {} has more values than can be addressed",
                quoted_shape(dims)
            ),
        ));
    };
    if needed > held {
        return Err(npy_error(
            path,
            format!(
                "shape {} of '{descr}' needs {needed} bytes of data; the file holds {held}",
                quoted_shape(dims)
            ),
        ));
    }
    let big = order == b'>';
    let mut values = Vec::new();
    values
        .try_reserve_exact(count as usize)
        .map_err(|_| npy_error(path, format!("cannot allocate {count} values")))?;
    for (i, b) in data[..needed as usize].chunks_exact(size).enumerate() {
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(b);
        if big {
            le[..size].reverse();
        }
        let negative = kind == b'i' && le[size - 1] & 0x80 != 0;
        if negative {
            le[size..].fill(0xff);
        }
        let raw = u64::from_le_bytes(le);
        let value = if kind == b'i' {
            raw as i64
        } else {
            i64::try_from(raw).map_err(|_| {
                npy_error(
                    path,
                    format!("value {raw} at index {i} is beyond int64's range"),
                )
            })?
        };
        values.push(value);
    }
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    Ok(Array::Int { shape, values })
}

#[cfg(test)]
mod tests {
    use super::{array_from_bytes, Array};
    use std::path::Path;

    /// A version-1 `.npy` file of `descr` and `shape` holding `data`.
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn ints(bytes: &[u8]) -> (Vec<usize>, Vec<i64>) {
        match array_from_bytes(Path::new("y.npy"), bytes) {
            Ok(Array::Int { shape, values }) => (shape, values),
            other => panic!("expected integers, got {other:?}"),
        }
    }

    #[test]
    fn integer_targets_of_every_width_and_order() {
        let le: Vec<u8> = [3i64, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(ints(&npy("<i8", "(3,)", &le)), (vec![3], vec![3, -1, 7]));
        let be: Vec<u8> = [3i32, -1].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(ints(&npy(">i4", "(2,)", &be)), (vec![2], vec![3, -1]));
        assert_eq!(
            ints(&npy("|u1", "(2, 1)", &[255, 0])),
            (vec![2, 1], vec![255, 0])
        );
        assert_eq!(ints(&npy("|i1", "(1,)", &[0x80])), (vec![1], vec![-128]));
        let big = u64::MAX.to_le_bytes();
        assert!(array_from_bytes(Path::new("y.npy"), &npy("<u8", "(1,)", &big)).is_err());
    }

    #[test]
    fn float_targets_become_a_matrix() {
        let data: Vec<u8> = [0.5f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        match array_from_bytes(Path::new("y.npy"), &npy("<f8", "(2,)", &data)) {
            Ok(Array::Float(t)) => {
                assert_eq!(t.shape(), &[2, 1]);
                assert_eq!(t.as_slice(), &[0.5, 2.0]);
            }
            other => panic!("expected floats, got {other:?}"),
        }
    }

    #[test]
    fn other_arrays_are_refused() {
        let y = Path::new("y.npy");
        // Three dimensions, a truncated file, a dtype that is not a number.
        assert!(array_from_bytes(y, &npy("<i8", "(1, 1, 1)", &[0; 8])).is_err());
        assert!(array_from_bytes(y, &npy("<i8", "(2,)", &[0; 8])).is_err());
        assert!(array_from_bytes(y, &npy("<U3", "(1,)", &[0; 12])).is_err());
        assert!(array_from_bytes(y, &npy("|b1", "(1,)", &[1])).is_err());
    }
}
