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
