//! [`RetryTopicsLayer`]: builds [`RetryTopic`] services.

use std::fmt;

use tower_layer::Layer;

use super::{RetryTopic, RetryTopics};

/// Builds [`RetryTopic`] services for the main topic's route or one retry level's route.
/// Made by [`RetryTopics::layer`] and [`RetryTopics::level_layer`]; put it **outside** the
/// whole middleware stack (it must see the result the dead-letter and retry layers
/// settled on).
///
/// # Examples
/// ```
/// use std::{sync::Arc, time::Duration};
/// use herald_core::{handler_fn, memory::MemoryBroker, Inbound, retry_topics::RetryTopics};
/// use tower::Layer;
/// let retry = RetryTopics::new("orders", Arc::new(MemoryBroker::new()), [Duration::from_secs(1)]);
/// let main = retry.layer().layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// let level_1 = retry.level_layer(1).layer(handler_fn(|_: Inbound| async { Ok(()) }));
/// assert_eq!((main.level(), level_1.level()), (None, Some(1)));
/// ```
#[derive(Clone)]
pub struct RetryTopicsLayer {
    config: RetryTopics,
    level: Option<u32>,
}

impl RetryTopicsLayer {
    /// A layer for the main route (`level` `None`) or a retry level's route.
    pub fn new(config: RetryTopics, level: Option<u32>) -> Self {
        Self { config, level }
    }
}

impl fmt::Debug for RetryTopicsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopicsLayer")
            .field("config", &self.config)
            .field("level", &self.level)
            .finish()
    }
}

impl<S> Layer<S> for RetryTopicsLayer {
    type Service = RetryTopic<S>;

    fn layer(&self, inner: S) -> RetryTopic<S> {
        RetryTopic::new(inner, self.config.clone(), self.level)
    }
}
