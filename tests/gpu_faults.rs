//! GPU faults end in typed errors, never a panic or a hang, and a new
//! engine works afterwards: shader compile errors (with the source line),
//! buffers beyond the device's limits, weights that cannot fit, a lost
//! device, a wait for the GPU that times out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::gpu;
use trm_wgpu::wgpu;
use trm_wgpu::{
    Engine, GpuContext, GpuEngine, GpuOptions, PuzzleBatch, SolveOptions, TrmConfig, TrmError,
    TrmModel,
};

fn small_model() -> TrmModel {
    let config = TrmConfig::from_json(
        r#"{"seq_len": 9, "vocab_size": 4, "hidden_size": 10, "expansion": 2,
            "H_cycles": 1, "L_cycles": 1, "L_layers": 1, "halt_max_steps": 1,
            "mlp_t": true, "pos_encodings": "none"}"#,
    )
    .unwrap();
    TrmModel::random(config, 31, 0.5).unwrap()
}

fn small_batch(model: &TrmModel) -> PuzzleBatch {
    let c = model.config();
    let tokens: Vec<i64> = (0..2 * c.seq_len)
        .map(|i| (i % c.vocab_size) as i64)
        .collect();
    PuzzleBatch::new(c, &tokens, None).unwrap()
}

/// A solve on `context` works (the context survived what the test did).
fn solve_works(context: &GpuContext) {
    let model = small_model();
    let batch = small_batch(&model);
    let mut engine = GpuEngine::new(context, Arc::new(model)).unwrap();
    let out = engine.solve(&batch, &SolveOptions::default()).unwrap();
    assert!(out.logits.iter().all(|v| v.is_finite()));
}

#[test]
fn shader_compile_errors_name_the_line() {
    let Some(context) = gpu::context() else {
        return;
    };
    let source = "@compute @workgroup_size(1)\nfn main() {\n    let x: u32 = 1.5;\n}\n";
    let err = context.shader_module("broken.wgsl", source).unwrap_err();
    let TrmError::Shader { kernel, reason } = &err else {
        panic!("expected a shader error, got {err}");
    };
    assert_eq!(kernel, "broken.wgsl");
    assert!(reason.contains("line 3"), "{reason}");
    assert!(reason.contains("let x: u32 = 1.5;"), "{reason}");
    solve_works(&context);
}

#[test]
fn buffers_beyond_the_limits_are_errors() {
    let Some(context) = gpu::context() else {
        return;
    };
    let limit = context.limits().max_buffer_size;
    let err = context
        .create_buffer(&wgpu::BufferDescriptor {
            label: Some("too large"),
            size: limit + 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
        .unwrap_err();
    assert!(matches!(err, TrmError::TooLarge(_)), "{err}");
    // wgpu itself refuses this one (mappable storage); the error scope
    // turns its validation error into a value instead of a panic
    let err = context
        .create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid usage"),
            size: 64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
        .unwrap_err();
    assert!(matches!(err, TrmError::Gpu(_)), "{err}");
    assert!(err.to_string().contains("invalid usage"), "{err}");
    solve_works(&context);
}

#[test]
fn weights_beyond_the_device_limit_are_refused() {
    if gpu::context().is_none() {
        return;
    }
    let options = GpuOptions::default()
        .with_env()
        .unwrap()
        .max_buffer_bytes(16 << 10);
    let context = GpuContext::new(&options).unwrap();
    // one layer of this model takes about 36 KB
    let err = GpuEngine::new(&context, Arc::new(small_model()))
        .err()
        .expect("weights beyond the binding limit must be refused");
    assert!(matches!(err, TrmError::AdapterUnsuitable { .. }), "{err}");
    assert!(err.to_string().contains("layer weights"), "{err}");
}

/// The RoPE tables the engine builds on the host are checked against the
/// memory limit before they are built, whatever the device allows: S =
/// 1,000,000 and head_dim = 1100 make 8.8 GB of them from a model of
/// 5.7M parameters.
#[test]
fn rope_tables_beyond_the_memory_limit_are_refused() {
    let Some(context) = gpu::context() else {
        return;
    };
    let config = TrmConfig::from_json(
        r#"{"seq_len": 1000000, "vocab_size": 4, "hidden_size": 1100, "num_heads": 1,
            "expansion": 0.05, "H_cycles": 1, "L_cycles": 1, "L_layers": 1,
            "halt_max_steps": 1, "mlp_t": false, "pos_encodings": "rope"}"#,
    )
    .unwrap();
    let model = TrmModel::random(config, 29, 0.5).unwrap();
    let started = std::time::Instant::now();
    let err = GpuEngine::new(&context, Arc::new(model))
        .err()
        .expect("RoPE tables beyond the memory limit must be refused");
    assert!(matches!(err, TrmError::TooLarge(_)), "{err}");
    assert!(
        err.to_string().contains(
            "8.2 GiB of it for RoPE tables (2 x S x head_dim floats, S = 1000000, head_dim = 1100)"
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    solve_works(&context);
}

/// A device the test owns, as an application would bring it.
fn own_device() -> (wgpu::Device, wgpu::Queue) {
    let options = GpuOptions::default().with_env().unwrap();
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = options.backend.backends();
    let instance = wgpu::Instance::new(descriptor);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        // as the library's own contexts, so that both build the same
        // kernels (the subgroup reductions round differently)
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        ..Default::default()
    }))
    .unwrap()
}

#[test]
fn a_lost_device_is_an_error_and_a_new_engine_works() {
    let Some(shared) = gpu::context() else {
        return;
    };
    let model = small_model();
    let batch = small_batch(&model);
    let options = SolveOptions::default();

    // the application's device, brought through from_device
    let (device, queue) = own_device();
    let context = GpuContext::from_device(device.clone(), queue).unwrap();
    let mut engine = GpuEngine::new(&context, Arc::new(model.clone())).unwrap();
    let before = engine.solve(&batch, &options).unwrap();
    device.destroy();
    let err = engine.solve(&batch, &options).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, TrmError::DeviceLost(_)), "{err}");
    let err = GpuEngine::new(&context, Arc::new(model.clone()))
        .err()
        .expect("a lost device cannot take a new engine");
    assert!(matches!(err, TrmError::DeviceLost(_)), "{err}");

    // a device the library created, whose lost callback it installed
    let options_gpu = GpuOptions::default().with_env().unwrap();
    let own = GpuContext::new(&options_gpu).unwrap();
    let mut engine = GpuEngine::new(&own, Arc::new(model.clone())).unwrap();
    own.device().destroy();
    let err = engine.solve(&batch, &options).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, TrmError::DeviceLost(_)), "{err}");

    // a new engine on a new context gives the same answers as before
    let fresh = GpuContext::new(&options_gpu).unwrap();
    let mut engine = GpuEngine::new(&fresh, Arc::new(model.clone())).unwrap();
    assert_eq!(engine.solve(&batch, &options).unwrap(), before);
    solve_works(&shared);
}

/// A wait that outlasts its limit is a timeout, not a lost device: the
/// error says so, and the device stays usable.
#[test]
fn a_wait_past_its_limit_times_out() {
    let Some(shared) = gpu::context() else {
        return;
    };
    // 16 ACT steps of 21 dependent dispatches: milliseconds on any GPU,
    // about a second on lavapipe, far beyond a limit of a nanosecond
    let config = TrmConfig::from_json(
        r#"{"seq_len": 81, "vocab_size": 10, "hidden_size": 32, "expansion": 4,
            "H_cycles": 3, "L_cycles": 6, "L_layers": 1, "halt_max_steps": 16,
            "mlp_t": true, "pos_encodings": "none"}"#,
    )
    .unwrap();
    let model = TrmModel::random(config, 5, 0.5).unwrap();
    let c = model.config();
    let tokens: Vec<i64> = (0..2 * c.seq_len)
        .map(|i| (i % c.vocab_size) as i64)
        .collect();
    let batch = PuzzleBatch::new(c, &tokens, None).unwrap();
    let limit = Duration::from_nanos(1);
    let options = GpuOptions::default()
        .with_env()
        .unwrap()
        .wait_timeout(limit);
    let context = GpuContext::new(&options).unwrap();
    assert_eq!(context.wait_timeout(), limit);
    let mut engine = GpuEngine::new(&context, Arc::new(model)).unwrap();
    let err = engine
        .solve(&batch, &SolveOptions::default())
        .expect_err("a solve cannot finish within a nanosecond");
    eprintln!("{err}");
    assert!(matches!(err, TrmError::Gpu(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("timed out after 0.000000001 s"),
        "{message}"
    );
    assert!(message.contains("TRM_GPU_WAIT_SECS"), "{message}");
    // not lost: the work finishes, and the device takes more
    context
        .device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    context.check().unwrap();
    solve_works(&shared);
}
