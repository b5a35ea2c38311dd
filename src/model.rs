//! Member networks: stacks of dense layers `y = act(x · Wᵀ + b)` in PyTorch's layout.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The activation applied after a dense layer's `x · Wᵀ + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Activation {
    /// `y = x`.
    #[default]
    Identity,
    /// `y = max(x, 0)`.
    Relu,
    /// `y = tanh(x)`.
    Tanh,
    /// `y = 1 / (1 + e^(-x))`, evaluated in a form that does not overflow.
    Sigmoid,
    /// The exact GELU of PyTorch's `nn.GELU()` (`approximate='none'`):
    /// `y = x · Φ(x) = 0.5 · x · (1 + erf(x / √2))`. The kernels evaluate `erf` with
    /// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
    Gelu,
    /// Row-wise softmax `y_i = e^(x_i - max x) / Σ_j e^(x_j - max x)`, numerically
    /// stable for any magnitude of `x`.
    Softmax,
}

impl Activation {
    /// Every activation, in declaration order.
    pub const ALL: [Activation; 6] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Gelu,
        Activation::Softmax,
    ];

    /// The lower-case name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "gelu",
            Activation::Softmax => "softmax",
        }
    }

    /// The element-wise activations' code in `shaders/lib/activation.wgsl` (`ACT`); softmax is
    /// its own kernel, so the dense kernel stores its input unchanged (code 0).
    pub(crate) fn shader_code(self) -> u32 {
        match self {
            Activation::Identity | Activation::Softmax => 0,
            Activation::Relu => 1,
            Activation::Tanh => 2,
            Activation::Sigmoid => 3,
            Activation::Gelu => 4,
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an [`Activation`] from a name no activation has.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown activation '{0}': expected one of identity, relu, tanh, sigmoid, gelu, softmax")]
pub struct UnknownActivation(pub String);

impl FromStr for Activation {
    type Err = UnknownActivation;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "identity" | "linear" | "none" => Ok(Activation::Identity),
            _ => Activation::ALL
                .into_iter()
                .find(|a| a.name() == lower)
                .ok_or_else(|| UnknownActivation(s.to_string())),
        }
    }
}

/// One dense layer: `y = act(x · Wᵀ + b)` with `weight` `[out, in]` and `bias` `[out]`,
/// PyTorch's `nn.Linear` layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    weight: Tensor,
    bias: Vec<f32>,
    activation: Activation,
}

impl Dense {
    /// A layer from a `[out, in]` weight, an `[out]` bias and an activation: an error
    /// for other shapes ([`Error::LayerShape`]) and for a NaN or infinite value
    /// ([`Error::NonFiniteWeight`]).
    pub fn new(weight: Tensor, bias: Vec<f32>, activation: Activation) -> Result<Self> {
        Self::checked(0, weight, bias, activation)
    }

    fn checked(
        layer: usize,
        weight: Tensor,
        bias: Vec<f32>,
        activation: Activation,
    ) -> Result<Self> {
        let out = match weight.shape() {
            &[out, inp] if out > 0 && inp > 0 => out,
            other => {
                return Err(Error::LayerShape {
                    layer,
                    what: "weight must be [out, in] with out, in >= 1",
                    expected: vec![],
                    got: other.to_vec(),
                })
            }
        };
        if bias.len() != out {
            return Err(Error::LayerShape {
                layer,
                what: "bias length must equal the weight's out dimension",
                expected: vec![out],
                got: vec![bias.len()],
            });
        }
        let non_finite = |v: f32| !v.is_finite();
        let found = match first(weight.as_slice(), non_finite) {
            Some((i, value)) => Some(("weight", weight_position(&weight, i), value)),
            None => first(&bias, non_finite).map(|(i, value)| ("bias", vec![i], value)),
        };
        if let Some((tensor, index, value)) = found {
            return Err(Error::NonFiniteWeight {
                layer,
                tensor,
                index,
                value,
            });
        }
        Ok(Self {
            weight,
            bias,
            activation,
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The activation applied after the affine map.
    pub fn activation(&self) -> Activation {
        self.activation
    }
}

/// A member network: dense layers applied in order. Layers always chain: each layer's
/// input width equals the previous layer's output width.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    layers: Vec<Dense>,
}

impl Model {
    /// A model from layers; checks that there is at least one and that they chain.
    pub fn new(layers: Vec<Dense>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::EmptyModel);
        }
        for (i, pair) in layers.windows(2).enumerate() {
            let (prev, next) = (&pair[0], &pair[1]);
            if next.in_features() != prev.out_features() {
                return Err(Error::LayerShape {
                    layer: i + 1,
                    what: "weight's in dimension must equal the previous layer's out dimension",
                    expected: vec![next.out_features(), prev.out_features()],
                    got: next.weight.shape().to_vec(),
                });
            }
        }
        Ok(Self { layers })
    }

    /// A model from `(weight, bias, activation)` triples, checking every shape and
    /// value (finite) and naming the first layer that is wrong.
    pub fn from_parts(parts: Vec<(Tensor, Vec<f32>, Activation)>) -> Result<Self> {
        let layers = parts
            .into_iter()
            .enumerate()
            .map(|(i, (w, b, a))| Dense::checked(i, w, b, a))
            .collect::<Result<Vec<_>>>()?;
        Self::new(layers)
    }

    /// A model with seeded random weights, initialised like PyTorch's `nn.Linear`
    /// (uniform in `±1/√in` for weights and biases).
    ///
    /// `widths` lists the input width then each layer's output width;
    /// `activations` has one entry per layer (`widths.len() - 1`).
    pub fn random(widths: &[usize], activations: &[Activation], seed: u64) -> Result<Self> {
        if widths.len() < 2 {
            return Err(Error::EmptyModel);
        }
        let layers = widths.len() - 1;
        if activations.len() != layers {
            return Err(Error::LayerShape {
                layer: 0,
                what: "one activation per layer",
                expected: vec![layers],
                got: vec![activations.len()],
            });
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let parts = widths
            .windows(2)
            .zip(activations)
            .enumerate()
            .map(|(layer, (w, &act))| {
                let (inp, out) = (w[0], w[1]);
                if inp == 0 || out == 0 || inp.checked_mul(out).is_none() {
                    return Err(Error::LayerShape {
                        layer,
                        what: "widths must be at least 1 and their products must fit in memory",
                        expected: vec![],
                        got: vec![out, inp],
                    });
                }
                let bound = 1.0 / (inp.max(1) as f32).sqrt();
                // Sized by the caller: an allocation the host cannot make is an error,
                // not an abort.
                let too_large = || Error::ShapeTooLarge {
                    shape: vec![out, inp],
                };
                let len = inp * out;
                len.checked_mul(std::mem::size_of::<f32>())
                    .ok_or_else(too_large)?;
                let mut weight: Vec<f32> = Vec::new();
                weight.try_reserve_exact(len).map_err(|_| too_large())?;
                weight.extend((0..len).map(|_| rng.random_range(-bound..=bound)));
                let bias: Vec<f32> = (0..out).map(|_| rng.random_range(-bound..=bound)).collect();
                Ok((Tensor::matrix(out, inp, weight)?, bias, act))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_parts(parts)
    }

    /// The same model with `f` applied to every weight (not the biases).
    pub(crate) fn map_weights(&self, f: impl Fn(f32) -> f32) -> Model {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let values: Vec<f32> = l.weight.as_slice().iter().map(|&v| f(v)).collect();
                Dense {
                    weight: Tensor::from_parts(l.weight.shape().to_vec(), values),
                    bias: l.bias.clone(),
                    activation: l.activation,
                }
            })
            .collect();
        Model { layers }
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Dense] {
        &self.layers
    }

    /// The layer with the most inputs (the first of equals): its index and inputs.
    pub(crate) fn longest_layer(&self) -> (usize, usize) {
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| (l, layer.in_features()))
            .fold(
                (0, 0),
                |best, (l, n)| if n > best.1 { (l, n) } else { best },
            )
    }

    /// Input width of the first layer.
    pub fn in_features(&self) -> usize {
        self.layers[0].in_features()
    }

    /// Output width of the last layer.
    pub fn out_features(&self) -> usize {
        self.layers[self.layers.len() - 1].out_features()
    }

    /// Floating-point operations of one row's forward pass (2 per multiply-add).
    pub fn flops_per_row(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| 2 * (l.in_features() * l.out_features()) as u64)
            .sum()
    }

    /// The first weight (layer, `[out, in]`, value) that f16 cannot hold: finite in
    /// f32, infinite once rounded to f16 (beyond ±65504, give or take the rounding).
    pub(crate) fn first_beyond_f16(&self) -> Option<(usize, Vec<usize>, f32)> {
        self.layers.iter().enumerate().find_map(|(l, layer)| {
            first(layer.weight.as_slice(), |v| {
                half::f16::from_f32(v).is_infinite()
            })
            .map(|(i, value)| (l, weight_position(&layer.weight, i), value))
        })
    }
}

/// The index and value of the first of `values` that `test` picks.
fn first(values: &[f32], test: impl Fn(f32) -> bool) -> Option<(usize, f32)> {
    values.iter().position(|&v| test(v)).map(|i| (i, values[i]))
}

/// `[out, in]` of value `i` of a `[out, in]` weight.
fn weight_position(weight: &Tensor, i: usize) -> Vec<usize> {
    let inp = weight.shape()[1];
    vec![i / inp, i % inp]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_names_round_trip() {
        for a in Activation::ALL {
            assert_eq!(a.name().parse::<Activation>(), Ok(a));
        }
        assert!("swish".parse::<Activation>().is_err());
    }

    #[test]
    fn random_models_chain() {
        let m = Model::random(&[5, 7, 3], &[Activation::Relu, Activation::Softmax], 1).unwrap();
        assert_eq!((m.in_features(), m.out_features()), (5, 3));
        assert_eq!(m.flops_per_row(), 2 * (35 + 21));
    }
}
