//! Capabilities: what a module can do with a letter, and the handler that does it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::fly::Context;
use crate::letter::Letter;
use crate::registry::CapabilityInfo;

/// The error a handler returns; anything that is an [`std::error::Error`] converts with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A type-erased async handler.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, letter: Letter, context: Context) -> BoxFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Letter, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, letter: Letter, context: Context) -> BoxFuture {
        Box::pin(self(letter, context))
    }
}

/// One thing a module can do: letters tagged with its name on the module topic go to its
/// handler.
///
/// ```
/// use pigeon_sdk::{fields, Capability, Context, HandlerResult, Letter};
///
/// async fn drop_chest(letter: Letter, _cx: Context) -> HandlerResult {
///     let user = letter.user_id().ok_or("no userId")?;
///     println!("a chest for {user}");
///     Ok(())
/// }
///
/// let chest = Capability::new("chest.drop", drop_chest)
///     .describe("Drops a treasure chest into the room")
///     .requires([fields::USER_ID, fields::ROOM_ID]);
/// assert_eq!(chest.name(), "chest.drop");
/// ```
#[derive(Clone)]
pub struct Capability {
    pub(crate) info: CapabilityInfo,
    pub(crate) handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Capability {
    /// A capability named `name` (the tag its letters carry, e.g. `chest.drop`) handled by
    /// `handler`, an async function of the letter and the module's [`Context`].
    pub fn new<F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Letter, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self {
            info: CapabilityInfo { name: name.into(), description: String::new(), requires: Vec::new() },
            handler: Arc::new(handler),
        }
    }

    /// One line telling operators what it does.
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.info.description = description.into();
        self
    }

    /// Dictionary fields every letter for it must carry (see [`crate::fields`]).
    pub fn requires<S: Into<String>>(mut self, fields: impl IntoIterator<Item = S>) -> Self {
        self.info.requires.extend(fields.into_iter().map(Into::into));
        self
    }

    /// Its name: the tag its letters carry.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What the module registers for it.
    pub fn info(&self) -> &CapabilityInfo {
        &self.info
    }
}

/// How a failing handler is tried again in process before the failure is reported to the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included; at least 1.
    pub attempts: u32,
    /// Wait before the second try; doubled before each further one.
    pub first_delay: Duration,
    /// The longest wait between tries.
    pub max_delay: Duration,
}

impl Retry {
    /// `attempts` tries in all, waiting `first_delay` and then twice as long each time, at most
    /// five seconds.
    pub fn new(attempts: u32, first_delay: Duration) -> Self {
        Self { attempts: attempts.max(1), first_delay, max_delay: Duration::from_secs(5) }
    }

    /// One try: a failure is reported at once.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO)
    }

    /// The wait after failed try `attempt` (1-based).
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl Default for Retry {
    /// Three tries, 200 ms and then 400 ms apart.
    fn default() -> Self {
        Self::new(3, Duration::from_millis(200))
    }
}
