//! Upstream answers compressed although tollgate asked for plain bytes
//! (forward drops the client's `accept-encoding`): decoded before the tap,
//! so metering reads the answer and the client gets it whole and marked as
//! decoded (an error event tollgate adds then is in the same coding as the
//! rest). A coding pingora cannot decode is passed through untouched and
//! left unmetered (its usage is bounded like any unreadable usage).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::ResponseCompressionCtx;

/// How an upstream body reaches the tap and the client.
pub enum Body {
    /// No content coding: as it comes.
    Plain,
    /// Decoded on the way; `done` once the decoder gave its last bytes.
    Decoded {
        ctx: Box<ResponseCompressionCtx>,
        done: bool,
    },
    /// A coding that cannot be decoded: as it comes, unread.
    Opaque,
}

impl Body {
    /// The body of the answer `upstream` heads; for a decoded body, its
    /// header is rewritten to match (no `content-encoding`, no length).
    pub fn of(upstream: &mut ResponseHeader) -> Body {
        let coded = upstream
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if !coded {
            return Body::Plain;
        }
        let mut ctx = ResponseCompressionCtx::new(0, true, false);
        if !ctx.will_decompress(upstream) {
            return Body::Opaque;
        }
        ctx.response_header_filter(upstream, false);
        Body::Decoded {
            ctx: Box::new(ctx),
            done: false,
        }
    }

    /// Whether the tap can read it.
    pub fn readable(&self) -> bool {
        !matches!(self, Body::Opaque)
    }

    /// An upstream chunk as the tap and the client see it (empty while the
    /// decoder needs more; empty for good after a decoding error, which then
    /// shows as a body cut short).
    pub fn chunk(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Body::Decoded { ctx, .. } => ctx
                .response_body_filter(Some(&chunk), false)
                .unwrap_or_default(),
            Body::Plain | Body::Opaque => chunk,
        }
    }

    /// At the upstream body's end: the decoder's last bytes, once.
    pub fn finish(&mut self) -> Bytes {
        match self {
            Body::Decoded { ctx, done } if !*done => {
                *done = true;
                ctx.response_body_filter(None, true).unwrap_or_default()
            }
            _ => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(coding: Option<&str>) -> Result<ResponseHeader, Box<dyn std::error::Error>> {
        let mut h = ResponseHeader::build(200, None)?;
        h.insert_header("content-type", "text/event-stream")?;
        h.insert_header("content-length", "10")?;
        if let Some(c) = coding {
            h.insert_header("content-encoding", c)?;
        }
        Ok(h)
    }

    #[test]
    fn a_gzip_body_is_decoded_at_any_split() -> Result<(), Box<dyn std::error::Error>> {
        let plain = b"event: ping\ndata: {}\n\n".repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain)?;
        let gz = gz.finish()?;
        for split in [1, 7, gz.len() / 2, gz.len()] {
            let mut h = header(Some("gzip"))?;
            let mut body = Body::of(&mut h);
            assert!(body.readable());
            assert!(h.headers.get("content-encoding").is_none());
            assert!(h.headers.get("content-length").is_none());
            let mut out = Vec::new();
            for part in gz.chunks(split) {
                out.extend_from_slice(&body.chunk(Bytes::copy_from_slice(part)));
            }
            out.extend_from_slice(&body.finish());
            assert!(body.finish().is_empty(), "once");
            assert_eq!(out, plain, "split {split}");
        }
        Ok(())
    }

    #[test]
    fn plain_and_unknown_codings_pass_untouched() -> Result<(), Box<dyn std::error::Error>> {
        for (coding, readable) in [
            (None, true),
            (Some("identity"), true),
            (Some("x-magic"), false),
        ] {
            let mut h = header(coding)?;
            let mut body = Body::of(&mut h);
            assert_eq!(body.readable(), readable, "{coding:?}");
            assert_eq!(&body.chunk(Bytes::from_static(b"abc"))[..], b"abc");
            assert!(body.finish().is_empty());
            assert!(h.headers.get("content-length").is_some());
        }
        Ok(())
    }
}
