//! One JSON POST to a running tollgate, and its answer as the client saw
//! it (status, headers, body), over HTTP/1.1.
#![allow(clippy::unwrap_used)]

use serde_json::Value;

use super::tollgate::Tollgate;

/// An answer as the client saw it.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// POSTs `body` to `path` with `headers` (and an `anthropic-version` on
/// Anthropic paths).
pub async fn post(t: &Tollgate, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let mut req = client.post(format!("{}{path}", t.url())).json(body);
    if path.contains("/messages") {
        req = req.header("anthropic-version", "2023-06-01");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}
