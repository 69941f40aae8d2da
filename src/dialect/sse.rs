//! Incremental server-sent-events parser for streamed provider responses.
//!
//! It follows the decoder of the official Anthropic and OpenAI Python SDKs
//! (`_streaming.py`), which is what clients of the proxy will run:
//!
//! - a line ends with `\r`, `\n` or `\r\n` (a `\r\n` split across two chunks
//!   is still one line end);
//! - an event is dispatched only at a blank line; a stream that ends without
//!   one loses its last event;
//! - a line starting with `:` is a comment and is ignored;
//! - the field name runs to the first `:`; one leading space is stripped from
//!   the value; a line without `:` is a field with an empty value;
//! - `data:` lines are joined with `\n`; `event:` sets the name;
//! - `id:`, `retry:` and unknown fields are ignored (this parser has no
//!   last-event-id, so a block of only such fields dispatches nothing);
//! - a blank line after no `data:` line and no (non-empty) `event:` name
//!   dispatches nothing.
//!
//! Invalid UTF-8 in a name or in data is replaced lossily (U+FFFD), as only
//! the meter reads the text; the bytes that reach the client are untouched.
//!
//! The parser is on the path of every streamed byte. Line ends are found
//! with `memchr`; the value bytes of `data:` and `event:` lines are copied
//! once, into buffers that are reused from event to event; comments and
//! ignored fields are never copied. An event whose lines span more than
//! `max_event_bytes` is dropped (and counted) instead of being buffered.
//! With a data filter ([`SseParser::with_data_filter`]), the data of an
//! event whose name it refuses is not copied (nor checked as UTF-8) either:
//! the meter reads a stream's usage events, not its text deltas.

use memchr::memchr2;

/// Default limit on one event's size, see [`SseParser::with_max_event_bytes`].
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Reused buffers that grew past this are shrunk back after their event.
const KEEP_CAPACITY: usize = 64 * 1024;

const DATA: &[u8] = b"data:";
const EVENT: &[u8] = b"event:";

/// One dispatched event. Offsets are absolute byte offsets in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The last `event:` value; `""` when there was none.
    pub name: &'a str,
    /// The `data:` values joined with `\n` (lossy UTF-8).
    pub data: &'a str,
    /// First byte of this event's raw text: the first byte after the
    /// previous dispatched (or dropped) event's terminating blank line, so
    /// comments and blank lines before this event are included.
    pub start: u64,
    /// First byte of this event's own lines: the first line that is neither
    /// a comment nor blank, after the last blank line before the event.
    /// `start..fields_start` holds only comments, blank lines and blocks
    /// that dispatched nothing. `fields_start..end` is what must be cut to
    /// remove exactly this event from a stream.
    pub fields_start: u64,
    /// Just past the event's terminating blank line (its `\r\n` included).
    pub end: u64,
}

/// What the current line has shown so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// No byte of the line yet.
    Start,
    /// A proper prefix of `data:` or `event:`, kept in `SseParser::prefix`.
    Prefix,
    /// Inside a `data:` value; `fresh` while no byte of the value was seen
    /// (a leading space is still to be stripped).
    Data { fresh: bool },
    /// Inside an `event:` value.
    Event { fresh: bool },
    /// A comment, an ignored field, or a line of an over-long event.
    Skip,
}

/// Incremental SSE parser; feed it the body chunk by chunk.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: u64,
    /// Bytes fed so far.
    offset: u64,
    /// Start of the event being assembled.
    event_start: u64,
    /// First field line of the event being assembled.
    fields_start: Option<u64>,
    data: Vec<u8>,
    has_data: bool,
    name: Vec<u8>,
    /// The event being assembled grew past the limit; it will be dropped.
    oversized: bool,
    line: Line,
    prefix: [u8; 6],
    prefix_len: usize,
    /// The last chunk ended with a `\r`: a `\n` starting the next chunk
    /// belongs to that line end.
    skip_lf: bool,
    /// The last chunk ended with the `\r` of a blank line that completes an
    /// event: it is dispatched once the next byte shows whether a `\n`
    /// follows (or by [`SseParser::finish`]), so `end` does not depend on
    /// where the chunks were split.
    deferred: bool,
    dropped: u64,
    /// Whether to keep the data of an event with this (non-empty) name.
    keeps_data_of: fn(&[u8]) -> bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

// === impl SseParser ===

impl SseParser {
    /// A parser with the default event limit (16 MiB).
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that drops (does not dispatch) any event whose lines, from
    /// its first field line to the end of its last line, span more than `n`
    /// bytes. Memory stays bounded by about `n` whatever the input.
    pub fn with_max_event_bytes(n: usize) -> Self {
        Self {
            max_event_bytes: u64::try_from(n).unwrap_or(u64::MAX),
            offset: 0,
            event_start: 0,
            fields_start: None,
            data: Vec::new(),
            has_data: false,
            name: Vec::new(),
            oversized: false,
            line: Line::Start,
            prefix: [0; 6],
            prefix_len: 0,
            skip_lf: false,
            deferred: false,
            dropped: 0,
            keeps_data_of: |_| true,
        }
    }

    /// Dispatches an event whose `event:` name `keeps` refuses with empty
    /// `data`: its `data:` lines are skipped, not copied. The name must come
    /// before the data, as every provider sends it: a data line read while
    /// the event has no name yet is always kept, and a name that arrives
    /// after skipped data (or changes to an accepted one) does not bring
    /// it back.
    pub fn with_data_filter(mut self, keeps: fn(&[u8]) -> bool) -> Self {
        self.keeps_data_of = keeps;
        self
    }

    /// From now on every event's data is kept (the filter is dropped).
    pub fn keep_all_data(&mut self) {
        self.keeps_data_of = |_| true;
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Events dropped because they were over the size limit.
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Where the event being assembled begins its own lines
    /// ([`SseEvent::fields_start`]) if it has any yet. `None` between events,
    /// while only comments and blank lines were seen, and once the event is
    /// over-long (it will be dropped, never dispatched). Bytes before this
    /// offset (or before [`offset`](Self::offset) when `None`) can never be
    /// inside a future event's `fields_start..end`.
    pub fn pending_fields_start(&self) -> Option<u64> {
        if self.oversized {
            None
        } else {
            self.fields_start
        }
    }

    /// Parses `chunk`, calling `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        if chunk.is_empty() {
            return;
        }
        let base = self.offset;
        self.offset += chunk.len() as u64;
        let mut pos = 0usize;
        if self.skip_lf {
            self.skip_lf = false;
            if chunk.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        if self.deferred {
            self.deferred = false;
            self.end_event(base + pos as u64, &mut on_event);
        }
        while let Some(rest) = chunk.get(pos..).filter(|r| !r.is_empty()) {
            let Some(i) = memchr2(b'\n', b'\r', rest) else {
                self.line_part(rest, base + pos as u64);
                break;
            };
            self.line_part(&rest[..i], base + pos as u64);
            let mut next = pos + i + 1;
            let mut cr_at_chunk_end = false;
            if rest[i] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => {
                        self.skip_lf = true;
                        cr_at_chunk_end = true;
                    }
                }
            }
            pos = next;
            if self.line_end() {
                self.blank_line(base + pos as u64, cr_at_chunk_end, &mut on_event);
            }
        }
    }

    /// End of input: dispatches an event whose blank line was a `\r` at the
    /// very end (held back in case a `\n` followed). An incomplete trailing
    /// event is discarded, as the SDKs do. The parser is then ready for a
    /// new stream at the current offset.
    pub fn finish(&mut self, mut on_event: impl FnMut(SseEvent<'_>)) {
        if self.deferred {
            self.deferred = false;
            self.end_event(self.offset, &mut on_event);
        }
        self.reset_event(self.offset);
        self.line = Line::Start;
        self.prefix_len = 0;
        self.skip_lf = false;
    }

    /// Takes `part`, the next bytes of the current line (no line end in it);
    /// `part_start` is the absolute offset of its first byte.
    fn line_part(&mut self, part: &[u8], part_start: u64) {
        let Some(&first) = part.first() else {
            return;
        };
        if self.line == Line::Start && self.fields_start.is_none() && first != b':' {
            self.fields_start = Some(part_start);
        }
        if let Some(fields_start) = self.fields_start {
            let part_end = part_start + part.len() as u64;
            if !self.oversized && part_end - fields_start > self.max_event_bytes {
                self.oversized = true;
                self.data.clear();
                self.name.clear();
            }
        }
        if self.oversized {
            self.line = Line::Skip;
            return;
        }
        match self.line {
            Line::Skip => {}
            Line::Data { .. } | Line::Event { .. } => self.value_part(part),
            Line::Start if first == b':' => self.line = Line::Skip,
            Line::Start | Line::Prefix => self.classify(part),
        }
    }

    /// Decides the field of the current line from the prefix held so far
    /// plus `part`.
    fn classify(&mut self, part: &[u8]) {
        let have = self.prefix_len;
        let take = part.len().min(self.prefix.len() - have);
        let mut head = self.prefix;
        head[have..have + take].copy_from_slice(&part[..take]);
        let head = &head[..have + take];
        if head.starts_with(DATA) {
            if !self.name.is_empty() && !(self.keeps_data_of)(&self.name) {
                // Dispatched by name, with empty data.
                self.has_data = true;
                self.line = Line::Skip;
                return;
            }
            self.begin_data_line();
            self.line = Line::Data { fresh: true };
            self.value_part(part.get(DATA.len() - have..).unwrap_or_default());
        } else if head.starts_with(EVENT) {
            self.name.clear();
            self.line = Line::Event { fresh: true };
            self.value_part(part.get(EVENT.len() - have..).unwrap_or_default());
        } else if DATA.starts_with(head) || EVENT.starts_with(head) {
            self.prefix[..head.len()].copy_from_slice(head);
            self.prefix_len = head.len();
            self.line = Line::Prefix;
        } else {
            self.line = Line::Skip;
        }
    }

    /// Appends value bytes of a `data:` or `event:` line.
    fn value_part(&mut self, mut part: &[u8]) {
        if part.is_empty() {
            return;
        }
        let (buf, fresh) = match &mut self.line {
            Line::Data { fresh } => (&mut self.data, fresh),
            Line::Event { fresh } => (&mut self.name, fresh),
            Line::Start | Line::Prefix | Line::Skip => return,
        };
        if *fresh {
            *fresh = false;
            if let Some(rest) = part.strip_prefix(b" ") {
                part = rest;
            }
        }
        buf.extend_from_slice(part);
    }

    fn begin_data_line(&mut self) {
        if self.has_data {
            self.data.push(b'\n');
        }
        self.has_data = true;
    }

    /// The current line ended. Returns whether it was blank.
    fn line_end(&mut self) -> bool {
        match self.line {
            Line::Start => return true,
            Line::Prefix => {
                // A field name without `:`, e.g. a bare `data` line: a field
                // with an empty value.
                let name = &self.prefix[..self.prefix_len];
                if name == b"data" {
                    self.begin_data_line();
                } else if name == b"event" {
                    self.name.clear();
                }
            }
            Line::Data { .. } | Line::Event { .. } | Line::Skip => {}
        }
        self.line = Line::Start;
        self.prefix_len = 0;
        false
    }

    /// A blank line ended just before `end`.
    fn blank_line(
        &mut self,
        end: u64,
        cr_at_chunk_end: bool,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if self.oversized || self.has_data || !self.name.is_empty() {
            if cr_at_chunk_end {
                self.deferred = true;
            } else {
                self.end_event(end, on_event);
            }
        } else {
            // A block of comments or ignored fields: it belongs to the
            // prefix of the next event.
            self.fields_start = None;
        }
    }

    /// Dispatches (or drops, when over-long) the event ending at `end`.
    // (`utf8` below: std's validator has a word-at-a-time ASCII fast path that
    // `from_utf8_lossy` lacks; on a 100 MB stream the difference was 11% of
    // tollgate's CPU.)
    fn end_event(&mut self, end: u64, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.oversized {
            self.dropped += 1;
            tracing::debug!(
                start = self.event_start,
                end,
                limit = self.max_event_bytes,
                "dropped an over-long server-sent event"
            );
        } else {
            let name = utf8(&self.name);
            let data = utf8(&self.data);
            on_event(SseEvent {
                name: &name,
                data: &data,
                start: self.event_start,
                fields_start: self.fields_start.unwrap_or(self.event_start),
                end,
            });
        }
        self.reset_event(end);
    }

    fn reset_event(&mut self, next_start: u64) {
        self.event_start = next_start;
        self.fields_start = None;
        self.oversized = false;
        self.has_data = false;
        self.data.clear();
        self.name.clear();
        if self.data.capacity() > KEEP_CAPACITY {
            self.data.shrink_to(KEEP_CAPACITY);
        }
        if self.name.capacity() > KEEP_CAPACITY {
            self.name.shrink_to(KEEP_CAPACITY);
        }
    }

    /// Bytes held in buffers (for tests of the memory bound).
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.data.capacity() + self.name.capacity()
    }
}

/// Bytes as text: borrowed when valid UTF-8 (the fast, common case), else
/// with replacement characters.
fn utf8(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// providers.md §2.2, byte-exact, `\n` line ends.
    pub(crate) const ANTHROPIC_BASIC: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
        "\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there!\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    /// providers.md §2.2 block variants (thinking + tool_use), byte-exact.
    pub(crate) const ANTHROPIC_TOOL_BLOCKS: &str = concat!(
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Simple question.\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"c3ludGhldGlj...\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01NRLabsLyVHZPKxbKvkfSMn\",\"name\":\"get_weather\",\"caller\":{\"type\":\"direct\"},\"input\":{}}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"Paris\\\"}\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":377,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":65,\"output_tokens_details\":{\"thinking_tokens\":12}}}\n",
        "\n",
    );

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Ev {
        name: String,
        data: String,
        start: u64,
        fields_start: u64,
        end: u64,
    }

    fn ev(name: &str, data: &str, start: u64, fields_start: u64, end: u64) -> Ev {
        Ev {
            name: name.into(),
            data: data.into(),
            start,
            fields_start,
            end,
        }
    }

    fn feed_into(parser: &mut SseParser, chunk: &[u8], out: &mut Vec<Ev>) {
        parser.feed(chunk, |e| {
            assert!(e.start <= e.fields_start && e.fields_start < e.end);
            out.push(Ev {
                name: e.name.to_owned(),
                data: e.data.to_owned(),
                start: e.start,
                fields_start: e.fields_start,
                end: e.end,
            });
        });
    }

    /// Parses `input` cut into the given pieces, then finishes.
    fn parse_pieces(pieces: &[&[u8]]) -> Vec<Ev> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            feed_into(&mut parser, piece, &mut out);
        }
        parser.finish(|e| {
            out.push(ev(e.name, e.data, e.start, e.fields_start, e.end));
        });
        assert_eq!(
            parser.offset(),
            pieces.iter().map(|p| p.len() as u64).sum::<u64>()
        );
        out
    }

    fn parse(input: &[u8]) -> Vec<Ev> {
        parse_pieces(&[input])
    }

    /// A data filter: events it refuses come by name with empty data, at
    /// every split point; the rest are exactly as without it, and so are
    /// all offsets. Data before the event's name is kept.
    #[test]
    fn filtered_events_come_by_name_without_their_data() {
        fn keeps(name: &[u8]) -> bool {
            name != b"content_block_delta"
        }
        let input = ANTHROPIC_BASIC.as_bytes();
        let whole = parse(input);
        let expected: Vec<Ev> = whole
            .iter()
            .cloned()
            .map(|mut e| {
                if e.name == "content_block_delta" {
                    e.data.clear();
                }
                e
            })
            .collect();
        assert!(expected.iter().any(|e| e.name == "content_block_delta"));
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            let mut parser = SseParser::new().with_data_filter(keeps);
            let mut out = Vec::new();
            feed_into(&mut parser, a, &mut out);
            feed_into(&mut parser, b, &mut out);
            assert_eq!(out, expected, "split at {k}");
        }
        // Data first, then the name: kept.
        let late = b"data: {\"a\":1}\nevent: content_block_delta\n\n";
        let mut parser = SseParser::new().with_data_filter(keeps);
        let mut out = Vec::new();
        feed_into(&mut parser, late, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "{\"a\":1}");
        // Dropped filter: everything again.
        let mut parser = SseParser::new().with_data_filter(keeps);
        parser.keep_all_data();
        let mut out = Vec::new();
        feed_into(&mut parser, input, &mut out);
        assert_eq!(out, whole);
    }

    /// Every single split point, byte by byte, and pseudo-random multi-way
    /// splits all give the unsplit result.
    fn assert_split_invariant(input: &[u8]) -> Vec<Ev> {
        let whole = parse(input);
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            assert_eq!(parse_pieces(&[a, b]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_pieces(&bytes), whole, "byte by byte");
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let mut pieces = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 9) as usize;
                let n = n.min(rest.len());
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            assert_eq!(parse_pieces(&pieces), whole, "random split");
        }
        whole
    }

    /// The raw text of each event, reconstructed from `start..end`, tiles
    /// the input up to the last event's end.
    fn assert_tiles(input: &[u8], events: &[Ev]) {
        let mut at = 0;
        for e in events {
            assert_eq!(e.start, at);
            at = e.end;
        }
        assert!(at <= input.len() as u64);
    }

    #[test]
    fn anthropic_basic_stream() {
        let input = ANTHROPIC_BASIC.as_bytes();
        let events = assert_split_invariant(input);
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_tiles(input, &events);
        assert_eq!(events.last().map(|e| e.end), Some(input.len() as u64));
        assert_eq!(events[2].data, "{\"type\": \"ping\"}");
        assert_eq!(events[7].data, "{\"type\":\"message_stop\"}");
        // Each event's raw text is exactly its own two lines and blank line.
        for e in &events {
            let raw = &ANTHROPIC_BASIC[e.start as usize..e.end as usize];
            assert_eq!(raw, format!("event: {}\ndata: {}\n\n", e.name, e.data));
            assert_eq!(e.fields_start, e.start);
        }
    }

    #[test]
    fn anthropic_tool_blocks_stream() {
        let input = ANTHROPIC_TOOL_BLOCKS.as_bytes();
        let events = assert_split_invariant(input);
        assert_eq!(events.len(), 9);
        assert_tiles(input, &events);
        assert_eq!(
            events[6].data,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"Paris\"}"}}"#
        );
        assert_eq!(events[8].name, "message_delta");
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        let lf = parse(ANTHROPIC_BASIC.as_bytes());
        for ending in ["\r\n", "\r"] {
            let input = ANTHROPIC_BASIC.replace('\n', ending);
            let events = assert_split_invariant(input.as_bytes());
            assert_tiles(input.as_bytes(), &events);
            let strip = |v: &[Ev]| -> Vec<(String, String)> {
                v.iter().map(|e| (e.name.clone(), e.data.clone())).collect()
            };
            assert_eq!(strip(&events), strip(&lf), "{ending:?}");
            // `end` includes the whole terminator, the last one too.
            assert_eq!(events.last().map(|e| e.end), Some(input.len() as u64));
        }
    }

    #[test]
    fn mixed_line_ends() {
        let input = b"data: a\r\ndata: b\rdata: c\n\r\nevent: x\r\rdata:d\n\n";
        let events = assert_split_invariant(input);
        assert_eq!(
            events,
            [
                ev("", "a\nb\nc", 0, 0, 27),
                ev("x", "", 27, 27, 37),
                ev("", "d", 37, 37, 45)
            ]
        );
    }

    #[test]
    fn lone_cr_at_the_very_end_is_dispatched_by_finish() {
        let input = b"data: a\r\r";
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        feed_into(&mut parser, input, &mut out);
        assert!(out.is_empty(), "a \\n may still follow");
        parser.finish(|e| out.push(ev(e.name, e.data, e.start, e.fields_start, e.end)));
        assert_eq!(out, [ev("", "a", 0, 0, 9)]);
        assert_split_invariant(input);
    }

    #[test]
    fn comments_and_field_rules() {
        let input = concat!(
            ": OPENROUTER PROCESSING\n",
            "\n",
            ": another\n",
            "data: {\"a\":1}\n",
            ": inside\n",
            "data:  two spaces\n",
            "data\n",
            "data:\n",
            "id: 7\n",
            "retry: 10\n",
            "unknown: x\n",
            "Data: not data\n",
            "datax: not data\n",
            "\n",
            "event:no-space\n",
            "event: second\n",
            "\n",
            "event\n",
            "\n",
            "event:\n",
            "\n",
            "id: 8\n",
            "\n",
            "\n",
            "\n",
            ": only a comment\n",
            "\n",
            "data: [DONE]\n",
            "\n",
        );
        let events = assert_split_invariant(input.as_bytes());
        let first_fields = input.find("data: {").unwrap() as u64;
        let second = input.find("event:no-space").unwrap() as u64;
        let done = input.find("data: [DONE]").unwrap() as u64;
        let done_end = input.len() as u64;
        let second_end = input.find("event\n").unwrap() as u64;
        assert_eq!(
            events,
            [
                ev("", "{\"a\":1}\n two spaces\n\n", 0, first_fields, second),
                ev("second", "", second, second, second_end),
                ev("", "[DONE]", second_end, done, done_end),
            ]
        );
    }

    #[test]
    fn missing_final_blank_line_loses_the_last_event() {
        let input = b"data: one\n\ndata: two\n";
        let events = assert_split_invariant(input);
        assert_eq!(events, [ev("", "one", 0, 0, 11)]);
        let mut parser = SseParser::new();
        parser.feed(b"data: x", |_| panic!("no blank line yet"));
        assert_eq!(parser.pending_fields_start(), Some(0));
        assert_eq!(parser.offset(), 7);
    }

    #[test]
    fn utf8_split_anywhere_and_invalid_bytes() {
        let input = "event: é\ndata: ⛽ ünïcödé 🦀\n\n".as_bytes();
        let events = assert_split_invariant(input);
        assert_eq!(events[0].name, "é");
        assert_eq!(events[0].data, "⛽ ünïcödé 🦀");
        let events = parse(b"data: a\xffb\n\n");
        assert_eq!(events[0].data, "a\u{fffd}b");
    }

    #[test]
    fn over_long_event_is_dropped_and_counted() {
        let big = format!("data: {}\n\n", "x".repeat(100));
        let input = format!("data: small\n\n{big}: c\ndata: after\n\n");
        let run = |pieces: &[&[u8]]| {
            let mut parser = SseParser::with_max_event_bytes(64);
            let mut out = Vec::new();
            for p in pieces {
                feed_into(&mut parser, p, &mut out);
            }
            (out, parser.dropped_events())
        };
        let whole = run(&[input.as_bytes()]);
        let big_start = 13u64;
        let big_end = big_start + big.len() as u64;
        assert_eq!(
            whole,
            (
                vec![
                    ev("", "small", 0, 0, 13),
                    ev("", "after", big_end, big_end + 4, input.len() as u64)
                ],
                1
            )
        );
        for k in 0..=input.len() {
            let (a, b) = input.as_bytes().split_at(k);
            assert_eq!(run(&[a, b]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
        assert_eq!(run(&bytes), whole);
        // Exactly at the limit is kept: 64 bytes from `data:` to line end.
        let exact = format!("data: {}\n\n", "y".repeat(58));
        assert_eq!(run(&[exact.as_bytes()]).0.len(), 1);
        let over = format!("data: {}\n\n", "y".repeat(59));
        assert_eq!(run(&[over.as_bytes()]), (vec![], 1));
    }

    #[test]
    fn memory_stays_bounded_on_a_huge_event() {
        let limit = 4096;
        let mut parser = SseParser::with_max_event_bytes(limit);
        let line = [b'z'; 1000];
        let mut seen = 0;
        parser.feed(b"data: ", |_| seen += 1);
        for _ in 0..10_000 {
            parser.feed(&line, |_| seen += 1);
            assert!(parser.buffered_capacity() <= 2 * limit);
        }
        // Many data lines, too.
        for _ in 0..10_000 {
            parser.feed(b"\ndata: abc", |_| seen += 1);
            assert!(parser.buffered_capacity() <= 2 * limit);
        }
        assert_eq!(parser.pending_fields_start(), None);
        parser.feed(b"\n\ndata: ok\n\n", |e| {
            assert_eq!(e.data, "ok");
            seen += 1;
        });
        assert_eq!(seen, 1);
        assert_eq!(parser.dropped_events(), 1);
    }

    #[test]
    fn data_buffer_shrinks_after_a_large_event() {
        let mut parser = SseParser::new();
        let big = format!("data: {}\n\n", "q".repeat(1 << 20));
        parser.feed(big.as_bytes(), |e| assert_eq!(e.data.len(), 1 << 20));
        assert!(parser.buffered_capacity() <= 2 * KEEP_CAPACITY);
    }

    /// A direct transcription of the SDK decoder over whole lines: the
    /// reference the incremental parser is checked against.
    fn reference(input: &[u8]) -> Vec<Ev> {
        let mut out = Vec::new();
        let (mut name, mut data): (Vec<u8>, Option<Vec<u8>>) = (Vec::new(), None);
        let (mut start, mut fields_start) = (0u64, None);
        let mut at = 0usize;
        while let Some(i) = input[at..].iter().position(|&b| b == b'\r' || b == b'\n') {
            let line = &input[at..at + i];
            let mut next = at + i + 1;
            if input[at + i] == b'\r' && input.get(next) == Some(&b'\n') {
                next += 1;
            }
            if line.is_empty() {
                if data.is_some() || !name.is_empty() {
                    out.push(Ev {
                        name: String::from_utf8_lossy(&name).into_owned(),
                        data: String::from_utf8_lossy(&data.take().unwrap_or_default())
                            .into_owned(),
                        start,
                        fields_start: fields_start.unwrap(),
                        end: next as u64,
                    });
                    name.clear();
                    start = next as u64;
                }
                fields_start = None;
            } else if line[0] != b':' {
                fields_start.get_or_insert(at as u64);
                let (field, value) = match line.iter().position(|&b| b == b':') {
                    Some(c) => (&line[..c], &line[c + 1..]),
                    None => (line, &line[line.len()..]),
                };
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match field {
                    b"event" => name = value.to_vec(),
                    b"data" => match &mut data {
                        Some(d) => {
                            d.push(b'\n');
                            d.extend_from_slice(value);
                        }
                        None => data = Some(value.to_vec()),
                    },
                    _ => {}
                }
            }
            at = next;
        }
        out
    }

    #[test]
    fn matches_the_reference_decoder_on_random_input() {
        const TOKENS: &[&str] = &[
            "data:",
            "data: ",
            "data",
            "event:",
            "event: ",
            "ev",
            ":",
            ": c",
            " ",
            "x",
            "é",
            "\r",
            "\n",
            "\r\n",
            "\n\n",
            "id: 1",
            "retry: 5",
            "🦀",
            "{\"a\":1}",
        ];
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut dispatched = 0;
        for _ in 0..2000 {
            let len = rand(40);
            let input: String = (0..len).map(|_| TOKENS[rand(TOKENS.len())]).collect();
            let input = input.as_bytes();
            let expected = reference(input);
            dispatched += expected.len();
            let mut pieces = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                let (a, b) = rest.split_at(rand(6).min(rest.len()));
                pieces.push(a);
                rest = b;
            }
            assert_eq!(
                parse_pieces(&pieces),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(
            dispatched > 500,
            "the inputs exercise dispatch: {dispatched}"
        );
    }

    #[test]
    fn empty_feeds_change_nothing() {
        let input = b"data: a\r";
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        feed_into(&mut parser, input, &mut out);
        feed_into(&mut parser, b"", &mut out);
        feed_into(&mut parser, b"\r", &mut out);
        feed_into(&mut parser, b"", &mut out);
        feed_into(&mut parser, b"\n", &mut out);
        assert_eq!(out, [ev("", "a", 0, 0, 10)]);
    }
}
