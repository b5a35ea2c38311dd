//! Host tensors: a shape and a row-major `f32` buffer.

use std::sync::Arc;

use crate::error::{Error, Result};

/// A row-major `f32` tensor on the host.
///
/// The data is reference counted, so cloning a tensor (for example to hand the same
/// input to several device workers) does not copy its values; nor does making one from
/// a `Vec<f32>`, which the tensor keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl Tensor {
    /// A tensor of the given shape; `data.len()` must equal the product of `shape`.
    pub fn new(shape: impl Into<Vec<usize>>, data: impl Into<Vec<f32>>) -> Result<Self> {
        let shape = shape.into();
        let data = data.into();
        let expected = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::ShapeTooLarge {
                shape: shape.clone(),
            })?;
        if data.len() != expected {
            return Err(Error::TensorData {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            shape,
            data: Arc::new(data),
        })
    }

    /// A tensor whose data length is known to match its shape.
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self {
            shape,
            data: Arc::new(data),
        }
    }

    /// A `[rows, cols]` matrix from row-major data.
    pub fn matrix(rows: usize, cols: usize, data: impl Into<Vec<f32>>) -> Result<Self> {
        Self::new(vec![rows, cols], data)
    }

    /// A `[rows, cols]` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            shape: vec![rows, cols],
            data: Arc::new(vec![0.0; rows * cols]),
        }
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice()
    }

    /// The values as a new vector.
    pub fn to_vec(&self) -> Vec<f32> {
        self.data.to_vec()
    }

    /// The values as a vector, without a copy when no clone of the tensor shares them
    /// (a run's output, for example).
    pub fn into_vec(self) -> Vec<f32> {
        Arc::unwrap_or_clone(self.data)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `(rows, cols)` of a rank-2 tensor; `what` names the tensor in the error.
    pub fn dims2(&self, what: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [rows, cols] => Ok((rows, cols)),
            _ => Err(Error::Rank {
                what,
                expected: 2,
                shape: self.shape.clone(),
            }),
        }
    }

    /// One row of a rank-2 tensor, or `None` when out of range or not rank 2.
    pub fn row(&self, index: usize) -> Option<&[f32]> {
        let (rows, cols) = self.dims2("row").ok()?;
        (index < rows).then(|| &self.data[index * cols..(index + 1) * cols])
    }

    /// The index of the largest value of each row of a rank-2 tensor.
    ///
    /// Ties go to the lowest index and NaN never wins, the rule the vote aggregate
    /// uses; a row of only NaN gives 0.
    pub fn argmax_rows(&self) -> Result<Vec<usize>> {
        let (_, cols) = self.dims2("argmax_rows")?;
        if cols == 0 {
            return Ok(Vec::new());
        }
        Ok(self.data.chunks(cols).map(argmax).collect())
    }
}

/// Index of the largest value; ties go to the lowest index and NaN never wins.
///
/// The scan starts from `f32::MIN` and moves only on a strictly greater value, the same
/// rule as `shaders/aggregate.wgsl`, so host and device votes agree.
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::MIN;
    for (i, &v) in row.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        let err = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(matches!(
            err,
            Error::TensorData {
                expected: 6,
                got: 5,
                ..
            }
        ));
    }

    #[test]
    fn into_vec_keeps_the_values_and_moves_an_unshared_buffer() {
        let data = vec![1.0, 2.0, 3.0, 4.0];
        let address = data.as_ptr();
        let t = Tensor::matrix(2, 2, data).unwrap();
        assert_eq!(t.as_slice().as_ptr(), address, "the tensor kept the vector");
        let shared = t.clone();
        let copied = shared.into_vec();
        assert_eq!(copied, [1.0, 2.0, 3.0, 4.0]);
        assert_ne!(copied.as_ptr(), address, "a shared buffer is copied");
        let moved = t.into_vec();
        assert_eq!(moved.as_ptr(), address, "an unshared buffer is moved");
        assert_eq!(moved, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn argmax_ties_go_low_and_nan_never_wins() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1.0]), 1);
        assert_eq!(argmax(&[-2.0, -1.0, -3.0]), 1);
    }
}
