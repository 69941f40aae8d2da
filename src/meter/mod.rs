//! Metering: money, prices and the usage event.

pub mod event;
pub mod money;
pub mod prices;
