//! The GPU context: adapter choice, a device whose limits come from what the
//! kernels need, and the capture of GPU faults as [`TrmError`]s.
//!
//! A context is cheap to clone (it is shared) and serves any number of
//! engines; pipelines are compiled once per context and specialisation.
//!
//! By job: [`options`] (what the caller chooses: backend, adapter, limits,
//! waits, and the environment variables that set them), [`limits`] (what
//! the kernels need of a device), [`faults`] (wgpu's errors and a lost
//! device as [`TrmError`]s), [`waits`] (bounded waits for the queue and
//! mappings: natively a polling thread, on the web the browser's promises;
//! the web/native differences live here and in [`faults`]), [`caches`]
//! (buffers, shader modules, pipelines, bind group layouts, and what
//! engines keep per model on this device).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::error::{Result, TrmError};
use crate::model::TrmModel;

use super::kernels::KernelKey;
use super::layout::Entry;

mod caches;
mod faults;
mod limits;
mod options;
#[cfg(test)]
mod tests;
mod waits;

pub(crate) use limits::unsuitable;
pub use options::{GpuBackend, GpuOptions};
// the rooms' private helpers, shared among them through this module
use faults::*;
use limits::*;
use options::*;
#[cfg(target_arch = "wasm32")]
pub(crate) use waits::next_task;
use waits::*;
pub(crate) use waits::{MapReceiver, map_channel};

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
    /// Waits that finished, for the waits that time out (read natively).
    #[allow(dead_code)]
    progress: Progress,
    /// Fault reports not yet resolved (read on the web).
    #[allow(dead_code)]
    pending: Pending,
}

pub(crate) use crate::blocking::block_on;

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
                progress: Progress::default(),
                pending: Pending::default(),
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

    /// Whether the context installed its own fault callbacks (it created the
    /// device) rather than wrapping an application's device.
    pub fn owns_device(&self) -> bool {
        self.inner.owns_callbacks
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
