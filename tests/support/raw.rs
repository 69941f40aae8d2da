//! A bare HTTP/1.1 client over a TCP socket: for requests an HTTP library
//! would not send as written (odd paths, malformed bodies, slow senders).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read to the end of its connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::fake_provider::first_header(&self.headers, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `head` lines (request line first, no trailing blank line) and
/// `body` with `content-length` and `connection: close`, reads the whole
/// answer (at most `timeout`).
pub async fn send(addr: &str, head: &[&str], body: &[u8], timeout: Duration) -> Response {
    parse(&send_raw(addr, head, body, timeout).await)
}

/// [`send`], the answer as it came on the wire.
pub async fn send_raw(addr: &str, head: &[&str], body: &[u8], timeout: Duration) -> Vec<u8> {
    let mut conn = request(addr, head, body).await;
    read_raw(&mut conn, timeout).await
}

/// A new connection with the request of [`send`] written on it.
async fn request(addr: &str, head: &[&str], body: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut req = head.join("\r\n");
    req.push_str(&format!(
        "\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    conn.write_all(&bytes).await.expect("write");
    conn
}

/// [`send_raw`], the answer as each read returned it (into a buffer far
/// larger than any one write of the sender, so a read ends where what had
/// arrived ends, never mid-write).
pub async fn send_reads(addr: &str, head: &[&str], body: &[u8], timeout: Duration) -> Vec<Vec<u8>> {
    let mut conn = request(addr, head, body).await;
    let mut reads = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    let all = async {
        loop {
            match conn.read(&mut buf).await.expect("read") {
                0 => break,
                n => reads.push(buf[..n].to_vec()),
            }
        }
    };
    tokio::time::timeout(timeout, all)
        .await
        .expect("the answer within the timeout");
    reads
}

/// Reads a response until the connection closes (at most `timeout`).
pub async fn read_response(conn: &mut TcpStream, timeout: Duration) -> Response {
    parse(&read_raw(conn, timeout).await)
}

async fn read_raw(conn: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    tokio::time::timeout(timeout, conn.read_to_end(&mut raw))
        .await
        .expect("the answer within the timeout")
        .expect("read");
    raw
}

/// Parses one response (its body as given by `content-length`, else all that follows).
pub fn parse(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        return Response {
            status,
            headers,
            body: dechunk(rest),
        };
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(rest.len())
        .min(rest.len());
    Response {
        status,
        headers,
        body: rest[..len].to_vec(),
    }
}

/// The payload of a chunked body (as much of it as is there).
fn dechunk(rest: &[u8]) -> Vec<u8> {
    chunks_of(rest).concat()
}

/// Each chunk of a raw chunked response (head included), as it was framed.
pub fn chunks(raw: &[u8]) -> Vec<Vec<u8>> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    chunks_of(&raw[end + 4..])
}

fn chunks_of(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(rest.len());
        body.push(rest[start..end].to_vec());
        rest = rest.get(end + 2..).unwrap_or(&[]);
    }
    body
}
