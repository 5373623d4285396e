//! Every GPU adapter wgpu finds on every backend (Vulkan, Metal, DX12, GL),
//! the limits and features the engine cares about, and which engine paths
//! each can run.
//!
//! ```sh
//! cargo run --release --example adapters            # a table
//! cargo run --release --example adapters -- --json  # one JSON object per adapter
//! ```

use trm_wgpu::gpu::{GpuBackend, list_adapters};

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.0} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn main() {
    // before any thread or GPU instance exists
    trm_wgpu::GpuContext::quiet_device_select();
    let json = std::env::args().any(|a| a == "--json");
    let mut total = 0;
    for api in [
        GpuBackend::Vulkan,
        GpuBackend::Metal,
        GpuBackend::Dx12,
        GpuBackend::Gl,
    ] {
        let adapters = list_adapters(api);
        if !json {
            println!("{}: {} adapter(s)", api.as_str(), adapters.len());
        }
        for a in adapters {
            total += 1;
            if json {
                println!("{}", serde_json::to_string(&a).unwrap_or_default());
                continue;
            }
            println!("  {} ({}, {})", a.name, a.device_type, a.driver);
            println!(
                "    limits: buffer {}, storage binding {}, workgroup memory {} KiB, {} invocations, {} workgroups per dimension, {} storage buffers per stage",
                mib(a.max_buffer_size),
                mib(a.max_storage_buffer_binding_size),
                a.max_compute_workgroup_storage_size / 1024,
                a.max_compute_invocations_per_workgroup,
                a.max_compute_workgroups_per_dimension,
                a.max_storage_buffers_per_shader_stage
            );
            println!(
                "    features: timestamp queries {}, shader-f16 {}, subgroups {}",
                yes(a.timestamp_queries),
                yes(a.shader_f16),
                yes(a.subgroups)
            );
            match (&a.unsuitable, a.tile_depth) {
                (None, Some(depth)) => println!(
                    "    engine: runs the fused and the spread schedule ({depth}-deep double-buffered K steps); trm bench times it{}",
                    if a.timestamp_queries {
                        " with GPU timestamps"
                    } else {
                        " by wall clock"
                    }
                ),
                (reason, _) => println!(
                    "    engine: cannot run here: {}; the CPU engine runs instead",
                    reason.as_deref().unwrap_or("unknown")
                ),
            }
        }
    }
    if total == 0 && !json {
        println!(
            "no GPU adapter found; on Linux without a GPU install Mesa's lavapipe (apt-get install mesa-vulkan-drivers)"
        );
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
