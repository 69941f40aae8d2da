//! JSONL split into lines as chunks arrive, with bounded memory per line.
//!
//! A line that lies wholly inside one chunk is handed on as a slice of that
//! chunk; only a line cut by a chunk boundary is copied, and never more
//! than `max` bytes of it: a longer line is reported once as too long and
//! its remaining bytes are skipped up to the next newline.

/// One line of a JSONL stream (numbered from 1, blank lines counted).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A complete line, without its `\n` (or `\r\n`).
    Text { number: u64, bytes: &'a [u8] },
    /// A line longer than the bound; its bytes are dropped.
    TooLong { number: u64 },
}

/// Splits a byte stream into [`Line`]s.
#[derive(Debug)]
pub(crate) struct Lines {
    /// The start of a line cut by a chunk boundary.
    partial: Vec<u8>,
    /// Lines completed so far.
    done: u64,
    /// The longest line kept, in bytes (without the newline).
    max: usize,
    /// The current line went over `max`: skip to the next newline.
    skipping: bool,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Lines {
        Lines {
            partial: Vec::new(),
            done: 0,
            max,
            skipping: false,
        }
    }

    /// Hands every line that `chunk` completes to `f`.
    pub(crate) fn feed(&mut self, chunk: &[u8], f: &mut impl FnMut(Line<'_>)) {
        let mut rest = chunk;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (segment, after) = (&rest[..at], &rest[at + 1..]);
            self.end_line(segment, f);
            rest = after;
        }
        self.extend(rest, f);
    }

    /// Hands the last line (one without a final newline) to `f`.
    pub(crate) fn finish(&mut self, f: &mut impl FnMut(Line<'_>)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, f);
        }
        self.skipping = false;
    }

    /// The line now being read ends with `segment`.
    fn end_line(&mut self, segment: &[u8], f: &mut impl FnMut(Line<'_>)) {
        if self.skipping {
            self.skipping = false;
            self.done += 1;
            return;
        }
        if self.partial.is_empty() {
            self.emit(segment, f);
        } else if self.partial.len() + segment.len() > self.max + 1 {
            self.partial.clear();
            f(Line::TooLong {
                number: self.done + 1,
            });
            self.done += 1;
        } else {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(segment);
            self.emit(&line, f);
            line.clear();
            // Keep the allocation for the next cut line.
            self.partial = line;
        }
    }

    /// `bytes` start (or continue) a line that does not end in this chunk.
    fn extend(&mut self, bytes: &[u8], f: &mut impl FnMut(Line<'_>)) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        // One byte more than the bound: room for a `\r` before the `\n`.
        if self.partial.len() + bytes.len() > self.max + 1 {
            self.partial = Vec::new();
            self.skipping = true;
            f(Line::TooLong {
                number: self.done + 1,
            });
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// A whole line: handed on, or reported as too long.
    fn emit(&mut self, line: &[u8], f: &mut impl FnMut(Line<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let number = self.done + 1;
        self.done += 1;
        if line.len() > self.max {
            f(Line::TooLong { number });
        } else {
            f(Line::Text {
                number,
                bytes: line,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `data` fed in chunks of `size`, as owned values.
    fn split(data: &[u8], size: usize, max: usize) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut lines = Lines::new(max);
        let mut f = |line: Line<'_>| match line {
            Line::Text { number, bytes } => out.push((number, Some(bytes.to_vec()))),
            Line::TooLong { number } => out.push((number, None)),
        };
        for chunk in data.chunks(size.max(1)) {
            lines.feed(chunk, &mut f);
        }
        lines.finish(&mut f);
        out
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let data = b"{\"a\":1}\r\n\n{\"b\":22}\nlast";
        let want = vec![
            (1, Some(b"{\"a\":1}".to_vec())),
            (2, Some(Vec::new())),
            (3, Some(b"{\"b\":22}".to_vec())),
            (4, Some(b"last".to_vec())),
        ];
        for size in 1..=data.len() {
            assert_eq!(split(data, size, 64), want, "chunks of {size}");
        }
        // A final newline ends the last line; it does not start another.
        assert_eq!(split(b"x\n", 1, 8), vec![(1, Some(b"x".to_vec()))]);
        assert!(split(b"", 1, 8).is_empty());
    }

    #[test]
    fn a_long_line_is_reported_once_and_skipped() {
        let data = b"short\nthis line is too long\nok\nanother long one";
        let want = vec![
            (1, Some(b"short".to_vec())),
            (2, None),
            (3, Some(b"ok".to_vec())),
            (4, None),
        ];
        for size in 1..=data.len() {
            assert_eq!(split(data, size, 8), want, "chunks of {size}");
        }
        // Exactly at the bound is kept (the `\r` does not count).
        for size in 1..=10 {
            assert_eq!(
                split(b"12345678\r\n", size, 8),
                vec![(1, Some(b"12345678".to_vec()))]
            );
            assert_eq!(split(b"123456789\r\n", size, 8), vec![(1, None)]);
            assert_eq!(split(b"123456789", size, 8), vec![(1, None)]);
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut lines = Lines::new(16);
        let mut count = 0;
        let mut f = |_: Line<'_>| count += 1;
        for _ in 0..1000 {
            lines.feed(&[b'x'; 100], &mut f);
            assert!(lines.partial.capacity() <= 17 * 2);
        }
        lines.feed(b"\n", &mut f);
        lines.finish(&mut f);
        assert_eq!(count, 1, "one report for the whole long line");
    }
}
