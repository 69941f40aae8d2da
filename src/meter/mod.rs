//! Metering: token usage, prices and money, usage events and the outbox.

pub mod event;
pub mod money;
pub mod outbox;
pub mod prices;
pub mod recorder;
