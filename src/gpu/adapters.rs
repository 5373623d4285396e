//! Every adapter wgpu finds, with what the engine needs of it: for
//! `examples/adapters.rs`, `trm bench` (one row per adapter) and
//! applications that let their users choose.

use serde::Serialize;

use super::GpuBackend;
use super::context::unsuitable;

/// One adapter and what the engine can do on it.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    /// Adapter name, as `--adapter` / `WGPU_ADAPTER_NAME` match it.
    pub name: String,
    /// Graphics API (`vulkan`, `metal`, `dx12`, `gl`).
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` (a software
    /// rasteriser such as lavapipe or llvmpipe), `Other`.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Largest storage binding, bytes: bounds the puzzles of one chunk.
    pub max_storage_buffer_binding_size: u64,
    /// Workgroup memory, bytes: 16 KiB gives the products their 16-deep
    /// double-buffered K steps, 8 KiB 8-deep ones.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup (the step needs 256).
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroups per dispatch dimension: puzzles per chunk at most.
    pub max_compute_workgroups_per_dimension: u32,
    /// Storage buffers per shader stage (the step needs 4).
    pub max_storage_buffers_per_shader_stage: u32,
    /// Whether `trm bench` can read GPU time per step from timestamps.
    pub timestamp_queries: bool,
    /// Whether the adapter offers `shader-f16` (unused so far).
    pub shader_f16: bool,
    /// Whether the adapter offers subgroup operations (the kernels' norms
    /// and softmax reduce through them where it does).
    pub subgroups: bool,
    /// `None` when the GPU engine (both schedules) runs here; else why not.
    pub unsuitable: Option<String>,
    /// Depth of the products' double-buffered K steps on this adapter (16
    /// or 8; the attention's own tiles run twice as deep).
    pub tile_depth: Option<u32>,
}

impl AdapterReport {
    /// Whether the GPU engine runs on this adapter.
    pub fn can_run(&self) -> bool {
        self.unsuitable.is_none()
    }
}

/// Every adapter on the chosen API(s), most capable first as wgpu lists
/// them (blocking; on the web use [`list_adapters_async`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters(backend: GpuBackend) -> Vec<AdapterReport> {
    pollster::block_on(list_adapters_async(backend))
}

/// Every adapter on the chosen API(s).
pub async fn list_adapters_async(backend: GpuBackend) -> Vec<AdapterReport> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backend.backends();
    let instance = wgpu::Instance::new(descriptor);
    instance
        .enumerate_adapters(backend.backends())
        .await
        .into_iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let features = adapter.features();
            let reason = unsuitable(&limits);
            AdapterReport {
                name: info.name.clone(),
                api: format!("{:?}", info.backend).to_lowercase(),
                device_type: format!("{:?}", info.device_type),
                driver: [info.driver.as_str(), info.driver_info.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
                max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
                max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
                timestamp_queries: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                subgroups: features.contains(wgpu::Features::SUBGROUP),
                tile_depth: reason.is_none().then(|| {
                    super::step_common::tile_depth(limits.max_compute_workgroup_storage_size)
                        .unwrap_or(8)
                }),
                unsuitable: reason,
            }
        })
        .collect()
}
