//! The GPU context: adapter choice, a device whose limits come from what the
//! kernels need, and the capture of GPU faults as [`TrmError`]s.
//!
//! A context is cheap to clone (it is shared) and serves any number of
//! engines; pipelines are compiled once per context and specialisation.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::AtomicU64;
#[cfg(target_arch = "wasm32")]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::error::{Result, TrmError};
use crate::model::TrmModel;

use super::kernels::KernelKey;
use super::layout::Entry;

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

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The environment variable that can turn subgroup operations off
/// ([`GpuOptions::disable_subgroups`]).
const SUBGROUPS_ENV: &str = "TRM_GPU_SUBGROUPS";

/// The features a context asks for, of those `offered`: timestamps (for
/// `trm bench`) and, natively unless `disable_subgroups`, subgroups (the
/// kernels' reductions). On the web naga's WGSL and the browser's disagree
/// on `enable subgroups;` (naga refuses the directive, Tint requires it),
/// so the web build does without.
fn wanted_features(offered: wgpu::Features, disable_subgroups: bool) -> wgpu::Features {
    let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
    if !disable_subgroups && cfg!(not(target_arch = "wasm32")) {
        wanted |= wgpu::Features::SUBGROUP;
    }
    offered & wanted
}

/// The environment variable that sets [`GpuOptions::wait_timeout`] (seconds)
/// when the options leave it unset.
const WAIT_SECS_ENV: &str = "TRM_GPU_WAIT_SECS";

/// The wait limit on a hardware adapter.
const GPU_WAIT: Duration = Duration::from_secs(60);

/// The wait limit on a software adapter: one submission of the engine (at
/// most 200 GFLOP, `GpuRunOptions::max_flops_per_submit`) takes about two
/// minutes at lavapipe's 1.5 GFLOP/s on two cores.
const SOFTWARE_WAIT: Duration = Duration::from_secs(600);

/// A wait limit read from `TRM_GPU_WAIT_SECS`: a positive number of seconds.
fn parse_wait_secs(text: &str) -> Result<Duration> {
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
fn wait_limit(chosen: Option<Duration>, device_type: wgpu::DeviceType) -> Result<Duration> {
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
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// What one bounded wait for the GPU came to.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, PartialEq)]
enum Polled {
    /// The submission finished.
    Done,
    /// The limit passed first.
    TimedOut,
    /// The queue never took the submission.
    Dropped,
    /// wgpu panicked: the driver reported the device lost.
    Panicked(String),
}

#[cfg(not(target_arch = "wasm32"))]
impl Polled {
    fn of(polled: std::thread::Result<Result<wgpu::PollStatus, wgpu::PollError>>) -> Self {
        match polled {
            Ok(Ok(_)) => Polled::Done,
            Ok(Err(wgpu::PollError::Timeout)) => Polled::TimedOut,
            Ok(Err(wgpu::PollError::WrongSubmissionIndex(..))) => Polled::Dropped,
            Err(panic) => Polled::Panicked(panic_message(&panic)),
        }
    }
}

/// What the kernels need from a device, beyond wgpu's downlevel defaults.
pub(crate) mod needs {
    /// Invocations of the largest workgroup (mixer_step, embed).
    pub const WORKGROUP_INVOCATIONS: u32 = 256;
    /// Workgroup memory of the smallest tile configuration (SK = 8: 2
    /// buffers x 2 tiles x 8 x 64 floats).
    pub const MIN_WORKGROUP_STORAGE: u32 = 2 * 2 * 8 * 64 * 4;
    /// Storage buffers of the kernel that binds the most (mixer_step, heads).
    pub const STORAGE_BUFFERS: u32 = 4;
    /// Uniform buffers per kernel (the parameters, with dynamic offsets).
    pub const UNIFORM_BUFFERS: u32 = 1;
}

/// The device limits to request from an adapter offering `adapter`: the
/// downlevel defaults, raised to what the kernels need, with the buffer
/// sizes and the workgroup memory as large as the adapter allows (capped by
/// `max_buffer_bytes` and `max_workgroup_memory`).
fn required_limits(
    adapter: &wgpu::Limits,
    max_buffer_bytes: Option<u64>,
    max_workgroup_memory: Option<u32>,
) -> wgpu::Limits {
    let mut limits = wgpu::Limits::downlevel_defaults().using_alignment(adapter.clone());
    let cap = max_buffer_bytes.unwrap_or(u64::MAX);
    limits.max_buffer_size = adapter.max_buffer_size.min(cap);
    limits.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size.min(cap);
    limits.max_storage_buffers_per_shader_stage = needs::STORAGE_BUFFERS
        .max(limits.max_storage_buffers_per_shader_stage)
        .min(adapter.max_storage_buffers_per_shader_stage);
    limits.max_compute_invocations_per_workgroup = needs::WORKGROUP_INVOCATIONS
        .max(limits.max_compute_invocations_per_workgroup)
        .min(adapter.max_compute_invocations_per_workgroup);
    limits.max_compute_workgroup_size_x = needs::WORKGROUP_INVOCATIONS
        .max(limits.max_compute_workgroup_size_x)
        .min(adapter.max_compute_workgroup_size_x);
    // More workgroup memory means deeper tile steps (fewer barriers).
    limits.max_compute_workgroup_storage_size = adapter
        .max_compute_workgroup_storage_size
        .min(max_workgroup_memory.unwrap_or(u32::MAX));
    limits.max_compute_workgroups_per_dimension = adapter.max_compute_workgroups_per_dimension;
    limits
}

/// Checks that `limits` (of a device, or what an adapter offers) can run
/// the kernels; the reason when not.
pub(super) fn unsuitable(limits: &wgpu::Limits) -> Option<String> {
    let checks = [
        (
            "workgroup invocations",
            limits.max_compute_invocations_per_workgroup,
            needs::WORKGROUP_INVOCATIONS,
        ),
        (
            "workgroup size x",
            limits.max_compute_workgroup_size_x,
            needs::WORKGROUP_INVOCATIONS,
        ),
        (
            "workgroup memory bytes",
            limits.max_compute_workgroup_storage_size,
            needs::MIN_WORKGROUP_STORAGE,
        ),
        (
            "storage buffers per shader stage",
            limits.max_storage_buffers_per_shader_stage,
            needs::STORAGE_BUFFERS,
        ),
        (
            "uniform buffers per shader stage",
            limits.max_uniform_buffers_per_shader_stage,
            needs::UNIFORM_BUFFERS,
        ),
        (
            "dynamic uniform buffers",
            limits.max_dynamic_uniform_buffers_per_pipeline_layout,
            needs::UNIFORM_BUFFERS,
        ),
        (
            "workgroups per dimension",
            limits.max_compute_workgroups_per_dimension,
            1,
        ),
    ];
    let missing: Vec<String> = checks
        .iter()
        .filter(|(_, have, need)| have < need)
        .map(|(what, have, need)| format!("{what}: {have} < {need}"))
        .collect();
    (!missing.is_empty()).then(|| format!("the kernels need more: {}", missing.join(", ")))
}

/// Faults reported by wgpu outside of error scopes (or asynchronously).
#[derive(Default)]
struct Faults {
    lost: Option<String>,
    uncaptured: Vec<String>,
}

/// A model (weakly) and what the engines made of it on this device.
type ResidentEntry = (Weak<TrmModel>, Arc<dyn Any + Send + Sync>);

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    faults: Arc<Mutex<Faults>>,
    /// Whether the fault callbacks are ours (contexts created here).
    owns_callbacks: bool,
    pipelines: Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>,
    /// Bind group layouts by their entries, so that cached pipelines and
    /// new bind groups always share one layout object.
    layouts: Mutex<HashMap<Vec<Entry>, wgpu::BindGroupLayout>>,
    /// Device resources made from a model (its weights and the kernels
    /// that read them), by model, shared by the engines on it; an entry
    /// whose model is gone is dropped at the next look-up.
    resident: Mutex<Vec<ResidentEntry>>,
    /// How long a wait may go without progress ([`GpuOptions::wait_timeout`]).
    wait_limit: Duration,
    /// [`GpuOptions::poison_workgroup_memory`].
    poison_workgroup: bool,
    /// Waits that saw their submission finish, by any thread: a wait that
    /// times out while this moves is behind other work that is progressing.
    #[cfg(not(target_arch = "wasm32"))]
    finished_waits: AtomicU64,
    /// Error scopes and compilation reports not yet resolved (the web's
    /// are promises; [`GpuContext::flush_errors`] waits for them).
    #[cfg(target_arch = "wasm32")]
    unresolved: Arc<AtomicUsize>,
}

/// The outcome of a `map_async`, as its callback delivers it.
pub(crate) type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// Where a `map_async` callback delivers: natively a channel the blocking
/// wait reads; on the web a oneshot the async read-back awaits.
pub(crate) struct MapReceiver {
    #[cfg(not(target_arch = "wasm32"))]
    receiver: std::sync::mpsc::Receiver<MapResult>,
    #[cfg(target_arch = "wasm32")]
    receiver: futures_intrusive::channel::shared::OneshotReceiver<MapResult>,
}

/// A `map_async` callback and the receiver of its outcome.
pub(crate) fn map_channel() -> (impl FnOnce(MapResult) + Send + 'static, MapReceiver) {
    #[cfg(not(target_arch = "wasm32"))]
    let (sender, receiver) = std::sync::mpsc::channel();
    #[cfg(target_arch = "wasm32")]
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    let send = move |result: MapResult| {
        let _ = sender.send(result);
    };
    (send, MapReceiver { receiver })
}

pub(crate) use crate::blocking::block_on;

/// Yields to the browser's event loop once (a zero-delay timer), so that
/// promises it resolves in its own tasks (error scopes, mappings) can.
#[cfg(target_arch = "wasm32")]
pub(crate) async fn next_task() {
    use wasm_bindgen::{JsCast, JsValue};
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let timer = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("setTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let _ = match timer {
            Some(set_timeout) => set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from(0)),
            None => resolve.call0(&JsValue::NULL),
        };
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// A wgpu device and queue ready for the TRM kernels.
///
/// Create one with [`GpuContext::new`] (adapter chosen from [`GpuOptions`])
/// or wrap an application's own device with [`GpuContext::from_device`].
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GpuContext {
    /// Chooses an adapter and creates a device (blocking; on the web use
    /// [`GpuContext::new_async`]).
    pub fn new(options: &GpuOptions) -> Result<Self> {
        block_on("GpuContext::new_async", Self::new_async(options))
    }

    /// Chooses an adapter and creates a device.
    ///
    /// Fails with [`TrmError::NoAdapter`] when no adapter matches,
    /// [`TrmError::AdapterUnsuitable`] when it cannot run the kernels and
    /// [`TrmError::RequestDevice`] when the driver refuses the device.
    pub async fn new_async(options: &GpuOptions) -> Result<Self> {
        let backends = options.backend.backends();
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let adapter = match &options.adapter_name {
            Some(name) => {
                let wanted = name.to_lowercase();
                let adapters = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = adapters
                    .iter()
                    .map(|a| {
                        let info = a.get_info();
                        format!("{} ({:?})", info.name, info.backend)
                    })
                    .collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| {
                        TrmError::NoAdapter(format!(
                            "no GPU adapter named like `{name}`{} (adapters: {})",
                            on_backend(options.backend),
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ))
                    })?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: options.power_preference,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                })
                .await
                .map_err(|e| {
                    TrmError::NoAdapter(format!(
                        "no GPU adapter found{}: {e}",
                        on_backend(options.backend)
                    ))
                })?,
        };
        let info = adapter.get_info();
        let wait_limit = wait_limit(options.wait_timeout, info.device_type)?;
        let offered = adapter.limits();
        if let Some(reason) = unsuitable(&offered) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: info.name,
                reason,
            });
        }
        let required_limits = required_limits(
            &offered,
            options.max_buffer_bytes,
            options.max_workgroup_memory,
        );
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("trm-wgpu"),
                required_features: wanted_features(adapter.features(), options.disable_subgroups),
                required_limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| TrmError::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        {
            let faults = Arc::clone(&faults);
            device.set_device_lost_callback(move |reason, message| {
                let reason = match (reason, message.trim()) {
                    (wgpu::DeviceLostReason::Destroyed, "") => "the device was destroyed".into(),
                    (wgpu::DeviceLostReason::Destroyed, m) => {
                        format!("the device was destroyed: {m}")
                    }
                    (_, "") => "lost for an unknown reason".into(),
                    (_, m) => m.to_string(),
                };
                lock(&faults).lost = Some(reason);
            });
        }
        {
            let faults = Arc::clone(&faults);
            // wgpu's default handler panics; record instead, and report the
            // fault from the engine call that caused it.
            device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
                lock(&faults).uncaptured.push(error.to_string());
            }));
        }
        let mut context = Self::assemble(device, queue, info, faults, true, wait_limit);
        if options.poison_workgroup_memory {
            Arc::get_mut(&mut context.inner)
                .expect("a context no one else holds yet")
                .poison_workgroup = true;
        }
        Ok(context)
    }

    /// Wraps an application's device and queue, so that an application that
    /// already uses wgpu can run TRM beside its own work.
    ///
    /// The device must offer the kernels' needs (256 invocations per
    /// workgroup, 8 KiB of workgroup memory, 4 storage buffers per stage);
    /// batches are split to fit its buffer limits. The application keeps
    /// its uncaptured-error handler and device-lost callback: the engine
    /// catches its own faults with error scopes and reports a lost device
    /// from failed submissions and mappings. Waits are bounded as
    /// [`GpuOptions::wait_timeout`] says when unset.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        let info = device.adapter_info();
        let wait_limit = wait_limit(None, info.device_type)?;
        if let Some(reason) = unsuitable(&device.limits()) {
            return Err(TrmError::AdapterUnsuitable {
                adapter: info.name,
                reason,
            });
        }
        let faults = Arc::new(Mutex::new(Faults::default()));
        Ok(Self::assemble(
            device, queue, info, faults, false, wait_limit,
        ))
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        faults: Arc<Mutex<Faults>>,
        owns_callbacks: bool,
        wait_limit: Duration,
    ) -> Self {
        GpuContext {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                faults,
                owns_callbacks,
                pipelines: Mutex::new(HashMap::new()),
                layouts: Mutex::new(HashMap::new()),
                resident: Mutex::new(Vec::new()),
                wait_limit,
                poison_workgroup: false,
                #[cfg(not(target_arch = "wasm32"))]
                finished_waits: AtomicU64::new(0),
                #[cfg(target_arch = "wasm32")]
                unresolved: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// How long a wait for the GPU may go without progress before the call
    /// fails ([`GpuOptions::wait_timeout`]).
    pub fn wait_timeout(&self) -> Duration {
        self.inner.wait_limit
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter: name, backend, driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// How many compute pipelines the context has compiled (each kernel
    /// and specialisation once).
    pub fn pipelines_compiled(&self) -> usize {
        lock(&self.inner.pipelines).len()
    }

    /// The device's limits.
    pub fn limits(&self) -> wgpu::Limits {
        self.inner.device.limits()
    }

    /// Whether the kernels may use subgroup operations: the device has
    /// them (asked for where the adapter offers them, unless
    /// [`GpuOptions::disable_subgroups`]; an application's own device as
    /// it was created). Native only (see `wanted_features`).
    pub fn subgroups(&self) -> bool {
        cfg!(not(target_arch = "wasm32"))
            && self
                .inner
                .device
                .features()
                .contains(wgpu::Features::SUBGROUP)
    }

    /// Whether the kernels fill their workgroup memory with NaN first
    /// ([`GpuOptions::poison_workgroup_memory`]).
    pub fn poisons_workgroup_memory(&self) -> bool {
        self.inner.poison_workgroup
    }

    /// One line: adapter name, API, driver.
    pub fn describe(&self) -> String {
        let info = &self.inner.info;
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{} ({:?}, {:?}{}{})",
            info.name,
            info.backend,
            info.device_type,
            if driver.is_empty() { "" } else { ", " },
            driver
        )
    }

    /// Fails with [`TrmError::DeviceLost`] once the device is lost, and
    /// reports faults that wgpu raised outside of error scopes.
    pub fn check(&self) -> Result<()> {
        let mut faults = lock(&self.inner.faults);
        if let Some(reason) = &faults.lost {
            return Err(TrmError::DeviceLost(reason.clone()));
        }
        if !faults.uncaptured.is_empty() {
            let all = std::mem::take(&mut faults.uncaptured);
            return Err(TrmError::Gpu(all.join("; ")));
        }
        Ok(())
    }

    /// Runs `f` inside out-of-memory, validation and internal error scopes
    /// and turns what they caught into a [`TrmError`] naming `what`.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = f();
        let (memory, validation, internal) = (memory.pop(), validation.pop(), internal.pop());
        self.report(what.to_string(), async move {
            let (memory, validation, internal) = (memory.await, validation.await, internal.await);
            memory.or(validation).or(internal)
        })?;
        self.check()?;
        Ok(value)
    }

    /// Turns what an error scope caught (`popped`) into an error naming
    /// `what`: natively at once; on the web, where the pop is a promise,
    /// once it resolves, into the faults that [`GpuContext::check`] reports
    /// ([`GpuContext::flush_errors`] waits for it).
    fn report(
        &self,
        what: String,
        popped: impl Future<Output = Option<wgpu::Error>> + 'static,
    ) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(error) = pollster::block_on(popped) {
            return Err(self.classify(&what, error));
        }
        #[cfg(target_arch = "wasm32")]
        self.later(async move {
            popped
                .await
                .map(|e| format!("{what}: {}", e.to_string().trim_end()))
        });
        Ok(())
    }

    /// Runs `report` once the browser resolves it, recording the fault it
    /// returns (web only: the browser runs the future).
    #[cfg(target_arch = "wasm32")]
    fn later(&self, report: impl Future<Output = Option<String>> + 'static) {
        let unresolved = Arc::clone(&self.inner.unresolved);
        let faults = Arc::clone(&self.inner.faults);
        unresolved.fetch_add(1, Ordering::AcqRel);
        wasm_bindgen_futures::spawn_local(async move {
            if let Some(fault) = report.await {
                lock(&faults).uncaptured.push(fault);
            }
            unresolved.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Waits until every error scope and shader compilation report of the
    /// context has resolved, then [`GpuContext::check`]s: on the web, the
    /// faults of pipelines and buffers made so far (the browser reports
    /// them as promises); natively the same as `check`, since they were
    /// reported where they happened.
    pub async fn flush_errors(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            let start = web_time::Instant::now();
            while self.inner.unresolved.load(Ordering::Acquire) > 0 {
                if start.elapsed() > self.inner.wait_limit {
                    return Err(TrmError::Gpu(format!(
                        "the browser did not report on the GPU work within {}",
                        seconds(self.inner.wait_limit)
                    )));
                }
                next_task().await;
            }
        }
        self.check()
    }

    /// Waits for `submission` (all work when `None`): natively the bounded
    /// blocking wait; on the web the queue's done callback, awaited.
    pub(crate) async fn wait_async(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.poll_wait(submission)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = submission;
            let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
            self.inner.queue.on_submitted_work_done(move || {
                let _ = sender.send(());
            });
            if receiver.receive().await.is_none() {
                self.mark_lost("the queue dropped its work");
            }
            self.flush_errors().await
        }
    }

    /// The outcome of a `map_async` whose callback delivers to `receiver`,
    /// once `submission` (all work when `None`) is done: natively a
    /// blocking wait (see [`GpuContext::mapped`]); on the web the callback,
    /// awaited. `what` names the data in the error.
    pub(crate) async fn read_mapped(
        &self,
        submission: Option<wgpu::SubmissionIndex>,
        receiver: MapReceiver,
        what: &str,
    ) -> Result<MapResult> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.poll_wait(submission)?;
            self.mapped(&receiver.receiver, what)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = submission;
            let result = receiver.receiver.receive().await;
            self.flush_errors().await?;
            result.ok_or_else(|| TrmError::Gpu(format!("{what} were never mapped for reading")))
        }
    }

    /// Maps a wgpu error to the matching [`TrmError`].
    #[cfg(not(target_arch = "wasm32"))]
    fn classify(&self, what: &str, error: wgpu::Error) -> TrmError {
        // A destroyed or lost device reports through its callback from the
        // next poll: give it that chance before judging the error.
        let device = &self.inner.device;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            device.poll(wgpu::PollType::Poll)
        }));
        if let Some(reason) = &lock(&self.inner.faults).lost {
            return TrmError::DeviceLost(reason.clone());
        }
        match error {
            wgpu::Error::OutOfMemory { .. } => TrmError::OutOfMemory(what.to_string()),
            wgpu::Error::Validation { description, .. } => {
                let lost = description.to_lowercase();
                // Every resource the engine uses was created inside an error
                // scope and checked; one that turned invalid since went with
                // its device.
                if lost.contains("device is lost")
                    || lost.contains("device is invalid")
                    || lost.contains("parent device is lost")
                    || lost.contains("is invalid")
                {
                    TrmError::DeviceLost(format!("{what}: {}", first_line(&description)))
                } else {
                    TrmError::Gpu(format!("{what}: {}", description.trim_end()))
                }
            }
            wgpu::Error::Internal { description, .. } => {
                TrmError::Gpu(format!("{what}: {}", description.trim_end()))
            }
        }
    }

    /// Records that the device is lost (a wait or map failed in a way only
    /// a lost device explains), so that later calls fail fast.
    pub(crate) fn mark_lost(&self, reason: &str) {
        let mut faults = lock(&self.inner.faults);
        if faults.lost.is_none() {
            faults.lost = Some(reason.to_string());
        }
    }

    /// Whether the context installed its own fault callbacks (it created the
    /// device) rather than wrapping an application's device.
    pub fn owns_device(&self) -> bool {
        self.inner.owns_callbacks
    }

    /// Creates a buffer, turning an allocation failure or a size beyond the
    /// device's limits into [`TrmError::OutOfMemory`] / [`TrmError::TooLarge`]
    /// instead of a panic.
    pub fn create_buffer(&self, descriptor: &wgpu::BufferDescriptor<'_>) -> Result<wgpu::Buffer> {
        let label = descriptor.label.unwrap_or("buffer");
        let limit = self.inner.device.limits().max_buffer_size;
        if descriptor.size > limit {
            return Err(TrmError::TooLarge(format!(
                "GPU buffer `{label}` needs {} bytes, beyond the device's limit of {limit}",
                descriptor.size
            )));
        }
        self.scoped(&format!("creating GPU buffer `{label}`"), || {
            self.inner.device.create_buffer(descriptor)
        })
    }

    /// Compiles WGSL. A compile error becomes [`TrmError::Shader`] naming
    /// the kernel, the line and column, and quoting the source line.
    pub fn shader_module(&self, kernel: &str, source: &str) -> Result<wgpu::ShaderModule> {
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let popped = scope.pop();
        let info = module.get_compilation_info();
        let errors = |info: wgpu::CompilationInfo, source: &str| -> Vec<String> {
            info.messages
                .iter()
                .filter(|m| m.message_type == wgpu::CompilationMessageType::Error)
                .map(|m| describe_message(source, m))
                .collect()
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let error = pollster::block_on(popped);
            let messages = errors(pollster::block_on(info), source);
            if !messages.is_empty() {
                return Err(TrmError::Shader {
                    kernel: kernel.to_string(),
                    reason: messages.join("\n"),
                });
            }
            if let Some(error) = error {
                return Err(TrmError::Shader {
                    kernel: kernel.to_string(),
                    reason: error.to_string(),
                });
            }
        }
        // The browser compiles (Tint) and reports later: the messages are
        // recorded as faults for `flush_errors`.
        #[cfg(target_arch = "wasm32")]
        {
            let (kernel, source) = (kernel.to_string(), source.to_string());
            self.later(async move {
                let error = popped.await;
                let messages = errors(info.await, &source);
                if !messages.is_empty() {
                    Some(format!("shader `{kernel}`: {}", messages.join("\n")))
                } else {
                    error.map(|e| format!("shader `{kernel}`: {e}"))
                }
            });
        }
        Ok(module)
    }

    /// The device resources of `model` (the same `Arc`), made by `make` the
    /// first time: a model's weights go onto a device once, however many
    /// engines run it. Resources of models that are gone are freed here.
    pub(crate) fn resident<T: Any + Send + Sync>(
        &self,
        model: &Arc<TrmModel>,
        make: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let found = {
            let mut resident = lock(&self.inner.resident);
            resident.retain(|(weak, _)| weak.strong_count() > 0);
            resident
                .iter()
                .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(model)))
                .map(|(_, any)| Arc::clone(any))
        };
        if let Some(Ok(found)) = found.map(|any| any.downcast::<T>()) {
            return Ok(found);
        }
        // made outside the lock: making compiles kernels and uploads
        let made = Arc::new(make()?);
        let any: Arc<dyn Any + Send + Sync> = made.clone();
        lock(&self.inner.resident).push((Arc::downgrade(model), any));
        Ok(made)
    }

    /// The bind group layout of `entries`, created by `create` the first time.
    pub(crate) fn layout(
        &self,
        entries: &[Entry],
        create: impl FnOnce() -> Result<wgpu::BindGroupLayout>,
    ) -> Result<wgpu::BindGroupLayout> {
        if let Some(layout) = lock(&self.inner.layouts).get(entries) {
            return Ok(layout.clone());
        }
        let layout = create()?;
        lock(&self.inner.layouts).insert(entries.to_vec(), layout.clone());
        Ok(layout)
    }

    /// The compute pipeline `key` describes (its source, entry point and
    /// override constants), compiled once per context and key.
    /// `TRM_DUMP_KERNELS=1` prints each kernel compiled, with its override
    /// constants, to stderr.
    pub(crate) fn pipeline(
        &self,
        key: &KernelKey,
        layout: &wgpu::PipelineLayout,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(pipeline) = lock(&self.inner.pipelines).get(key) {
            return Ok(pipeline.clone());
        }
        let (label, source, constants) = (key.label(), key.source(), &key.constants);
        if std::env::var_os("TRM_DUMP_KERNELS").is_some() {
            // the WGSL as compiled: the source and its override constants
            eprintln!("// trm: {label} with overrides {constants:?}\n{source}");
        }
        let module = self.shader_module(&label, source)?;
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // every kernel writes its workgroup memory before reading it
                // (the test mode POISON_WORKGROUP checks)
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let popped = scope.pop();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(error) = pollster::block_on(popped) {
            return Err(TrmError::Shader {
                kernel: label,
                reason: format!(
                    "pipeline with constants {constants:?}: {}",
                    error.to_string().trim_end()
                ),
            });
        }
        #[cfg(target_arch = "wasm32")]
        {
            let what = format!("shader `{label}`: pipeline with constants {constants:?}");
            self.later(async move {
                popped
                    .await
                    .map(|e| format!("{what}: {}", e.to_string().trim_end()))
            });
        }
        self.check()?;
        lock(&self.inner.pipelines).insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// Waits until the queue is idle.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.poll_wait(None)
    }

    /// The value a `map_async` callback sends on `receiver`, once the work
    /// it depends on was waited for. wgpu runs the callback from whichever
    /// thread polls the device: when threads share the device, another
    /// thread's poll may still be running it after this thread's wait has
    /// returned, so wait for it (polling again meanwhile) rather than assume
    /// it has run. `what` names the data in the error, after 5 s.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn mapped<T>(&self, receiver: &Receiver<T>, what: &str) -> Result<T> {
        const TRIES: usize = 200;
        const EACH: Duration = Duration::from_millis(25);
        for _ in 0..TRIES {
            match receiver.recv_timeout(EACH) {
                Ok(value) => return Ok(value),
                Err(RecvTimeoutError::Timeout) => self.wait_idle()?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Err(TrmError::Gpu(format!(
            "{what} were never mapped for reading"
        )))
    }

    /// Waits for `submission` (or all work), at most the wait limit at a
    /// time: a wait that times out while other waits on the context finish
    /// is behind work that progresses, and waits again; one that saw
    /// nothing finish fails with [`TrmError::Gpu`] saying it timed out.
    #[cfg(not(target_arch = "wasm32"))]
    fn poll_wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check()?;
        let device = &self.inner.device;
        let limit = self.inner.wait_limit;
        let finished = &self.inner.finished_waits;
        let mut waited = Duration::ZERO;
        loop {
            let before = finished.load(Ordering::Acquire);
            // wgpu panics when the driver reports the device lost during a
            // wait; catch that and report it as the error it is.
            let polled = Polled::of(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || {
                    device.poll(wgpu::PollType::Wait {
                        submission_index: submission.clone(),
                        timeout: Some(limit),
                    })
                },
            )));
            waited += limit;
            match polled {
                Polled::Done => {
                    finished.fetch_add(1, Ordering::AcqRel);
                    return self.check();
                }
                Polled::TimedOut => {
                    self.check()?;
                    if finished.load(Ordering::Acquire) != before {
                        continue;
                    }
                    return Err(TrmError::Gpu(format!(
                        "waiting for the GPU timed out after {} without the work finishing \
                         (a wedged driver, or more work per submission than this adapter \
                         does in that time; {WAIT_SECS_ENV} sets the limit in seconds){}",
                        seconds(limit),
                        if waited > limit {
                            format!(", {} in all", seconds(waited))
                        } else {
                            String::new()
                        }
                    )));
                }
                Polled::Dropped => {
                    self.check()?;
                    // The submission passed validation (its error scope was
                    // clean) yet the queue did not take it: only a lost
                    // device drops work silently, as WebGPU specifies.
                    let reason = "the device dropped a submission (lost or destroyed)";
                    self.mark_lost(reason);
                    return Err(TrmError::DeviceLost(reason.into()));
                }
                Polled::Panicked(reason) => {
                    self.mark_lost(&reason);
                    return Err(TrmError::DeviceLost(reason));
                }
            }
        }
    }
}

impl GpuContext {
    /// Silences Mesa's Vulkan device-select layer, which prints `error:
    /// XDG_RUNTIME_DIR is invalid or not set in the environment.` on
    /// stderr for every Vulkan instance created without `XDG_RUNTIME_DIR`
    /// (a container, a CI job, ssh without a login session): when neither
    /// `XDG_RUNTIME_DIR` nor `NODEVICE_SELECT` is set, sets
    /// `NODEVICE_SELECT=1`, which turns that layer off. The layer only
    /// reorders the adapters, and the engine chooses its own.
    ///
    /// Call it first thing in `main`, before any thread exists: changing the
    /// environment is sound only while no other thread can read it. It
    /// checks: it changes nothing unless the process has one thread (Linux,
    /// where the layer lives; elsewhere it changes nothing). Returns whether
    /// it set the variable.
    pub fn quiet_device_select() -> bool {
        let unset = |name| std::env::var_os(name).is_none();
        let wanted = unset("XDG_RUNTIME_DIR") && unset("NODEVICE_SELECT");
        if !(wanted && single_threaded()) {
            return false;
        }
        // SAFETY: this process has one thread, this one (checked just
        // above, and only this thread could start another), so nothing
        // reads or writes the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
        true
    }
}

/// Whether this process runs one thread (Linux: `/proc/self/task`; false
/// where that cannot be told).
fn single_threaded() -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// ` on backend X`, or nothing for any backend.
fn on_backend(backend: GpuBackend) -> String {
    match backend {
        GpuBackend::Any => String::new(),
        other => format!(" on backend {other}"),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[cfg(not(target_arch = "wasm32"))]
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "the GPU driver failed while waiting".to_string()
    }
}

/// `line L, column C: message` followed by the offending source line.
fn describe_message(source: &str, message: &wgpu::CompilationMessage) -> String {
    match &message.location {
        Some(at) => {
            let line = source
                .lines()
                .nth(at.line_number.saturating_sub(1) as usize)
                .unwrap_or("");
            format!(
                "line {}, column {}: {}\n    {}",
                at.line_number,
                at.line_position,
                message.message,
                line.trim_end()
            )
        }
        None => message.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        for (name, backend) in [
            ("vulkan", GpuBackend::Vulkan),
            ("VK", GpuBackend::Vulkan),
            ("metal", GpuBackend::Metal),
            ("dx12", GpuBackend::Dx12),
            ("gl", GpuBackend::Gl),
            ("gles", GpuBackend::Gl),
            ("gpu", GpuBackend::Any),
        ] {
            assert_eq!(name.parse::<GpuBackend>().unwrap(), backend);
        }
        assert!(matches!(
            "cuda".parse::<GpuBackend>(),
            Err(TrmError::BackendUnavailable(_))
        ));
    }

    #[test]
    fn wait_limits() {
        assert_eq!(parse_wait_secs("60").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_wait_secs(" 0.5 ").unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "soon", "NaN", "inf", "1e300", ""] {
            let err = parse_wait_secs(bad).unwrap_err().to_string();
            assert!(err.contains("TRM_GPU_WAIT_SECS"), "{err}");
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        let chosen = Duration::from_millis(7);
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            assert_eq!(wait_limit(Some(chosen), device).unwrap(), chosen);
        }
        if std::env::var_os(WAIT_SECS_ENV).is_none() {
            let software = wait_limit(None, wgpu::DeviceType::Cpu).unwrap();
            assert_eq!(software, SOFTWARE_WAIT);
            let gpu = wait_limit(None, wgpu::DeviceType::IntegratedGpu).unwrap();
            assert_eq!(gpu, GPU_WAIT);
        }
        assert_eq!(seconds(Duration::from_secs(60)), "60 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn what_a_wait_came_to() {
        assert_eq!(
            Polled::of(Ok(Ok(wgpu::PollStatus::QueueEmpty))),
            Polled::Done
        );
        assert_eq!(
            Polled::of(Ok(Ok(wgpu::PollStatus::WaitSucceeded))),
            Polled::Done
        );
        // a timeout is not a lost device
        assert_eq!(
            Polled::of(Ok(Err(wgpu::PollError::Timeout))),
            Polled::TimedOut
        );
        assert_eq!(
            Polled::of(Ok(Err(wgpu::PollError::WrongSubmissionIndex(3, 2)))),
            Polled::Dropped
        );
        // what catch_unwind gives for wgpu's panic on a lost device
        let panicked: Box<dyn std::any::Any + Send> = Box::new("Device lost".to_string());
        assert_eq!(
            Polled::of(Err(panicked)),
            Polled::Panicked("Device lost".into())
        );
    }

    #[test]
    fn the_environment_stays_as_it_is_once_threads_run() {
        // another thread alive throughout the call
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        assert!(!single_threaded());
        let before = std::env::var_os("NODEVICE_SELECT");
        assert!(!GpuContext::quiet_device_select());
        assert_eq!(std::env::var_os("NODEVICE_SELECT"), before);
        done.send(()).unwrap();
        other.join().unwrap().unwrap();
    }

    #[test]
    fn limits_requested_never_exceed_the_adapter() {
        let adapter = wgpu::Limits::defaults();
        let limits = required_limits(&adapter, Some(1 << 20), Some(16352));
        assert!(limits.check_limits(&adapter));
        assert_eq!(limits.max_storage_buffer_binding_size, 1 << 20);
        assert_eq!(limits.max_compute_workgroup_storage_size, 16352);
        assert!(unsuitable(&limits).is_none());
        let mut weak = wgpu::Limits::downlevel_webgl2_defaults();
        weak.max_compute_invocations_per_workgroup = 128;
        let reason = unsuitable(&weak).unwrap();
        assert!(reason.contains("workgroup invocations"), "{reason}");
    }
}
