//! Member weights in safetensors, laid out the way PyTorch saves `nn.Linear` layers:
//! `<prefix>.weight` `[out, in]` and `<prefix>.bias` `[out]` for every layer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{io_error, write_atomically};
use crate::error::{Error, Result};
use crate::files::{bound_quotes, excerpt, read_regular};
use crate::model::{Activation, Dense, Model};
use crate::tensor::Tensor;

/// The metadata key that lists a file's activations, comma-separated, one per layer.
pub const ACTIVATIONS_KEY: &str = "activations";

/// How to read a member's layers from a safetensors file.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// One activation per layer. When `None`, the file's metadata key `activations`
    /// (comma-separated) gives them.
    pub activations: Option<Vec<Activation>>,
    /// The layer prefixes in order (`["0", "2"]`, `["fc1", "fc2"]`). When `None`, every
    /// `<prefix>.weight` / `<prefix>.bias` pair of the file is a layer, in natural order
    /// of the prefixes (`0 < 2 < 10`, `fc1 < fc2`), and any other tensor is an error.
    pub layers: Option<Vec<String>>,
}

impl LoadOptions {
    /// Sets [`LoadOptions::activations`].
    pub fn activations(mut self, activations: Vec<Activation>) -> Self {
        self.activations = Some(activations);
        self
    }

    /// Sets [`LoadOptions::layers`].
    pub fn layers(mut self, layers: Vec<String>) -> Self {
        self.layers = Some(layers);
        self
    }
}

/// Loads a member network from a `.safetensors` file in PyTorch's layout.
///
/// Tensors of dtype F32, F16, BF16 and F64 are converted to f32. Every error names the
/// file and, where there is one, the tensor (at most 200 characters of its name).
///
/// The file must be a regular file (or a symbolic link to one): a directory or a device
/// node is [`Error::NotRegularFile`], refused before it is read. A tensor named twice
/// in the header is [`Error::DuplicateTensor`]; data offsets that span other than the
/// bytes a tensor's dtype and shape need are [`Error::TensorByteLength`].
pub fn load_model(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
    let path = path.as_ref();
    let bytes = read_regular(path, u64::MAX)?;
    model_from_bytes(path, &bytes, options)
}

/// [`load_model`] of a safetensors file's bytes already in memory; `path` only names
/// the file in errors. Every check of [`load_model`] applies, none reads a file.
pub fn model_from_bytes(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<Model> {
    let corrupt = |e: safetensors::SafeTensorError| Error::CorruptFile {
        path: path.to_path_buf(),
        message: bound_quotes(&e.to_string()),
    };
    let entries = header_entries(bytes);
    if let Some(tensor) = entries.as_deref().and_then(duplicate_name) {
        return Err(Error::DuplicateTensor {
            path: path.to_path_buf(),
            tensor: excerpt(tensor),
        });
    }
    let file = SafeTensors::deserialize(bytes).map_err(|e| {
        entries
            .as_deref()
            .and_then(|entries| byte_length_error(path, entries))
            .unwrap_or_else(|| corrupt(e))
    })?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;

    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let prefixes = match &options.layers {
        Some(layers) => layers.clone(),
        None => layer_prefixes(path, &names)?,
    };
    if prefixes.is_empty() {
        return Err(Error::MissingTensor {
            path: path.to_path_buf(),
            tensor: "<prefix>.weight".to_string(),
            hint: "the file has no dense layer".to_string(),
        });
    }

    let activations = match &options.activations {
        Some(a) => a.clone(),
        None => metadata_activations(path, metadata.metadata())?,
    };
    if activations.len() != prefixes.len() {
        return Err(Error::ActivationCount {
            path: path.to_path_buf(),
            expected: prefixes.len(),
            got: activations.len(),
        });
    }

    let mut layers = Vec::with_capacity(prefixes.len());
    let mut previous_out: Option<(String, usize)> = None;
    for (prefix, activation) in prefixes.iter().zip(activations) {
        let weight_name = format!("{prefix}.weight");
        let bias_name = format!("{prefix}.bias");
        let (weight_shape, weight) = read_tensor(path, &file, &weight_name, &names)?;
        let (bias_shape, bias) = read_tensor(path, &file, &bias_name, &names)?;
        let shape_error = |tensor: &str, expected: String, got: &[usize]| Error::TensorShape {
            path: path.to_path_buf(),
            tensor: excerpt(tensor),
            expected,
            got: got.to_vec(),
        };
        let (out, inp) = match weight_shape[..] {
            [out, inp] if out > 0 && inp > 0 => (out, inp),
            _ => {
                return Err(shape_error(
                    &weight_name,
                    "[out, in] with out, in >= 1".to_string(),
                    &weight_shape,
                ))
            }
        };
        if let Some((previous, width)) = &previous_out {
            if inp != *width {
                return Err(shape_error(
                    &weight_name,
                    format!(
                        "[{out}, {width}] to chain with '{}' ({width} outputs)",
                        excerpt(previous)
                    ),
                    &weight_shape,
                ));
            }
        }
        if bias_shape != [out] {
            return Err(shape_error(
                &bias_name,
                format!("[{out}] to match '{}'", excerpt(&weight_name)),
                &bias_shape,
            ));
        }
        let layer = Dense::new(Tensor::matrix(out, inp, weight)?, bias, activation);
        // A NaN or infinity is named with its file and tensor.
        layers.push(layer.map_err(|e| match e {
            // The layer's tensors are named `{prefix}.weight` and `{prefix}.bias`.
            Error::NonFiniteWeight {
                tensor,
                index,
                value,
                ..
            } => Error::NonFiniteTensor {
                path: path.to_path_buf(),
                tensor: excerpt(&format!("{prefix}.{tensor}")),
                index,
                value,
            },
            other => other,
        })?);
        previous_out = Some((weight_name, out));
    }
    Model::new(layers)
}

/// Saves a member as `0.weight`, `0.bias`, `1.weight`, ... (f32) with its activations
/// in the metadata key `activations`; [`load_model`] reads it back bit-identical.
///
/// The file is written to a temporary name and renamed, so `path` never holds a
/// partial file.
pub fn save_model(model: &Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in model.layers().iter().enumerate() {
        buffers.push((
            format!("{i}.weight"),
            layer.weight().shape().to_vec(),
            le_bytes(layer.weight().as_slice()),
        ));
        buffers.push((
            format!("{i}.bias"),
            vec![layer.out_features()],
            le_bytes(layer.bias()),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| io_error(path, e))?;
    let activations: Vec<&str> = model
        .layers()
        .iter()
        .map(|l| l.activation().name())
        .collect();
    let metadata = HashMap::from([(ACTIVATIONS_KEY.to_string(), activations.join(","))]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| io_error(path, e))?;
    write_atomically(path, &bytes)
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The prefixes of every `<prefix>.weight` / `<prefix>.bias` pair, in natural order.
fn layer_prefixes(path: &Path, names: &[String]) -> Result<Vec<String>> {
    // prefix -> (has weight, has bias)
    let mut pairs: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for name in names {
        match name.rsplit_once('.') {
            Some((prefix, "weight")) => pairs.entry(prefix.to_string()).or_default().0 = true,
            Some((prefix, "bias")) => pairs.entry(prefix.to_string()).or_default().1 = true,
            _ => {
                return Err(Error::UnexpectedTensor {
                    path: path.to_path_buf(),
                    tensor: excerpt(name),
                })
            }
        }
    }
    for (prefix, (weight, bias)) in &pairs {
        let missing = match (weight, bias) {
            (true, false) => "bias",
            (false, true) => "weight",
            _ => continue,
        };
        return Err(Error::MissingTensor {
            path: path.to_path_buf(),
            tensor: excerpt(&format!("{prefix}.{missing}")),
            hint: format!(
                "'{}' has only its {}",
                excerpt(prefix),
                if *weight { "weight" } else { "bias" }
            ),
        });
    }
    let mut prefixes: Vec<String> = pairs.into_keys().collect();
    prefixes.sort_by(|a, b| natural_cmp(a, b));
    Ok(prefixes)
}

fn metadata_activations(
    path: &Path,
    metadata: &Option<HashMap<String, String>>,
) -> Result<Vec<Activation>> {
    let Some(list) = metadata.as_ref().and_then(|m| m.get(ACTIVATIONS_KEY)) else {
        return Ok(Vec::new());
    };
    parse_activations(path, list.split(','))
}

/// Parses activation names, naming `path` in the error.
pub(crate) fn parse_activations<'a>(
    path: &Path,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Activation>> {
    names
        .into_iter()
        .map(|name| {
            name.parse::<Activation>()
                .map_err(|_| Error::UnknownActivation {
                    path: path.to_path_buf(),
                    name: excerpt(name.trim()),
                })
        })
        .collect()
}

/// A tensor converted to f32, with its shape.
fn read_tensor(
    path: &Path,
    file: &SafeTensors<'_>,
    name: &str,
    names: &[String],
) -> Result<(Vec<usize>, Vec<f32>)> {
    let view = file.tensor(name).map_err(|_| Error::MissingTensor {
        path: path.to_path_buf(),
        tensor: excerpt(name),
        hint: format!("the file has {}", excerpt(&names.join(", "))),
    })?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => {
            let wide: Vec<f64> = data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            super::narrow(&wide).map_err(|(i, value)| Error::TensorOutOfRange {
                path: path.to_path_buf(),
                tensor: excerpt(name),
                index: super::unravel(i, view.shape()),
                value,
            })?
        }
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: excerpt(name),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok((view.shape().to_vec(), values))
}

/// A JSON value of a safetensors header, as far as the checks below need it.
enum Json {
    /// `true`, `false` or `null`.
    Other,
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    Text(String),
    Array(Vec<Json>),
    /// The entries in the order written, a name written twice kept twice.
    Object(Vec<(String, Json)>),
}

/// The entries of a safetensors file's header in the order written (tensors and
/// `__metadata__`), or `None` when the header is not JSON this reads: the
/// `safetensors` crate then says what is wrong. Read for the checks that crate does
/// not name a tensor in: it keeps one of two entries of the same name, and reports a
/// wrong byte length as "invalid shape, data type, or offset".
fn header_entries(bytes: &[u8]) -> Option<Vec<(String, Json)>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let text = std::str::from_utf8(bytes.get(8..end)?).ok()?;
    let mut parser = JsonParser {
        text: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let Json::Object(entries) = parser.value()? else {
        return None;
    };
    parser.skip_space();
    (parser.at == text.len()).then_some(entries)
}

/// The first tensor name written twice in a header's entries.
fn duplicate_name(entries: &[(String, Json)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| *name != "__metadata__")
        .find(|name| !seen.insert(*name))
}

/// [`Error::TensorByteLength`] for the first tensor (in the order of its data) whose
/// data offsets span other than the bytes its dtype and shape need.
fn byte_length_error(path: &Path, entries: &[(String, Json)]) -> Option<Error> {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let number = |v: &Json| match v {
        Json::Number(n) => n.parse::<u64>().ok(),
        _ => None,
    };
    let mut tensors: Vec<(u64, Error)> = Vec::new();
    for (name, value) in entries {
        let Json::Object(fields) = value else {
            continue;
        };
        let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let (Some(Json::Text(dtype)), Some(Json::Array(shape)), Some(Json::Array(offsets))) =
            (field("dtype"), field("shape"), field("data_offsets"))
        else {
            continue;
        };
        let name_of_dtype: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            dtype.as_str().into_deserializer();
        let Ok(bits) = Dtype::deserialize(name_of_dtype).map(|d| d.bitsize() as u64) else {
            continue;
        };
        let Some(shape) = shape.iter().map(number).collect::<Option<Vec<u64>>>() else {
            continue;
        };
        let [Some(start), Some(end)] =
            [offsets.first(), offsets.get(1)].map(|v| v.and_then(number))
        else {
            continue;
        };
        let expected = shape
            .iter()
            .try_fold(bits, |n, &d| n.checked_mul(d))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        if let (Some(expected), Some(got), 2) = (expected, end.checked_sub(start), offsets.len()) {
            if expected != got {
                tensors.push((
                    start,
                    Error::TensorByteLength {
                        path: path.to_path_buf(),
                        tensor: excerpt(name),
                        dtype: excerpt(dtype),
                        shape,
                        expected,
                        got,
                    },
                ));
            }
        }
    }
    tensors
        .into_iter()
        .min_by_key(|(start, _)| *start)
        .map(|(_, e)| e)
}

/// A JSON reader of the little a safetensors header holds, which never panics and
/// nests at most 64 deep.
struct JsonParser<'a> {
    text: &'a [u8],
    at: usize,
    depth: usize,
}

impl JsonParser<'_> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// Skips space and `byte`, or `None` when the next byte is another.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.text.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn value(&mut self) -> Option<Json> {
        self.skip_space();
        let value = match *self.text.get(self.at)? {
            b'{' => {
                self.nest()?;
                let mut entries = Vec::new();
                if self.eat(b'}').is_none() {
                    loop {
                        self.skip_space();
                        let key = self.string()?;
                        self.eat(b':')?;
                        entries.push((key, self.value()?));
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                self.depth -= 1;
                Json::Object(entries)
            }
            b'[' => {
                self.nest()?;
                let mut items = Vec::new();
                if self.eat(b']').is_none() {
                    loop {
                        items.push(self.value()?);
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                self.depth -= 1;
                Json::Array(items)
            }
            b'"' => Json::Text(self.string()?),
            b't' | b'f' | b'n' => {
                let word: &[u8] = match self.text[self.at] {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !self.text[self.at..].starts_with(word) {
                    return None;
                }
                self.at += word.len();
                Json::Other
            }
            b'-' | b'0'..=b'9' => {
                let start = self.at;
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') =
                    self.text.get(self.at)
                {
                    self.at += 1;
                }
                Json::Number(String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
            }
            _ => return None,
        };
        Some(value)
    }

    /// Steps into an object or array (past its opening byte).
    fn nest(&mut self) -> Option<()> {
        self.at += 1;
        self.depth += 1;
        (self.depth <= 64).then_some(())
    }

    /// A string at the cursor, unescaped.
    fn string(&mut self) -> Option<String> {
        if self.text.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let byte = *self.text.get(self.at)?;
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let escape = *self.text.get(self.at)?;
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1f => return None,
                _ => out.push(byte),
            }
        }
    }

    /// The character of a `\u` escape (past the `u`), a surrogate pair read whole.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if !(0xD800..0xE000).contains(&high) {
            return char::from_u32(high);
        }
        if high >= 0xDC00 || !self.text[self.at..].starts_with(b"\\u") {
            return None;
        }
        self.at += 2;
        let low = self.hex4()?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.text.get(self.at..self.at + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }
}

/// Compares names by their runs of digits as numbers and the rest as text:
/// `2 < 10`, `fc1 < fc2 < fc10`, `layers.2 < layers.10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(&cb) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len()
                .cmp(&tb.len())
                .then(ta.cmp(tb))
                .then(sa.len().cmp(&sb.len()))
        } else {
            sa.cmp(sb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "10",
            "2",
            "0",
            "fc10",
            "fc2",
            "fc1",
            "layers.10.lin",
            "layers.2.lin",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "0",
                "2",
                "10",
                "fc1",
                "fc2",
                "fc10",
                "layers.2.lin",
                "layers.10.lin"
            ]
        );
    }
}
