//! Bounded waits for the GPU: natively a wait polls the device from the
//! calling thread with a time limit and tells a lost device from a slow
//! one; on the web the browser's promises resolve mappings and the wait
//! yields to its event loop.

use super::*;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(target_arch = "wasm32"))]
use std::sync::mpsc::{Receiver, RecvTimeoutError};

/// Waits that saw their submission finish, by any thread: natively, a
/// wait that times out while this moves is behind other work that is
/// progressing (on the web the browser waits).
#[derive(Default)]
pub(super) struct Progress {
    #[cfg(not(target_arch = "wasm32"))]
    finished_waits: AtomicU64,
}

/// What one bounded wait for the GPU came to.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, PartialEq)]
pub(super) enum Polled {
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
    pub(super) fn of(
        polled: std::thread::Result<Result<wgpu::PollStatus, wgpu::PollError>>,
    ) -> Self {
        match polled {
            Ok(Ok(_)) => Polled::Done,
            Ok(Err(wgpu::PollError::Timeout)) => Polled::TimedOut,
            Ok(Err(wgpu::PollError::WrongSubmissionIndex(..))) => Polled::Dropped,
            Err(panic) => Polled::Panicked(panic_message(&panic)),
        }
    }
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

impl GpuContext {
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
    pub(super) fn poll_wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check()?;
        let device = &self.inner.device;
        let limit = self.inner.wait_limit;
        let finished = &self.inner.progress.finished_waits;
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

#[cfg(not(target_arch = "wasm32"))]
pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[cfg(not(target_arch = "wasm32"))]
pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "the GPU driver failed while waiting".to_string()
    }
}
