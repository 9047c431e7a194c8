//! The job routes: submit, list, get, workflow, cancel, and the v2 health answer.

use serde_json::json;
use std::sync::Arc;
use tiny_http::Request;

use super::{Call, V2Error, respond, respond_error};
use crate::app::App;

/// `GET /api/v2/health`.
pub fn health(_app: &Arc<App>, request: Request) {
    respond(request, 200, &json!({ "status": "healthy" }), Vec::new());
}

/// `POST /api/v2/jobs`.
pub fn submit(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}

/// `GET /api/v2/jobs`.
pub fn list(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}

/// `GET /api/v2/jobs/{id}`.
pub fn get(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}

/// `GET /api/v2/jobs/{id}/workflow`.
pub fn workflow(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}

/// `POST /api/v2/jobs/{id}/cancel`.
pub fn cancel(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}
