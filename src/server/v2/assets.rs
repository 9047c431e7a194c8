//! The asset routes: upload (multipart, streamed into the blob store while blake3 is computed),
//! mint from a known hash, probe a hash, read a record, serve its bytes (with HTTP Range), and
//! delete. Records and blobs are [`crate::assets::AssetStore`]'s; this module only speaks HTTP.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tiny_http::{Header, Request, Response, StatusCode};

use super::multipart::{self, Multipart};
use super::range::RangeAnswer;
use super::{Call, V2Error, respond, respond_error};
use crate::api::{ApiError, ErrorCode};
use crate::app::App;
use crate::assets::{AssetError, AssetStore, Minted, NewAsset};
use crate::blobs::{BlobError, BlobHash};
use crate::idempotency::{self, Begin};
use crate::server::reply;

/// The longest a text field of an upload form (`file_path`, `content_type`, a tag...) may be.
const FIELD_LIMIT: usize = 4096;

/// The most parts an upload form may have.
const PARTS_LIMIT: usize = 64;

/// The most tags an asset may carry.
const TAGS_LIMIT: usize = 32;

fn store(app: &App) -> &AssetStore {
    &app.assets
}

/// `POST /api/v2/assets`: a `multipart/form-data` upload with a `file` part and the fields
/// `file_path`, `content_type` (not trusted: the type comes from the bytes), `expected_hash`
/// and `tags` (repeated). `201` for new bytes, `200` when the gateway already had them.
///
/// An `Idempotency-Key` is honoured as for jobs, the request being what was uploaded (the
/// bytes' hash, `file_path` and `tags`): known only once the body has arrived, so a retry that
/// overlaps the first is told `409 idempotency_conflict` once its own bytes are in.
pub fn upload(app: &Arc<App>, mut request: Request, call: &Call<'_>) {
    let limit = app.config.max_upload_bytes;
    let key = reply::header_value(&request, "Idempotency-Key").map(str::to_string);
    if key
        .as_deref()
        .is_some_and(|key| !idempotency::valid_key(key))
    {
        let error = V2Error::invalid_request(format!(
            "Idempotency-Key must be 1 to {} printable ASCII characters",
            idempotency::MAX_KEY_LEN
        ));
        return match drain(&mut request, upload_bound(limit)) {
            Drained::TooLong => refuse_too_large(request, call, limit),
            Drained::All | Drained::Broken => respond_error(request, &error),
        };
    }
    let answer = receive_upload(app, &mut request, limit, |received| {
        idempotent(app, call, key.as_deref(), received)
    });
    match answer {
        Ok(Answer::Minted((minted, created_new), claim)) => {
            let status = if created_new { 201 } else { 200 };
            let body = minted
                .asset
                .to_json(&app.config.public_base_url, Some(created_new));
            if let Some(claim) = claim {
                if let Err(e) = claim.record(status, &body) {
                    log::error!(
                        "asset {}: its Idempotency-Key could not be saved: {e}",
                        minted.asset.id
                    );
                }
            }
            respond(request, status, &body, Vec::new());
        }
        Ok(Answer::Replay(status, body)) => {
            let headers = vec![reply::header("Idempotency-Replayed", "true")];
            respond(request, status, &body, headers);
        }
        Err(Refusal::TooLarge) => refuse_too_large(request, call, limit),
        // What is left of the body is read here, through a small buffer: tiny_http would set
        // aside as much memory as the declared length to discard it.
        Err(Refusal::Error(error)) => match drain(&mut request, upload_bound(limit)) {
            Drained::TooLong => refuse_too_large(request, call, limit),
            // A client that went away gets its answer written into the void: nothing is lost.
            Drained::All | Drained::Broken => respond_error(request, &error),
        },
    }
}

/// The most bytes an upload body may hold: the file, plus its form fields.
fn upload_bound(limit: u64) -> u64 {
    limit.saturating_add((PARTS_LIMIT * FIELD_LIMIT * 2) as u64)
}

/// 413 for an upload over the limit; the rest of the body is not read, the connection closes.
fn refuse_too_large(request: Request, call: &Call<'_>, limit: u64) {
    let error = ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the upload is larger than MAX_UPLOAD_BYTES ({limit} bytes)"),
    )
    .with_details(serde_json::json!({ "limit": limit }));
    call.door.refuse(request, &error, &[]);
}

/// What [`drain`] found.
enum Drained {
    /// The body ended within the bound.
    All,
    /// The body goes on past the bound.
    TooLong,
    /// Reading it failed (the client went away).
    Broken,
}

/// Reads and drops what is left of the request's body, at most `bound` bytes.
fn drain(request: &mut Request, bound: u64) -> Drained {
    let mut rest = request.as_reader().take(bound.saturating_add(1));
    match io::copy(&mut rest, &mut io::sink()) {
        Ok(drained) if drained > bound => Drained::TooLong,
        Ok(_) => Drained::All,
        Err(_) => Drained::Broken,
    }
}

/// What an upload that went through answers.
enum Answer<'a> {
    /// A minted (or found) asset, whether its bytes were new, and the key to record it under.
    Minted((Minted, bool), Option<idempotency::Claim<'a>>),
    /// The answer recorded for the same key and the same upload.
    Replay(u16, Value),
}

/// What an upload is, for its `Idempotency-Key`: known once its bytes have arrived.
struct Received<'a> {
    hash: BlobHash,
    file_path: Option<&'a str>,
    tags: &'a [String],
}

/// What the key says to do with an upload that arrived.
enum KeyVerdict<'a> {
    /// No key, or a new one: mint (and record under the claim).
    Go(Option<idempotency::Claim<'a>>),
    /// Same key, same upload: the recorded answer.
    Replay(u16, Value),
}

/// Looks the upload's `Idempotency-Key` up (see [`upload`]).
fn idempotent<'a>(
    app: &'a App,
    call: &Call<'_>,
    key: Option<&str>,
    received: &Received<'_>,
) -> Result<KeyVerdict<'a>, V2Error> {
    let Some(key) = key else {
        return Ok(KeyVerdict::Go(None));
    };
    let request = serde_json::json!({
        "upload": received.hash,
        "file_path": received.file_path,
        "tags": received.tags,
    });
    match app.idempotency.begin(call.token.as_deref(), key, &request) {
        Begin::Fresh(claim) => Ok(KeyVerdict::Go(Some(claim))),
        Begin::Replay(recorded) => Ok(KeyVerdict::Replay(recorded.status, recorded.body)),
        Begin::Reused => Err(V2Error::new(
            422,
            "idempotency_key_reuse",
            "this Idempotency-Key was used with a different request",
        )),
        Begin::InFlight => Err(V2Error::new(
            409,
            "idempotency_conflict",
            "a request with this Idempotency-Key is still being answered; retry shortly",
        )
        .retry_after(1)),
        Begin::Unreadable(_) => Err(V2Error::unreadable_key()),
    }
}

/// Why an upload stored nothing.
enum Refusal {
    TooLarge,
    Error(V2Error),
}

impl From<V2Error> for Refusal {
    fn from(error: V2Error) -> Refusal {
        Refusal::Error(error)
    }
}

/// The form's text fields.
#[derive(Default)]
struct Fields {
    file_path: Option<String>,
    expected_hash: Option<BlobHash>,
    tags: Vec<String>,
}

impl Fields {
    fn take(&mut self, name: &str, value: String) -> Result<(), V2Error> {
        match name {
            "file_path" => self.file_path = Some(checked_name(value)?),
            "expected_hash" => self.expected_hash = Some(parse_hash("expected_hash", &value)?),
            "tags" if self.tags.len() >= TAGS_LIMIT => {
                return Err(V2Error::invalid_request(format!(
                    "an asset has at most {TAGS_LIMIT} tags"
                )));
            }
            "tags" => self.tags.push(value.trim().to_string()),
            // `content_type` and unknown fields: what a file is comes from its bytes.
            _ => {}
        }
        Ok(())
    }
}

/// Reads the form, streaming its file into the blob store, asks `key` what to do with it, and
/// mints the asset. Returns it and whether its bytes were new, or the recorded answer.
fn receive_upload<'a>(
    app: &'a App,
    request: &mut Request,
    limit: u64,
    key: impl FnOnce(&Received<'_>) -> Result<KeyVerdict<'a>, V2Error>,
) -> Result<Answer<'a>, Refusal> {
    let content_type = reply::header_value(request, "Content-Type").unwrap_or("");
    let Some(boundary) = multipart::boundary(content_type) else {
        return Err(V2Error::invalid_request(
            "an upload is a multipart/form-data body with a boundary (curl -F file=@photo.png)",
        )
        .into());
    };
    let blobs = store(app).blobs();
    // The whole body is bounded: the file by `limit`, the fields by their own limits.
    let body = request.as_reader().take(upload_bound(limit));
    let mut form = Multipart::new(body, &boundary);
    let mut fields = Fields::default();
    let mut file: Option<(crate::blobs::PutOutcome, Option<String>)> = None;
    let mut parts = 0;
    while let Some(part) = form.next_part().map_err(malformed)? {
        parts += 1;
        if parts > PARTS_LIMIT {
            return Err(V2Error::invalid_request(format!(
                "an upload form has at most {PARTS_LIMIT} parts"
            ))
            .into());
        }
        if part.name != "file" {
            let value = form.read_text(FIELD_LIMIT).map_err(malformed)?;
            fields.take(&part.name, value)?;
            continue;
        }
        if file.is_some() {
            return Err(V2Error::invalid_request("an upload has one file part").into());
        }
        let outcome = blobs
            .put(&mut form, limit, fields.expected_hash.as_ref())
            .map_err(|e| match e {
                BlobError::TooLarge { .. } => Refusal::TooLarge,
                other => Refusal::Error(blob_error(other)),
            })?;
        file = Some((outcome, part.filename));
    }
    let Some((outcome, filename)) = file else {
        return Err(V2Error::invalid_request("the upload form has no \"file\" part").into());
    };
    // An expected hash sent after the file is checked now; new bytes it refuses are dropped.
    if let Some(expected) = fields.expected_hash.filter(|hash| *hash != outcome.hash) {
        if outcome.created_new {
            // Unless a concurrent upload of the same bytes has minted an asset over them.
            if let Err(e) = store(app).remove_unreferenced_blob(&outcome.hash) {
                log::warn!("removing the refused upload {}: {e}", outcome.hash);
            }
        }
        return Err(blob_error(BlobError::HashMismatch {
            expected,
            actual: outcome.hash,
        })
        .into());
    }
    let file_path = match fields.file_path {
        Some(path) => Some(path),
        None => filename.map(checked_name).transpose()?,
    }
    .filter(|path| !path.is_empty());
    let received = Received {
        hash: outcome.hash,
        file_path: file_path.as_deref(),
        tags: &fields.tags,
    };
    let claim = match key(&received) {
        Ok(KeyVerdict::Go(claim)) => claim,
        Ok(KeyVerdict::Replay(status, body)) => return Ok(Answer::Replay(status, body)),
        Err(error) => {
            if outcome.created_new {
                // Bytes this refused request brought, unless another upload uses them already.
                if let Err(e) = store(app).remove_unreferenced_blob(&outcome.hash) {
                    log::warn!("removing the refused upload {}: {e}", outcome.hash);
                }
            }
            return Err(error.into());
        }
    };
    let minted = store(app)
        .mint(NewAsset {
            hash: outcome.hash,
            file_path,
            tags: fields.tags,
        })
        .map_err(|e| match e {
            // The bytes were there when the upload ended, and an asset's deletion removed them
            // before this one was recorded.
            AssetError::BlobNotFound(hash) => V2Error::new(
                409,
                "asset_conflict",
                format!("the blob {hash} was deleted while this upload finished; send it again"),
            )
            .retry_after(1),
            other => asset_error(other),
        })?;
    Ok(Answer::Minted((minted, outcome.created_new), claim))
}

/// A multipart body that does not parse (or a client that went away while sending it).
fn malformed(e: io::Error) -> Refusal {
    Refusal::Error(read_error(&e))
}

fn read_error(e: &io::Error) -> V2Error {
    if e.kind() == io::ErrorKind::InvalidData {
        V2Error::invalid_request(format!("the upload form is malformed: {e}"))
    } else {
        V2Error::invalid_request(format!("reading the upload: {e}"))
    }
}

fn blob_error(e: BlobError) -> V2Error {
    match e {
        BlobError::HashMismatch { expected, actual } => V2Error::new(
            409,
            "hash_mismatch",
            format!("the bytes received hash to {actual}, not the expected {expected}; nothing was stored"),
        )
        .with_details(serde_json::json!({ "expected": expected, "actual": actual })),
        BlobError::TooLarge { limit } => V2Error::new(
            413,
            "payload_too_large",
            format!("the upload is larger than MAX_UPLOAD_BYTES ({limit} bytes)"),
        ),
        BlobError::Read(e) => read_error(&e),
        BlobError::Write(e) => V2Error::internal(format!("storing the upload on disk: {e}")),
    }
}

fn asset_error(e: AssetError) -> V2Error {
    match e {
        AssetError::BlobNotFound(hash) => V2Error::new(
            404,
            "blob_not_found",
            format!("no blob {hash} the gateway may mint from"),
        ),
        AssetError::Io(e) => V2Error::internal(format!("writing the asset record: {e}")),
    }
}

/// A client's name for an asset: at most 1024 bytes, no control characters.
fn checked_name(name: String) -> Result<String, V2Error> {
    let name = name.trim().to_string();
    if name.len() > 1024 || name.chars().any(char::is_control) {
        return Err(V2Error::invalid_request(
            "file_path must be at most 1024 bytes without control characters",
        ));
    }
    Ok(name)
}

fn parse_hash(field: &str, text: &str) -> Result<BlobHash, V2Error> {
    text.trim().parse().map_err(|e| {
        V2Error::invalid_request(format!("{field}: {e}"))
            .with_details(serde_json::json!({ "field": field }))
    })
}

/// The body of `POST /api/v2/assets/from-hash` (fields the contract may add later are
/// ignored, as its additive-changes rule asks).
#[derive(Deserialize)]
struct FromHash {
    hash: String,
    #[serde(default)]
    file_path: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /api/v2/assets/from-hash`: mints an asset over bytes the gateway already has; `201`,
/// or `200` with the identical asset that already existed; `404 blob_not_found` otherwise.
pub fn from_hash(app: &Arc<App>, mut request: Request, _call: &Call<'_>) {
    let answer = read_from_hash(&mut request, app.config.max_body_bytes)
        .and_then(|new| store(app).mint(new).map_err(asset_error));
    match answer {
        Ok(minted) => {
            let status = if minted.existing { 200 } else { 201 };
            let body = minted
                .asset
                .to_json(&app.config.public_base_url, Some(false));
            respond(request, status, &body, Vec::new());
        }
        Err(error) => respond_error(request, &error),
    }
}

fn read_from_hash(request: &mut Request, limit: u64) -> Result<NewAsset, V2Error> {
    let body = reply::read_json_body(request, limit).map_err(|e| V2Error::from_gateway(&e))?;
    let parsed: FromHash = serde_json::from_slice(&body).map_err(|e| {
        V2Error::invalid_request(format!(
            "the body must be {{\"hash\": \"blake3:...\", \"file_path\"?, \"tags\"?}}: {e}"
        ))
    })?;
    if parsed.tags.len() > TAGS_LIMIT {
        return Err(V2Error::invalid_request(format!(
            "an asset has at most {TAGS_LIMIT} tags"
        )));
    }
    Ok(NewAsset {
        hash: parse_hash("hash", &parsed.hash)?,
        file_path: parsed
            .file_path
            .map(checked_name)
            .transpose()?
            .filter(|path| !path.is_empty()),
        tags: parsed.tags,
    })
}

/// `HEAD /api/v2/assets/by-hash/{hash}`: `200` when the gateway has the bytes, else `404`.
pub fn head_by_hash(app: &Arc<App>, request: Request, call: &Call<'_>) {
    let known = call
        .param(0)
        .parse::<BlobHash>()
        .is_ok_and(|hash| store(app).can_mint(&hash));
    let status = if known { 200 } else { 404 };
    if let Err(e) = request.respond(Response::empty(status)) {
        log::debug!("client left before the answer was sent: {e}");
    }
}

/// `GET /api/v2/assets/{id}`: the record, with a fresh content URL.
pub fn get(app: &Arc<App>, request: Request, call: &Call<'_>) {
    match store(app).get(call.param(0)) {
        Some(asset) => {
            let body: Value = asset.to_json(&app.config.public_base_url, None);
            respond(request, 200, &body, Vec::new());
        }
        None => respond_error(request, &not_found(call.param(0))),
    }
}

fn not_found(id: &str) -> V2Error {
    V2Error::not_found(format!("asset {id:?}"))
}

/// `DELETE /api/v2/assets/{id}`: removes the record, and the bytes when no other asset and no
/// unfinished job uses them; `204`.
pub fn delete(app: &Arc<App>, request: Request, call: &Call<'_>) {
    // A waiting or running job's input stays until the job no longer needs it.
    let needed_by_a_job = |hash: &BlobHash| {
        app.jobs
            .unfinished()
            .iter()
            .any(|job| job.plan().inputs.iter().any(|input| input.hash == *hash))
    };
    match store(app).delete(call.param(0), needed_by_a_job) {
        Ok(Some(_)) => {
            if let Err(e) = request.respond(Response::empty(204)) {
                log::debug!("client left before the answer was sent: {e}");
            }
        }
        Ok(None) => respond_error(request, &not_found(call.param(0))),
        Err(e) => respond_error(
            request,
            &V2Error::internal(format!("deleting the asset record: {e}")),
        ),
    }
}

/// `GET /api/v2/assets/{id}/content`: the bytes, streamed from disk, one `Range` honoured
/// (`206`, or `416` past the end). An output kept in remote storage (Supabase) is a `302` to
/// a fresh URL there.
pub fn content(app: &Arc<App>, request: Request, call: &Call<'_>) {
    let Some(asset) = store(app).get(call.param(0)) else {
        return respond_error(request, &not_found(call.param(0)));
    };
    let local = store(app).local_path(&asset).or_else(|| {
        let key = asset.storage_key.as_deref()?;
        app.local.as_ref()?.image_path(key)
    });
    let file = local.map(File::open).and_then(Result::ok);
    if let Some(file) = file {
        return serve_file(request, file, &asset.content_type, &asset.hash);
    }
    let remote = asset
        .storage_key
        .as_deref()
        .and_then(|key| app.storage.fresh_url(key));
    match remote {
        Some(Ok(url)) => {
            let response = Response::empty(302)
                .with_header(reply::header("Location", &url))
                .with_header(reply::header("Cache-Control", "no-store"));
            if let Err(e) = request.respond(response) {
                log::debug!("client left before the redirect was sent: {e}");
            }
        }
        Some(Err(e)) => respond_error(
            request,
            &V2Error::new(
                502,
                "storage_failed",
                format!("asking storage for a URL: {e}"),
            ),
        ),
        None => respond_error(
            request,
            &V2Error::new(
                404,
                "not_found",
                format!("the bytes of asset {:?} are no longer stored", asset.id),
            ),
        ),
    }
}

/// Sends `file` whole or the one range the request asks for.
fn serve_file(request: Request, mut file: File, content_type: &str, hash: &BlobHash) {
    let size = match file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => {
            return respond_error(
                request,
                &V2Error::internal(format!("reading the asset: {e}")),
            );
        }
    };
    let etag = format!("\"{}\"", hash.hex());
    // A range is only for the version the client has (If-Range with our ETag, or none).
    let same_version =
        reply::header_value(&request, "If-Range").is_none_or(|tag| tag.trim() == etag);
    let range_header = reply::header_value(&request, "Range").filter(|_| same_version);
    let answer = RangeAnswer::for_header(range_header, size);
    let mut headers: Vec<Header> = vec![
        reply::header("Accept-Ranges", "bytes"),
        reply::header("ETag", &etag),
        reply::header("X-Content-Type-Options", "nosniff"),
        reply::header("Cache-Control", "private, max-age=3600"),
    ];
    if let Some(content_range) = answer.content_range(size) {
        headers.push(reply::header("Content-Range", &content_range));
    }
    let (status, start, len) = match answer {
        RangeAnswer::Full => (200, 0, size),
        RangeAnswer::Partial { start, end } => (206, start, end - start + 1),
        RangeAnswer::Unsatisfiable => {
            let error = V2Error::new(
                416,
                "range_not_satisfiable",
                format!("the asset has {size} bytes; the range asks for none of them"),
            );
            return respond(request, 416, &error.to_body(), headers);
        }
    };
    if let Err(e) = file.seek(SeekFrom::Start(start)) {
        return respond_error(
            request,
            &V2Error::internal(format!("reading the asset: {e}")),
        );
    }
    headers.push(reply::header("Content-Type", content_type));
    let Ok(length) = usize::try_from(len) else {
        return respond_error(
            request,
            &V2Error::internal("the asset is too large to serve"),
        );
    };
    let response = Response::new(
        StatusCode(status),
        headers,
        file.take(len),
        Some(length),
        None,
    );
    if let Err(e) = request.respond(response) {
        log::debug!("client left during an asset download: {e}");
    }
}
