//! Member weights in safetensors, laid out the way PyTorch saves `nn.Linear` layers:
//! `<prefix>.weight` `[out, in]` and `<prefix>.bias` `[out]` for every layer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{io_error, write_atomically};
use crate::error::{Error, Result};
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
/// file and, where there is one, the tensor.
pub fn load_model(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let corrupt = |e: safetensors::SafeTensorError| Error::CorruptFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;

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
            tensor: tensor.to_string(),
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
                    format!("[{out}, {width}] to chain with '{previous}' ({width} outputs)"),
                    &weight_shape,
                ));
            }
        }
        if bias_shape != [out] {
            return Err(shape_error(
                &bias_name,
                format!("[{out}] to match '{weight_name}'"),
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
                tensor: format!("{prefix}.{tensor}"),
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
                    tensor: name.clone(),
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
            tensor: format!("{prefix}.{missing}"),
            hint: format!(
                "'{prefix}' has only its {}",
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
                    name: name.trim().to_string(),
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
        tensor: name.to_string(),
        hint: format!("the file has {}", names.join(", ")),
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
                tensor: name.to_string(),
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
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok((view.shape().to_vec(), values))
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
