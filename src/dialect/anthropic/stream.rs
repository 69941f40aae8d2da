//! Anthropic streams: what the named events say (`message_start` and
//! `message_delta` usage, cumulative, last value wins; `message_stop`; the
//! `error` event). Only events that can carry these are parsed.

use serde_json::from_str;

use super::usage::{MessageDelta, MessageStart, UsageAcc};
use crate::dialect::json::{set_once_str, ErrorEvent, ErrorField};
use crate::dialect::usage::{StreamFacts, Usage};

/// Whether [`Meter::on_event`] reads the data of an event with this name
/// (the rest it counts or ignores by name alone).
pub(crate) fn reads_data_of(name: &[u8]) -> bool {
    matches!(name, b"message_start" | b"message_delta" | b"error")
}

/// Reads one Anthropic stream's events.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    usage: UsageAcc,
}

impl Meter {
    pub(crate) fn usage(&self) -> Usage {
        self.usage.usage()
    }

    pub(crate) fn on_event(&mut self, name: &str, data: &str, facts: &mut StreamFacts) {
        match name {
            "message_start" => {
                let Ok(ev) = from_str::<MessageStart<'_>>(data) else {
                    return;
                };
                let Some(message) = ev.message else {
                    return;
                };
                set_once_str(&mut facts.id, message.id);
                set_once_str(&mut facts.model, message.model);
                if let Some(usage) = message.usage {
                    self.usage.apply(&usage);
                    facts.saw_usage = true;
                }
            }
            "message_delta" => {
                if let Ok(MessageDelta { usage: Some(usage) }) = from_str(data) {
                    self.usage.apply(&usage);
                    let iterations = usage.iterations();
                    if !iterations.is_empty() {
                        facts.iterations = iterations;
                    }
                    facts.saw_usage = true;
                }
            }
            "message_stop" => facts.complete = true,
            "content_block_delta" => facts.deltas += 1,
            "error" if facts.error.is_none() => {
                let kind = from_str::<ErrorEvent>(data)
                    .ok()
                    .and_then(|ev| ev.error)
                    .map_or_else(|| "error".to_owned(), ErrorField::kind);
                facts.error = Some(kind);
            }
            // ping, content blocks, unknown (future) events.
            _ => {}
        }
    }
}
