//! Comfy API v2 on the gateway's own port: the `/api/v2/...` routes Comfy-Org's SDKs speak.
//!
//! `server::routes` hands every path under `/api/v2` to [`handle`], which checks the bearer key
//! (`API_KEYS`), finds the route in [`ROUTES`] and calls its handler. Answers and errors are the
//! v2 contract's own (`{"error": {"code", "message", "details"}}`, [`V2Error`]), not the
//! gateway's dialect. A v2 job *is* a gateway job: the handlers submit to the same
//! [`crate::job::Engine`] as `POST /jobs`, and translate its state, progress and events.
//!
//! Submodules: `error` (the envelope), `jobs` (the job routes), `view` (a gateway job as the
//! contract's `Job` object), `events` (the SSE stream), `idempotency` (Stripe-style keys, kept
//! on disk), `checks` (what a workflow must pass before it is queued), `doc` (the v2 part of
//! `/openapi.json`), and the asset library's routes: `assets`, `multipart`, `range`.

mod assets;
mod checks;
pub mod doc;
mod error;
mod events;
mod jobs;
mod multipart;
mod range;
mod view;

pub use error::V2Error;

use serde_json::Value;
use std::sync::Arc;
use tiny_http::{Header, Request};

use crate::app::App;
use crate::server::FrontDoor;
use crate::server::framing::BodyLimit;
use crate::server::{auth, reply};

/// The prefix every v2 path starts with.
pub const PREFIX: &str = "/api/v2";

/// The largest body a request may send: `MAX_UPLOAD_BYTES` for an asset upload (streamed to
/// disk), `MAX_BODY_BYTES` for everything else (read into memory).
pub fn body_limit(config: &crate::config::Config, method: &str, path: &str) -> BodyLimit {
    if method.eq_ignore_ascii_case("POST") && path == UPLOAD_PATH {
        BodyLimit {
            bytes: config.max_upload_bytes,
            variable: "MAX_UPLOAD_BYTES",
        }
    } else {
        BodyLimit {
            bytes: config.max_body_bytes,
            variable: "MAX_BODY_BYTES",
        }
    }
}

/// The path of asset uploads.
const UPLOAD_PATH: &str = "/api/v2/assets";

/// Whether `path` belongs to the v2 surface.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/api/v2/")
}

/// What a handler learns of its request besides the request itself.
pub struct Call<'a> {
    /// The path's `{variables}`, in order.
    pub params: Vec<String>,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// The front door (for refusals that must close the connection).
    pub door: &'a FrontDoor,
    /// The bearer token the request carried (scopes idempotency keys), if any.
    pub token: Option<String>,
}

impl Call<'_> {
    /// The path variable at `index` (empty when absent).
    pub fn param(&self, index: usize) -> &str {
        self.params.get(index).map_or("", String::as_str)
    }
}

/// One method on one v2 path: what [`handle`] calls, and what the OpenAPI document lists.
pub struct Route {
    /// `GET`, `POST`, `HEAD`, `DELETE`.
    pub method: &'static str,
    /// The full path, with `{name}` for each variable segment.
    pub path: &'static str,
    /// The contract's `operationId`.
    pub operation_id: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Whether it answers without a key when `API_KEYS` is set.
    pub public: bool,
    /// Success statuses (the OpenAPI document lists them with the route).
    pub answers: &'static [u16],
    /// Error codes it answers with, and their statuses (401 `unauthorized` is implied unless
    /// `public`: see [`Route::error_codes`]).
    pub errors: &'static [(u16, &'static str)],
    handler: fn(&Arc<App>, Request, &Call<'_>),
}

impl Route {
    /// Every error code it can answer with, and its status: 401 `unauthorized` included unless
    /// it is public.
    pub fn error_codes(&self) -> Vec<(u16, &'static str)> {
        let mut codes = self.errors.to_vec();
        if !self.public {
            codes.push(UNAUTHORIZED);
        }
        codes
    }

    fn matches(&self, path: &str) -> Option<Vec<String>> {
        let want: Vec<&str> = self.path.split('/').filter(|s| !s.is_empty()).collect();
        let got: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if want.len() != got.len() {
            return None;
        }
        let mut values = Vec::new();
        for (pattern, segment) in want.iter().zip(&got) {
            if pattern.starts_with('{') {
                values.push(crate::percent::decode(segment, false));
            } else if pattern != segment {
                return None;
            }
        }
        Some(values)
    }
}

const UNAUTHORIZED: (u16, &str) = (401, "unauthorized");
const NOT_FOUND: (u16, &str) = (404, "not_found");

/// Every v2 route: dispatch walks this table, and so does the OpenAPI document.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/api/v2/health",
        operation_id: "getHealthV2",
        summary: "Whether the v2 surface serves (never needs a key)",
        public: true,
        answers: &[200],
        errors: &[],
        handler: |app, request, _| jobs::health(app, request),
    },
    // ---- jobs -----------------------------------------------------------------------------
    Route {
        method: "POST",
        path: "/api/v2/jobs",
        operation_id: "postJobs",
        summary: "Submit an API-format workflow: saved, queued, run on the least-loaded ComfyUI",
        public: false,
        answers: &[201],
        errors: &[
            (400, "invalid_request"),
            (409, "idempotency_conflict"),
            (413, "payload_too_large"),
            (422, "invalid_workflow"),
            (422, "workflow_format_ui"),
            (422, "missing_asset"),
            (422, "idempotency_key_reuse"),
            (422, "metadata_invalid"),
            (429, "queue_full"),
            (503, "upstream_unreachable"),
        ],
        handler: jobs::submit,
    },
    Route {
        method: "GET",
        path: "/api/v2/jobs",
        operation_id: "listJobs",
        summary: "Jobs, newest first; filters status, metadata[key]=value; limit and cursor",
        public: false,
        answers: &[200],
        errors: &[
            (400, "invalid_request"),
            (400, "invalid_cursor"),
            (400, "invalid_metadata_filter"),
        ],
        handler: jobs::list,
    },
    Route {
        method: "GET",
        path: "/api/v2/jobs/{id}",
        operation_id: "getJob",
        summary: "A job: status, progress, outputs so far, error",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: jobs::get,
    },
    Route {
        method: "GET",
        path: "/api/v2/jobs/{id}/workflow",
        operation_id: "getJobWorkflow",
        summary: "The API-format graph the job ran",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: jobs::workflow,
    },
    Route {
        method: "POST",
        path: "/api/v2/jobs/{id}/cancel",
        operation_id: "cancelJob",
        summary: "Cancel a job (a finished job is returned as it is)",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: jobs::cancel,
    },
    Route {
        method: "GET",
        path: "/api/v2/jobs/{id}/events",
        operation_id: "getJobEvents",
        summary: "The job's live events (SSE): status, progress, preview, output, log",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: events::stream,
    },
    // ---- assets (the asset library) ----------------------------------------------------------
    Route {
        method: "POST",
        path: "/api/v2/assets",
        operation_id: "postAssets",
        summary: "Upload an asset (multipart), deduplicated by blake3",
        public: false,
        answers: &[200, 201],
        errors: &[
            (400, "invalid_request"),
            (409, "hash_mismatch"),
            (409, "asset_conflict"),
            (409, "idempotency_conflict"),
            (413, "payload_too_large"),
            (422, "idempotency_key_reuse"),
            (500, "internal"),
        ],
        handler: assets::upload,
    },
    Route {
        method: "POST",
        path: "/api/v2/assets/from-hash",
        operation_id: "assetFromHash",
        summary: "Mint an asset over bytes the gateway already has",
        public: false,
        answers: &[200, 201],
        errors: &[
            (400, "invalid_request"),
            (404, "blob_not_found"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
        ],
        handler: assets::from_hash,
    },
    Route {
        method: "HEAD",
        path: "/api/v2/assets/by-hash/{hash}",
        operation_id: "headAssetByHash",
        summary: "Whether the gateway has a blob with this hash",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: assets::head_by_hash,
    },
    Route {
        method: "GET",
        path: "/api/v2/assets/{id}",
        operation_id: "getAsset",
        summary: "An asset's record, with a fresh content URL",
        public: false,
        answers: &[200],
        errors: &[NOT_FOUND],
        handler: assets::get,
    },
    Route {
        method: "GET",
        path: "/api/v2/assets/{id}/content",
        operation_id: "getAssetContent",
        summary: "An asset's bytes (HTTP Range: 206, 416)",
        public: false,
        answers: &[200, 206, 302],
        errors: &[
            NOT_FOUND,
            (416, "range_not_satisfiable"),
            (502, "storage_failed"),
        ],
        handler: assets::content,
    },
    Route {
        method: "HEAD",
        path: "/api/v2/assets/{id}/content",
        operation_id: "headAssetContent",
        summary: "An asset's size, type and ETag without its bytes (a gateway addition)",
        public: false,
        answers: &[200, 206, 302],
        errors: &[
            NOT_FOUND,
            (416, "range_not_satisfiable"),
            (502, "storage_failed"),
        ],
        handler: assets::content,
    },
    Route {
        method: "DELETE",
        path: "/api/v2/assets/{id}",
        operation_id: "deleteAsset",
        summary: "Delete an asset: its record, and its bytes when no other asset uses them",
        public: false,
        answers: &[204],
        errors: &[NOT_FOUND, (500, "internal")],
        handler: assets::delete,
    },
];

/// Answers one request under `/api/v2`: the key, then the route and the method.
pub fn handle(app: &Arc<App>, door: &FrontDoor, request: Request, path: &str, query: &str) {
    let method = request.method().as_str().to_ascii_uppercase();
    let matching: Vec<(&Route, Vec<String>)> = ROUTES
        .iter()
        .filter_map(|route| Some((route, route.matches(path)?)))
        .collect();
    let serves = |route: &Route| route.method == method;
    let public = matching
        .iter()
        .any(|(route, _)| route.public && serves(route));
    if !public {
        if let Err(error) = auth::check(&request, &app.config.api_keys) {
            let v2 = V2Error::new(401, "unauthorized", error.message);
            return respond_error(request, &v2);
        }
    }
    if matching.is_empty() {
        return respond_error(request, &V2Error::not_found(format!("path {path}")));
    }
    let Some((route, params)) = matching.iter().find(|(route, _)| serves(route)) else {
        let mut allow: Vec<&str> = matching.iter().map(|(route, _)| route.method).collect();
        allow.dedup();
        let error = V2Error::new(
            405,
            "method_not_allowed",
            format!("{path} answers {}, not {method}", allow.join(", ")),
        );
        return respond(
            request,
            405,
            &error.to_body(),
            vec![reply::header("Allow", &allow.join(", "))],
        );
    };
    let call = Call {
        params: params.clone(),
        query,
        door,
        token: reply::header_value(&request, "Authorization").map(|value| value.trim().to_string()),
    };
    (route.handler)(app, request, &call);
}

/// Sends `body` as JSON with `status` and `headers`.
pub fn respond(request: Request, status: u16, body: &Value, headers: Vec<Header>) {
    reply::json_with(request, status, body, headers);
}

/// Sends a v2 error: the envelope, `Retry-After` when it has one, `WWW-Authenticate` for 401.
pub fn respond_error(request: Request, error: &V2Error) {
    let mut headers = Vec::new();
    if let Some(seconds) = error.retry_after {
        headers.push(reply::header("Retry-After", &seconds.to_string()));
    }
    if error.status == 401 {
        headers.push(reply::header("WWW-Authenticate", "Bearer"));
    }
    respond(request, error.status, &error.to_body(), headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(method: &str, path: &str) -> Option<(&'static str, Vec<String>)> {
        ROUTES
            .iter()
            .filter(|route| route.method == method)
            .find_map(|route| Some((route.operation_id, route.matches(path)?)))
    }

    #[test]
    fn paths_route_to_their_operations() {
        assert_eq!(
            routed("GET", "/api/v2/health").map(|r| r.0),
            Some("getHealthV2")
        );
        assert_eq!(
            routed("GET", "/api/v2/jobs/abc/events"),
            Some(("getJobEvents", vec!["abc".to_string()]))
        );
        assert_eq!(
            routed("POST", "/api/v2/jobs").map(|r| r.0),
            Some("postJobs")
        );
        assert_eq!(
            routed("HEAD", "/api/v2/assets/by-hash/blake3%3Aab"),
            Some(("headAssetByHash", vec!["blake3:ab".to_string()]))
        );
        assert!(routed("GET", "/api/v2/nope").is_none());
        assert!(owns("/api/v2") && owns("/api/v2/jobs") && !owns("/api/v20"));
    }

    #[test]
    fn the_table_has_one_row_per_method_and_path() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {}",
                route.method,
                route.path
            );
            assert!(route.path.starts_with(PREFIX));
        }
    }
}
