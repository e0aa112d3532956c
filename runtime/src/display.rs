//! Printing tensors (placeholder, replaced by the PyTorch-style printer).

use crate::tensor::Tensor;
use std::fmt;

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tensor({:?}, shape={:?}, dtype={})",
            self.to_f64_vec(),
            self.shape(),
            self.dtype()
        )
    }
}
