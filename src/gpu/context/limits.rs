//! What the kernels need of a device, and the limits a context requests.

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
pub(super) fn required_limits(
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
pub(crate) fn unsuitable(limits: &wgpu::Limits) -> Option<String> {
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
