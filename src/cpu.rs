//! CPU-bound work that can be long (template renders, a batch's validation) runs off the async
//! runtime, on a bounded number of blocking threads at once: a request that renders a thousand
//! templates holds one of those threads, never the runtime's, so `/healthz` and every other
//! request keep being served.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// The blocking threads CPU-bound work may hold at once.
#[derive(Clone)]
pub struct CpuPool(Arc<Semaphore>);

/// The work could not run to its end (it panicked, or the runtime is shutting down).
#[derive(Debug)]
pub struct CpuLost;

impl CpuPool {
    /// One fewer thread than the cores (at least one), so the runtime always has a core to
    /// answer on.
    pub fn new() -> CpuPool {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1);
        CpuPool(Arc::new(Semaphore::new(threads)))
    }

    /// Run `f` on the blocking pool in its turn.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, CpuLost> {
        let _turn = self.0.acquire().await.map_err(|_| CpuLost)?;
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            tracing::error!(error = %e, "a CPU-bound task failed");
            CpuLost
        })
    }
}

impl Default for CpuPool {
    fn default() -> Self {
        CpuPool::new()
    }
}
