//! The blocking API over the async one: natively a future is run to its end
//! on the calling thread (pollster); in the browser, where nothing may
//! block, a future that is not ready at once fails with a message naming
//! the async call to use instead.

use crate::error::Result;
#[cfg(target_arch = "wasm32")]
use crate::error::TrmError;

/// Runs `future` to its end (see the module doc); `instead` names the async
/// call a browser caller must use.
pub(crate) fn block_on<T>(instead: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = instead;
        pollster::block_on(future)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => Err(TrmError::Gpu(format!(
                "the browser cannot block on the GPU: use {instead}"
            ))),
        }
    }
}
