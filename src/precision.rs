//! [`Precision`]: the arithmetic of the dense kernels.

use crate::error::{Error, Result};

/// The arithmetic of the GPU dense kernels. Mixed precision is an option, never the
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precision {
    /// f32 weights, activations and accumulation. Tolerance against the f64
    /// reference: absolute 1e-5 or relative 1e-4.
    #[default]
    F32,
    /// f16 weights (half the memory and bandwidth), layer inputs rounded to f16 as they
    /// are read, every product (exact in f32) accumulated in f32; biases, activations
    /// between layers and outputs stay f32. Needs the adapter feature `SHADER_F16`
    /// (a session on an adapter without it fails to build with
    /// [`Error::PrecisionUnsupported`]). Tolerance: absolute 3e-4 or relative 3e-3
    /// against an f64 reference whose weights and layer inputs are rounded to f16 the
    /// same way (a hidden value within f32 rounding of an f16 rounding boundary may
    /// round the other way, about 1e-4 per flip); against the exact f64 reference
    /// expect about 1e-3 to 1e-2. Values beyond ±65504 overflow. On the CPU the same rounding is applied,
    /// so every placement gives the same results.
    F16,
    /// The arithmetic of [`Precision::F16`] (f16 weights and layer inputs, f32
    /// accumulation, the same tolerance against the same reference, checked on
    /// lavapipe's 8×8×8 matrices and the H100's 16×16×16) with the
    /// products of
    /// batches over 16 rows run on the adapter's cooperative-matrix units (tensor
    /// cores) through wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX`. Needs an adapter that
    /// lists a 16×16×16 or 8×8×8 configuration with f16 operands and an f32
    /// accumulator (see [`AdapterInfo::cooperative_matrix`](crate::AdapterInfo)),
    /// plus `SHADER_F16` and `SUBGROUP`; anything less fails the session build with
    /// [`Error::PrecisionUnsupported`], never a silent fallback. Batches of at most
    /// 16 rows take the `F16` small-batch kernel, and the CPU applies the `F16`
    /// rounding. wgpu marks the feature experimental: the crate enables it only on
    /// the devices a session with this precision opens.
    F16CoopMatrix,
}

impl Precision {
    /// `f32`, `f16` or `f16-coop`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::F16CoopMatrix => "f16-coop",
        }
    }

    /// Whether weights and layer inputs are rounded to f16.
    pub(crate) fn is_f16(self) -> bool {
        matches!(self, Precision::F16 | Precision::F16CoopMatrix)
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "f16-coop" => Ok(Precision::F16CoopMatrix),
            _ => Err(Error::UnknownPrecision {
                name: s.to_string(),
            }),
        }
    }
}
