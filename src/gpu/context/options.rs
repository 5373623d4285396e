//! What a caller chooses of a context: the backend, the adapter, the
//! device's limits, how long waits may take; and the environment variables
//! that set them.

use super::*;

/// Which graphics API the GPU engine runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuBackend {
    /// Whatever the platform offers (the adapter is chosen among all APIs).
    #[default]
    Any,
    /// Vulkan (Linux, Windows, Android; Mesa's lavapipe without a GPU).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / OpenGL ES (EGL on Linux, llvmpipe without a GPU).
    Gl,
}

impl GpuBackend {
    /// The wgpu backends this choice enables.
    pub fn backends(self) -> wgpu::Backends {
        match self {
            GpuBackend::Any => wgpu::Backends::all(),
            GpuBackend::Vulkan => wgpu::Backends::VULKAN,
            GpuBackend::Metal => wgpu::Backends::METAL,
            GpuBackend::Dx12 => wgpu::Backends::DX12,
            GpuBackend::Gl => wgpu::Backends::GL,
        }
    }

    /// The name accepted by [`GpuBackend::from_str`] and `--backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuBackend::Any => "gpu",
            GpuBackend::Vulkan => "vulkan",
            GpuBackend::Metal => "metal",
            GpuBackend::Dx12 => "dx12",
            GpuBackend::Gl => "gl",
        }
    }
}

impl fmt::Display for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GpuBackend {
    type Err = TrmError;
    /// `gpu` or `any`, `vulkan` (`vk`), `metal` (`mtl`), `dx12` (`d3d12`),
    /// `gl` (`gles`, `opengl`); case-insensitive, as `WGPU_BACKEND` spells them.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gpu" | "any" => Ok(GpuBackend::Any),
            "vulkan" | "vk" => Ok(GpuBackend::Vulkan),
            "metal" | "mtl" => Ok(GpuBackend::Metal),
            "dx12" | "d3d12" => Ok(GpuBackend::Dx12),
            "gl" | "gles" | "opengl" => Ok(GpuBackend::Gl),
            _ => Err(TrmError::BackendUnavailable(format!(
                "unknown GPU backend `{s}`: use one of gpu, vulkan, metal, dx12, gl"
            ))),
        }
    }
}

/// How to choose the adapter and create the device.
///
/// ```
/// use trm_wgpu::gpu::{GpuBackend, GpuOptions};
/// let options = GpuOptions::default()
///     .backend(GpuBackend::Vulkan)
///     .adapter_name("llvmpipe");
/// assert_eq!(options.backend, GpuBackend::Vulkan);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuOptions {
    /// Graphics API.
    pub backend: GpuBackend,
    /// Integrated (low power) or discrete (high performance) GPU, when the
    /// name does not decide.
    pub power_preference: wgpu::PowerPreference,
    /// Use the first adapter whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Request at most this many bytes per buffer and per storage binding
    /// (default: the adapter's maximum). Larger batches are then split into
    /// chunks that fit; useful to share a GPU, and to test the splitting.
    pub max_buffer_bytes: Option<u64>,
    /// Request at most this many bytes of workgroup memory (default: the
    /// adapter's maximum). Below 16 KiB the step kernels use their 8 KiB
    /// tile configuration (as on Apple GPUs, which offer 16352 bytes), so
    /// this lets any adapter run and test that path.
    pub max_workgroup_memory: Option<u32>,
    /// How long one wait for the GPU may go without any submission of the
    /// context finishing before the call fails with a [`TrmError::Gpu`]
    /// saying it timed out (a wedged driver, or work too large for the
    /// adapter), rather than hang. Default: the environment variable
    /// `TRM_GPU_WAIT_SECS` (seconds) when set, else 60 s, or 600 s on a
    /// software adapter (lavapipe, llvmpipe), where one submission of the
    /// engine (at most 200 GFLOP) can take minutes.
    pub wait_timeout: Option<Duration>,
    /// Do not use subgroup operations even where the adapter offers them:
    /// the kernels' reductions then meet in workgroup memory everywhere, as
    /// on adapters without subgroups (also the environment variable
    /// `TRM_GPU_SUBGROUPS=off`, read by [`GpuOptions::with_env`]). This
    /// lets any adapter run and test that path.
    pub disable_subgroups: bool,
    /// A test mode: every kernel with workgroup memory first fills it with
    /// NaN (its `POISON_WORKGROUP` override), so that a read before a write
    /// shows in the results instead of passing on a driver that happens to
    /// hand out zeros (also `TRM_POISON_GPU=1`, read by
    /// [`GpuOptions::with_env`], which poisons the buffers too:
    /// [`crate::GpuRunOptions::poison`]).
    pub poison_workgroup_memory: bool,
}

impl GpuOptions {
    /// Sets the graphics API.
    pub fn backend(mut self, backend: GpuBackend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the power preference.
    pub fn power_preference(mut self, preference: wgpu::PowerPreference) -> Self {
        self.power_preference = preference;
        self
    }

    /// Chooses the adapter by (part of) its name.
    pub fn adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }

    /// Caps the size of every buffer and storage binding.
    pub fn max_buffer_bytes(mut self, bytes: u64) -> Self {
        self.max_buffer_bytes = Some(bytes);
        self
    }

    /// Caps the workgroup memory the kernels may use (see
    /// [`GpuOptions::max_workgroup_memory`]).
    pub fn max_workgroup_memory(mut self, bytes: u32) -> Self {
        self.max_workgroup_memory = Some(bytes);
        self
    }

    /// Sets how long a wait for the GPU may go without progress (see
    /// [`GpuOptions::wait_timeout`]).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// Turns subgroup operations off (see [`GpuOptions::disable_subgroups`]).
    pub fn disable_subgroups(mut self) -> Self {
        self.disable_subgroups = true;
        self
    }

    /// Fills the kernels' workgroup memory with NaN before use (see
    /// [`GpuOptions::poison_workgroup_memory`]).
    pub fn poison_workgroup_memory(mut self) -> Self {
        self.poison_workgroup_memory = true;
        self
    }

    /// Applies the environment, as wgpu's own tools do: `WGPU_BACKEND`
    /// (when the backend is still [`GpuBackend::Any`]), `WGPU_ADAPTER_NAME`
    /// (when no name is set) and `WGPU_POWER_PREF` (`low`, `high`, `none`);
    /// `TRM_GPU_SUBGROUPS` (`off` or `0` sets
    /// [`GpuOptions::disable_subgroups`]); and `TRM_POISON_GPU=1`, which
    /// sets [`GpuOptions::poison_workgroup_memory`]. Fails on a
    /// `WGPU_BACKEND` or a `TRM_GPU_SUBGROUPS` it cannot read.
    pub fn with_env(mut self) -> Result<Self> {
        if self.backend == GpuBackend::Any
            && let Some(value) = env_var("WGPU_BACKEND")
        {
            self.backend = value.parse().map_err(|_| {
                TrmError::BackendUnavailable(format!(
                    "unknown GPU backend `{value}` in WGPU_BACKEND: use one of vulkan, metal, dx12, gl"
                ))
            })?;
        }
        if self.adapter_name.is_none() {
            self.adapter_name = env_var("WGPU_ADAPTER_NAME");
        }
        if let Some(preference) = wgpu::PowerPreference::from_env() {
            self.power_preference = preference;
        }
        if let Some(value) = env_var(SUBGROUPS_ENV) {
            self.disable_subgroups |= match value.trim().to_ascii_lowercase().as_str() {
                "off" | "0" => true,
                "on" | "1" => false,
                _ => {
                    return Err(TrmError::Gpu(format!(
                        "{SUBGROUPS_ENV} must be on or off (1 or 0), got `{value}`"
                    )));
                }
            };
        }
        if env_var("TRM_POISON_GPU").as_deref() == Some("1") {
            self.poison_workgroup_memory = true;
        }
        Ok(self)
    }
}

pub(super) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The environment variable that can turn subgroup operations off
/// ([`GpuOptions::disable_subgroups`]).
pub(super) const SUBGROUPS_ENV: &str = "TRM_GPU_SUBGROUPS";

/// The features a context asks for, of those `offered`: timestamps (for
/// `trm bench`) and, natively unless `disable_subgroups`, subgroups (the
/// kernels' reductions). On the web naga's WGSL and the browser's disagree
/// on `enable subgroups;` (naga refuses the directive, Tint requires it),
/// so the web build does without.
pub(super) fn wanted_features(offered: wgpu::Features, disable_subgroups: bool) -> wgpu::Features {
    let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
    if !disable_subgroups && cfg!(not(target_arch = "wasm32")) {
        wanted |= wgpu::Features::SUBGROUP;
    }
    offered & wanted
}

/// The environment variable that sets [`GpuOptions::wait_timeout`] (seconds)
/// when the options leave it unset.
pub(super) const WAIT_SECS_ENV: &str = "TRM_GPU_WAIT_SECS";

/// The wait limit on a hardware adapter.
pub(super) const GPU_WAIT: Duration = Duration::from_secs(60);

/// The wait limit on a software adapter: one submission of the engine (at
/// most 200 GFLOP, `GpuRunOptions::max_flops_per_submit`) takes about two
/// minutes at lavapipe's 1.5 GFLOP/s on two cores.
pub(super) const SOFTWARE_WAIT: Duration = Duration::from_secs(600);

/// A wait limit read from `TRM_GPU_WAIT_SECS`: a positive number of seconds.
pub(super) fn parse_wait_secs(text: &str) -> Result<Duration> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|&secs| secs > 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            TrmError::Gpu(format!(
                "{WAIT_SECS_ENV} must be a positive number of seconds, got `{text}`"
            ))
        })
}

/// The wait limit of a context on `device_type`: `chosen` when given, else
/// `TRM_GPU_WAIT_SECS`, else the default for the kind of adapter.
pub(super) fn wait_limit(
    chosen: Option<Duration>,
    device_type: wgpu::DeviceType,
) -> Result<Duration> {
    if let Some(limit) = chosen {
        return Ok(limit);
    }
    if let Some(text) = env_var(WAIT_SECS_ENV) {
        return parse_wait_secs(&text);
    }
    Ok(match device_type {
        wgpu::DeviceType::Cpu => SOFTWARE_WAIT,
        _ => GPU_WAIT,
    })
}

/// `d` in seconds for a message: `60 s`, `0.5 s`.
pub(super) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
