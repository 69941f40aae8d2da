//! Writing responses to the client: the helpers every stage that answers
//! calls down into.

use pingora::proxy::Session;

/// The client was given up on before its answer was complete: its
/// connection is closed after this request instead of kept alive.
pub fn give_up_on_client(session: &mut Session) {
    session.set_keepalive(None);
}

/// Sends a complete response (header, then the whole body); false when
/// the client has gone.
pub async fn send_whole(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: bytes::Bytes,
) -> bool {
    send_with_tail(session, header, body, None).await
}

/// [`send_whole`] with a `tail` after the body (its framing counts both),
/// written on its own rather than copied onto the body.
pub async fn send_with_tail(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: bytes::Bytes,
    tail: Option<bytes::Bytes>,
) -> bool {
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
        || session
            .write_response_body(Some(body), tail.is_none())
            .await
            .is_err()
    {
        return false;
    }
    match tail {
        Some(tail) => session.write_response_body(Some(tail), true).await.is_ok(),
        None => true,
    }
}
