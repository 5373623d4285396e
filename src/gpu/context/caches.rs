//! What a context makes once and keeps: buffers checked against the
//! device's limits, shader modules, pipelines under their [`KernelKey`],
//! bind group layouts, and each model's resident resources.

use super::*;

impl GpuContext {
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
}

/// `line L, column C: message` followed by the offending source line.
pub(super) fn describe_message(source: &str, message: &wgpu::CompilationMessage) -> String {
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
