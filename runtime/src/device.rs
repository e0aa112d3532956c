//! Devices.

use std::fmt;

/// Where a tensor's storage lives.
///
/// ```
/// use flint_runtime::Device;
/// assert_eq!(Device::default(), Device::Cpu);
/// assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory; kernels run on the CPU.
    #[default]
    Cpu,
    /// A CUDA device by ordinal (the `cuda` backend comes with the CUDA issue).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
