//! Which request paths are the Files and Batch APIs, and which call each is.
//!
//! Two entry points, as ingress sees a path: [`ApiPath::parse`] takes the
//! path relative to the provider's API root (ingress's `rest`, after an
//! optional `/{provider}` prefix: `/v1/batches`, or `/batches` for a client
//! whose base URL already ends in `/v1`), and [`split_path`] takes a whole
//! normalised request path and also returns the prefix before `/v1/…`
//! (`/openai`), like [`crate::dialect::anthropic::batch::object_path_prefix`].

/// A path of the Files or Batch API (ids are single path segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiPath<'a> {
    /// `/v1/files`: upload (POST), list (GET).
    Files,
    /// `/v1/files/{id}`: retrieve (GET), delete (DELETE).
    File(&'a str),
    /// `/v1/files/{id}/content`: the file's bytes (GET); a batch's output
    /// and error files are read here.
    FileContent(&'a str),
    /// `/v1/batches`: create (POST), list (GET).
    Batches,
    /// `/v1/batches/{id}`: retrieve (GET).
    Batch(&'a str),
    /// `/v1/batches/{id}/cancel`: cancel (POST).
    BatchCancel(&'a str),
}

/// A call of the Files or Batch API: a path with its method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// `POST /v1/files` (multipart): read the batch input file, reserve.
    UploadFile,
    /// `GET /v1/files`.
    ListFiles,
    /// `GET /v1/files/{id}`.
    RetrieveFile(&'a str),
    /// `DELETE /v1/files/{id}`.
    DeleteFile(&'a str),
    /// `GET /v1/files/{id}/content`: results to settle from, when the file
    /// is a batch's output or error file.
    FileContent(&'a str),
    /// `POST /v1/batches`.
    CreateBatch,
    /// `GET /v1/batches`.
    ListBatches,
    /// `GET /v1/batches/{id}`: settle when the status is terminal.
    RetrieveBatch(&'a str),
    /// `POST /v1/batches/{id}/cancel`.
    CancelBatch(&'a str),
}

impl<'a> ApiPath<'a> {
    /// The API path `rest` is (relative to the API root, with or without
    /// `/v1`; a query is ignored); `None` for any other path.
    pub fn parse(rest: &'a str) -> Option<ApiPath<'a>> {
        let rest = rest.split_once('?').map_or(rest, |(p, _)| p);
        let rest = match rest.strip_prefix("/v1") {
            Some(tail) if tail.starts_with('/') => tail,
            _ => rest,
        };
        let mut segments = rest.strip_prefix('/')?.split('/');
        let collection = segments.next()?;
        let id = segments.next();
        let action = segments.next();
        // Empty segments (`/v1/files/`, `//content`) are no path of these APIs.
        if segments.next().is_some() || id == Some("") || action == Some("") {
            return None;
        }
        match (collection, id, action) {
            ("files", None, None) => Some(ApiPath::Files),
            ("files", Some(id), None) => Some(ApiPath::File(id)),
            ("files", Some(id), Some("content")) => Some(ApiPath::FileContent(id)),
            ("batches", None, None) => Some(ApiPath::Batches),
            ("batches", Some(id), None) => Some(ApiPath::Batch(id)),
            ("batches", Some(id), Some("cancel")) => Some(ApiPath::BatchCancel(id)),
            _ => None,
        }
    }

    /// The call this path is with `method` (`"GET"`, `"POST"`,
    /// `"DELETE"`); `None` for a method the API does not serve there.
    pub fn call(self, method: &str) -> Option<Call<'a>> {
        match (self, method) {
            (ApiPath::Files, "POST") => Some(Call::UploadFile),
            (ApiPath::Files, "GET") => Some(Call::ListFiles),
            (ApiPath::File(id), "GET") => Some(Call::RetrieveFile(id)),
            (ApiPath::File(id), "DELETE") => Some(Call::DeleteFile(id)),
            (ApiPath::FileContent(id), "GET") => Some(Call::FileContent(id)),
            (ApiPath::Batches, "POST") => Some(Call::CreateBatch),
            (ApiPath::Batches, "GET") => Some(Call::ListBatches),
            (ApiPath::Batch(id), "GET") => Some(Call::RetrieveBatch(id)),
            (ApiPath::BatchCancel(id), "POST") => Some(Call::CancelBatch(id)),
            _ => None,
        }
    }
}

/// A whole normalised request path (no query) split into the prefix before
/// `/v1/files` or `/v1/batches` and the API path:
/// `"/openai/v1/batches/batch_1"` → `("/openai", ApiPath::Batch("batch_1"))`.
/// The prefix is `""` or starts with `/`; `None` when the path is neither
/// API.
pub fn split_path(path: &str) -> Option<(&str, ApiPath<'_>)> {
    // The first occurrence that parses: a provider prefix is a name, ids
    // are single segments after it.
    ["/v1/files", "/v1/batches"]
        .into_iter()
        .flat_map(|marker| path.match_indices(marker))
        .filter_map(|(at, _)| {
            let (prefix, rest) = path.split_at(at);
            Some((prefix, ApiPath::parse(rest)?))
        })
        .min_by_key(|(prefix, _)| prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_with_and_without_v1() {
        for (rest, want) in [
            ("/v1/files", Some(ApiPath::Files)),
            ("/files", Some(ApiPath::Files)),
            ("/v1/files/file-1", Some(ApiPath::File("file-1"))),
            (
                "/files/file-1/content",
                Some(ApiPath::FileContent("file-1")),
            ),
            (
                "/v1/files/file-1/content?x=1",
                Some(ApiPath::FileContent("file-1")),
            ),
            ("/v1/batches", Some(ApiPath::Batches)),
            ("/v1/batches?limit=2&after=b", Some(ApiPath::Batches)),
            ("/batches/batch_1", Some(ApiPath::Batch("batch_1"))),
            (
                "/v1/batches/batch_1/cancel",
                Some(ApiPath::BatchCancel("batch_1")),
            ),
            // Not these APIs, or not a shape they have.
            ("/v1/files/", None),
            ("/v1/files//content", None),
            ("/v1/files/f/other", None),
            ("/v1/files/f/content/x", None),
            ("/v1/batches/b/results", None),
            ("/v1/batchesque", None),
            ("/v1/messages/batches", None),
            ("/v1/chat/completions", None),
            ("/v1", None),
            ("", None),
            ("files", None),
        ] {
            assert_eq!(ApiPath::parse(rest), want, "{rest}");
        }
    }

    #[test]
    fn calls_by_method() {
        fn call<'a>(rest: &'a str, method: &str) -> Option<Call<'a>> {
            ApiPath::parse(rest).and_then(|p| p.call(method))
        }
        assert_eq!(call("/v1/files", "POST"), Some(Call::UploadFile));
        assert_eq!(call("/v1/files", "GET"), Some(Call::ListFiles));
        assert_eq!(call("/v1/files/f", "GET"), Some(Call::RetrieveFile("f")));
        assert_eq!(call("/v1/files/f", "DELETE"), Some(Call::DeleteFile("f")));
        assert_eq!(
            call("/v1/files/f/content", "GET"),
            Some(Call::FileContent("f"))
        );
        assert_eq!(call("/v1/batches", "POST"), Some(Call::CreateBatch));
        assert_eq!(call("/v1/batches", "GET"), Some(Call::ListBatches));
        assert_eq!(call("/v1/batches/b", "GET"), Some(Call::RetrieveBatch("b")));
        assert_eq!(
            call("/v1/batches/b/cancel", "POST"),
            Some(Call::CancelBatch("b"))
        );
        for (rest, method) in [
            ("/v1/files", "DELETE"),
            ("/v1/files/f/content", "POST"),
            ("/v1/batches/b", "DELETE"),
            ("/v1/batches/b/cancel", "GET"),
            ("/v1/batches", "get"),
        ] {
            assert_eq!(call(rest, method), None, "{method} {rest}");
        }
    }

    #[test]
    fn whole_paths_and_their_prefix() {
        for (path, want) in [
            ("/v1/files", Some(("", ApiPath::Files))),
            ("/openai/v1/files", Some(("/openai", ApiPath::Files))),
            (
                "/openai/v1/batches/batch_1/cancel",
                Some(("/openai", ApiPath::BatchCancel("batch_1"))),
            ),
            (
                "/openrouter/v1/files/f/content",
                Some(("/openrouter", ApiPath::FileContent("f"))),
            ),
            ("/a/b/v1/batches", Some(("/a/b", ApiPath::Batches))),
            // An id that looks like the API is still an id.
            (
                "/v1/files/v1/content",
                Some(("", ApiPath::FileContent("v1"))),
            ),
            ("/openai/files", None),
            ("/v1/messages/batches", None),
            ("/v1/batches/b/results", None),
            ("/x/v1/filesx", None),
        ] {
            assert_eq!(split_path(path), want, "{path}");
        }
    }
}
