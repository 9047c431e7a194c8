//! `GET /api/v2/jobs/{id}/events`: the job's live state as Server-Sent Events.

use std::sync::Arc;
use tiny_http::Request;

use super::{Call, V2Error, respond_error};
use crate::app::App;

/// Streams the job's events until its terminal status.
pub fn stream(_app: &Arc<App>, request: Request, _call: &Call<'_>) {
    respond_error(request, &V2Error::new(501, "not_implemented", "soon"));
}
