//! Scripts the API runs (pigeons checked when saved or applied, dry runs, tests, `/fly`) run
//! on a few blocking threads of their own, never on the runtime that routes letters, and one
//! request compiles or runs a bounded number of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::ApiError;
use pigeon_core::script::{budgeted, Budget, TooManyScripts};

/// Scripts one request may compile or run, at most.
pub const SCRIPTS_PER_REQUEST: u32 = 256;
/// How long a request waits for a script thread before it is told to come back.
const WAIT: Duration = Duration::from_secs(10);

/// The threads the API's scripts run on: as many at once as `threads`, each request within
/// its budget of scripts.
#[derive(Clone, Debug)]
pub struct ScriptGate {
    permits: Arc<Semaphore>,
    per_request: u32,
}

impl Default for ScriptGate {
    /// One thread per core, less one for the router, at least one.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self::new(cores.saturating_sub(1).max(1), SCRIPTS_PER_REQUEST)
    }
}

impl ScriptGate {
    /// `threads` at once, each request compiling or running at most `per_request` scripts.
    pub fn new(threads: usize, per_request: u32) -> Self {
        Self { permits: Arc::new(Semaphore::new(threads.max(1))), per_request }
    }

    /// A request's budget: pass it to each [`ScriptGate::run`] of the request.
    pub fn budget(&self) -> Budget {
        Budget::new(self.per_request)
    }

    /// Runs `work` (which compiles or runs scripts) on a script thread, spending the request's
    /// `budget`: 503 with `Retry-After` when no thread is free for a while, 422
    /// `too_many_scripts` past the budget, 500 when it panics.
    pub async fn run<T, F>(&self, budget: &mut Budget, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    {
        let permit = tokio::time::timeout(WAIT, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| ApiError::unavailable_for("every script thread is busy; try again shortly", WAIT))?
            .map_err(ApiError::internal)?;
        let mut spending = *budget;
        // The blocking threads have the runtime's stack, sized for scripts' deepest values.
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let done = budgeted(&mut spending, work);
            (done, spending)
        })
        .await;
        match done {
            Ok((done, spent)) => {
                *budget = spent;
                done.map_err(|e: TooManyScripts| {
                    ApiError::invalid("too_many_scripts", e.to_string(), Vec::new())
                })?
            }
            Err(join) => Err(ApiError::internal(format!("script work failed: {join}"))),
        }
    }
}
