#![doc = include_str!("../docs/middleware.md")]

pub mod breaker;
pub mod catch_panic;
pub mod dead_letter;
pub mod dedupe;
pub mod from_fn;
pub mod metrics;
pub mod retry;
pub mod stack;
pub mod timeout;
pub mod trace;

mod attempts;

#[doc(inline)]
pub use breaker::{
    Breaker, BreakerConfig, BreakerHandle, BreakerHook, BreakerLayer, BreakerState,
    DefaultBreakerHook,
};
#[doc(inline)]
pub use catch_panic::{CatchPanic, CatchPanicLayer};
#[doc(inline)]
pub use dead_letter::{DeadLetter, DeadLetterLayer, DeadLetterPolicy, DefaultDeadLetterPolicy};
#[doc(inline)]
pub use from_fn::{FromFn, FromFnLayer, Next, from_fn};
#[doc(inline)]
pub use retry::{Backoff, Retry, RetryLayer, RetryPolicy};
#[doc(inline)]
pub use stack::Stack;
#[doc(inline)]
pub use timeout::{Timeout, TimeoutLayer};
