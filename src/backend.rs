//! Which engine runs a solve: the CPU reference, the GPU on a chosen API,
//! or the GPU when one exists.

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, TrmError};
use crate::gpu::GpuBackend;

/// The engine choice of `trm run --backend` (and of applications that offer
/// the same choice).
///
/// ```
/// use trm_wgpu::{Backend, gpu::GpuBackend};
/// assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
/// assert_eq!("vulkan".parse::<Backend>().unwrap(), Backend::Gpu(GpuBackend::Vulkan));
/// assert_eq!("gpu".parse::<Backend>().unwrap(), Backend::Gpu(GpuBackend::Any));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The CPU reference engine.
    #[default]
    Cpu,
    /// The GPU engine when an adapter exists and can run the model, else
    /// the CPU engine.
    Auto,
    /// The GPU engine on the given API (or any).
    Gpu(GpuBackend),
}

impl Backend {
    /// The spelling [`Backend::from_str`] accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Auto => "auto",
            Backend::Gpu(gpu) => gpu.as_str(),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = TrmError;
    /// `cpu`, `auto`, `gpu`, or a GPU API: `vulkan`, `metal`, `dx12`, `gl`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Backend::Cpu),
            "auto" => Ok(Backend::Auto),
            other => other.parse().map(Backend::Gpu).map_err(|_| {
                TrmError::BackendUnavailable(format!(
                    "{s} (one of cpu, gpu, auto, vulkan, metal, dx12, gl)"
                ))
            }),
        }
    }
}
