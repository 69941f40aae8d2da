//! OpenAI Files API: uploads (multipart) and the batches' result files.

use super::*;

pub(super) struct StoredFile {
    pub(super) id: String,
    pub(super) filename: String,
    pub(super) purpose: String,
    pub(super) created_at: u64,
    pub(super) data: Vec<u8>,
}

impl StoredFile {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "object": "file", "bytes": self.data.len(),
            "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed",
            "expires_at": (self.purpose == "batch").then_some(self.created_at + FILE_TTL_S),
            "status_details": null,
        })
    }
}

impl Store {
    // === OpenAI Files ===

    pub(super) fn file(&self, id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.id == id)
    }

    pub(super) fn file_create(&mut self, call: &Call, body: &[u8], now: u64) -> Reply {
        let bad = |message: &str, param: &str| {
            openai_error(call, StatusCode::BAD_REQUEST, message, Some(param), None)
        };
        let parts = match multipart(&call.headers, body) {
            Ok(parts) => parts,
            Err(message) => return bad(&message, "file"),
        };
        let field = |name: &str| parts.iter().find(|p| p.name == name);
        let Some(purpose) = field("purpose").map(|p| String::from_utf8_lossy(&p.data).into_owned())
        else {
            return bad("Missing required parameter: 'purpose'.", "purpose");
        };
        let Some(file) = field("file") else {
            return bad("Missing required parameter: 'file'.", "file");
        };
        let filename = file.filename.clone().unwrap_or_else(|| "file".to_owned());
        if purpose == "batch" && !filename.ends_with(".jsonl") {
            return bad("Invalid file format for Batch API. Must be .jsonl", "file");
        }
        let stored = StoredFile {
            id: format!("file-{}", token()),
            filename,
            purpose,
            created_at: now / 1000,
            data: file.data.clone(),
        };
        let reply = openai_json(call, &stored.to_json());
        self.files.push(stored);
        reply
    }

    pub(super) fn file_list(&self, call: &Call, query: &Query) -> Reply {
        let limit = match query.limit(10_000, 10_000) {
            Ok(limit) => limit,
            Err(message) => {
                return openai_error(call, StatusCode::BAD_REQUEST, &message, Some("limit"), None)
            }
        };
        let mut files: Vec<&StoredFile> = self
            .files
            .iter()
            .filter(|f| query.get("purpose").is_none_or(|p| p == f.purpose))
            .collect();
        if query.get("order") != Some("asc") {
            files.reverse();
        }
        openai_list(
            call,
            &files,
            query.get("after"),
            limit,
            |f| f.id.as_str(),
            |f| f.to_json(),
        )
    }

    pub(super) fn file_get(&self, call: &Call, id: &str) -> Reply {
        match self.file(id) {
            Some(file) => openai_json(call, &file.to_json()),
            None => file_not_found(call, id),
        }
    }

    pub(super) fn file_content(&self, call: &Call, id: &str) -> Reply {
        match self.file(id) {
            Some(file) => openai_headers(
                call,
                bytes_reply("application/octet-stream", file.data.clone()),
            ),
            None => file_not_found(call, id),
        }
    }

    pub(super) fn file_delete(&mut self, call: &Call, id: &str) -> Reply {
        if self.file(id).is_none() {
            return file_not_found(call, id);
        }
        self.files.retain(|f| f.id != id);
        openai_json(call, &json!({"id": id, "object": "file", "deleted": true}))
    }
}

/// One field of a `multipart/form-data` body.
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// A small `multipart/form-data` reader (the SDK's file upload).
fn multipart(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Part>, String> {
    let content_type = header_str(headers, CONTENT_TYPE.as_str()).unwrap_or_default();
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .filter(|_| content_type.starts_with("multipart/form-data"))
        .ok_or("The request must be multipart/form-data with a boundary.")?
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let separator = [b"\r\n".as_slice(), &delimiter].concat();
    let malformed = || "The multipart body is malformed.".to_owned();
    let mut at = memchr::memmem::find(body, &delimiter).ok_or_else(malformed)? + delimiter.len();
    let mut parts = Vec::new();
    while !body.get(at..).ok_or_else(malformed)?.starts_with(b"--") {
        let start = at + 2;
        let end = start
            + memchr::memmem::find(body.get(start..).ok_or_else(malformed)?, &separator)
                .ok_or_else(malformed)?;
        let part = &body[start..end];
        let split = memchr::memmem::find(part, b"\r\n\r\n").ok_or_else(malformed)?;
        let head = String::from_utf8_lossy(&part[..split]);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or_default();
        let param = |key: &str| {
            disposition.split(';').map(str::trim).find_map(|p| {
                p.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_owned())
            })
        };
        parts.push(Part {
            name: param("name").unwrap_or_default(),
            filename: param("filename"),
            data: part[split + 4..].to_vec(),
        });
        at = end + separator.len();
    }
    Ok(parts)
}

pub(super) fn file_not_found(call: &Call, id: &str) -> Reply {
    openai_error(
        call,
        StatusCode::NOT_FOUND,
        &format!("No such File object: {id}"),
        Some("id"),
        None,
    )
}
