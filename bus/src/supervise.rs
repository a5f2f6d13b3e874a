//! Roles run supervised. A role that fails (an error it cannot get past, or a panic from a bug
//! not found yet) is logged and started again with backoff while the other roles keep running;
//! [`Health`] says which role is down, and `/healthz` reports it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first wait before a failed role starts again; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a failed role starts again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A role that ran this long before failing starts again after [`MIN_BACKOFF`].
const STEADY: Duration = Duration::from_secs(60);

/// How each supervised role is doing.
#[derive(Debug, Default)]
pub struct Health {
    roles: Mutex<BTreeMap<&'static str, RoleState>>,
}

/// One role's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleState {
    /// Whether it runs now.
    pub up: bool,
    /// How often it was started again.
    pub restarts: u32,
    /// Why it last failed.
    pub error: Option<String>,
}

impl Health {
    fn update(&self, role: &'static str, change: impl FnOnce(&mut RoleState)) {
        // A poisoned lock only means a panic elsewhere while it was held: the map is whole.
        let mut roles = self.roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(roles.entry(role).or_default());
    }

    /// Every role, by name.
    pub fn roles(&self) -> BTreeMap<&'static str, RoleState> {
        self.roles.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The roles that are down, with their state.
    pub fn down(&self) -> Vec<(&'static str, RoleState)> {
        self.roles().into_iter().filter(|(_, state)| !state.up).collect()
    }
}

/// Runs the role `make` starts until `cancel` fires, starting it again whenever it fails or
/// ends early: after [`MIN_BACKOFF`], doubling to [`MAX_BACKOFF`] while it keeps failing.
pub async fn supervise<F, Fut>(
    role: &'static str,
    health: Arc<Health>,
    cancel: CancellationToken,
    make: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        health.update(role, |state| state.up = true);
        let started = Instant::now();
        // A task of its own, so a panic ends the role, not the process.
        let ended = tokio::spawn(make()).await;
        if cancel.is_cancelled() {
            health.update(role, |state| state.up = false);
            return match ended {
                Ok(result) => result,
                Err(join) => Err(anyhow::anyhow!("{role} panicked while stopping: {}", panic_message(join))),
            };
        }
        let error = match ended {
            Ok(Ok(())) => "it ended on its own".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(join) => format!("panicked: {}", panic_message(join)),
        };
        if started.elapsed() >= STEADY {
            backoff = MIN_BACKOFF;
        }
        tracing::error!(role, error = %error, retry_in = ?backoff, "role failed; the others keep running and it starts again");
        health.update(role, |state| {
            state.up = false;
            state.restarts += 1;
            state.error = Some(error);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What a task that panicked said.
pub fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(panic) => pigeon_core::fault::panic_text(panic.as_ref()),
        Err(join) => join.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_role_starts_again_with_backoff_while_another_keeps_running() {
        let health = Arc::new(Health::default());
        let cancel = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let flaky = {
            let starts = Arc::clone(&starts);
            let cancel = cancel.clone();
            move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                let cancel = cancel.clone();
                async move {
                    match n {
                        0 => anyhow::bail!("the database is away"),
                        1 => panic!("a bug we have not found yet"),
                        _ => {
                            cancel.cancelled().await;
                            Ok(())
                        }
                    }
                }
            }
        };
        let steady_ticks = Arc::new(AtomicU32::new(0));
        let steady = {
            let ticks = Arc::clone(&steady_ticks);
            let cancel = cancel.clone();
            move || {
                let ticks = Arc::clone(&ticks);
                let cancel = cancel.clone();
                async move {
                    while !cancel.is_cancelled() {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(())
                }
            }
        };
        let flaky = tokio::spawn(supervise("archiver", Arc::clone(&health), cancel.clone(), flaky));
        let steady = tokio::spawn(supervise("router", Arc::clone(&health), cancel.clone(), steady));

        tokio::time::sleep(Duration::from_millis(500)).await;
        let down = health.down();
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].0, "archiver");
        assert_eq!(down[0].1.error.as_deref(), Some("the database is away"));
        // Started again after a second, it panics: down again, for two seconds this time.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let archiver = health.roles()["archiver"].clone();
        assert_eq!((archiver.up, archiver.restarts), (false, 2));
        assert!(archiver.error.as_deref().is_some_and(|e| e.contains("panicked: a bug")), "{archiver:?}");
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        assert!(health.roles()["archiver"].up, "started a third time after 1 s + 2 s");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(health.roles()["router"].up && health.roles()["router"].restarts == 0);
        assert!(steady_ticks.load(Ordering::SeqCst) >= 30, "the router ran all along");

        cancel.cancel();
        flaky.await.unwrap().unwrap();
        steady.await.unwrap().unwrap();
    }
}
