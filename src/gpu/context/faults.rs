//! GPU faults as [`TrmError`]s: error scopes around each call, faults
//! wgpu raises outside them, and a lost device.

use super::*;
#[cfg(target_arch = "wasm32")]
use std::sync::atomic::{AtomicUsize, Ordering};

/// Error scopes and compilation reports not yet resolved: on the web they
/// are promises ([`GpuContext::flush_errors`] waits for them); natively
/// they resolve at once.
#[derive(Default)]
pub(super) struct Pending {
    #[cfg(target_arch = "wasm32")]
    unresolved: Arc<AtomicUsize>,
}

/// Faults reported by wgpu outside of error scopes (or asynchronously).
#[derive(Default)]
pub(super) struct Faults {
    pub(super) lost: Option<String>,
    pub(super) uncaptured: Vec<String>,
}

impl GpuContext {
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
    pub(super) fn report(
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
    pub(super) fn later(&self, report: impl Future<Output = Option<String>> + 'static) {
        let unresolved = Arc::clone(&self.inner.pending.unresolved);
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
            while self.inner.pending.unresolved.load(Ordering::Acquire) > 0 {
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

    /// Maps a wgpu error to the matching [`TrmError`].
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn classify(&self, what: &str, error: wgpu::Error) -> TrmError {
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
}
