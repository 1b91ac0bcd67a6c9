//! The tokio runtime the server's async parts share: the publish and admin
//! ports today, other async clients (Redis) later. Small on purpose: the
//! data port never runs on it, and nothing on it may block (blocking work
//! goes to its bounded blocking pool).

use crate::limits::{HTTP_BLOCKING_THREADS, HTTP_RUNTIME_THREADS};

/// An owned runtime; [`Runtime::stop`] ends every task.
pub struct Runtime {
    runtime: tokio::runtime::Runtime,
}

impl Runtime {
    /// Starts the runtime's threads.
    pub fn start() -> std::io::Result<Runtime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(HTTP_RUNTIME_THREADS)
            .max_blocking_threads(HTTP_BLOCKING_THREADS)
            .thread_name("surge-http")
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Runtime { runtime })
    }

    /// A handle to spawn on, for anything in the server that needs async.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Ends every task without waiting for them: the listeners are already
    /// stopped, and a caller on another runtime (a test) must not block.
    pub fn stop(self) {
        self.runtime.shutdown_background();
    }
}
