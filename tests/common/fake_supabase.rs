//! A fake Supabase project for tests: Storage and PostgREST on 127.0.0.1, in memory, speaking
//! the exchanges captured from the real services (every Storage error is HTTP 400 with the real
//! status as a string in `statusCode`; PostgREST errors are `{code, details, hint, message}`;
//! the API gateway answers a missing or wrong `apikey` with 401).
//!
//! It records every request, and can be told to fail: [`FakeSupabase::fail_next`] answers the
//! next matching requests with a scripted status and body, and [`FakeSupabase::set_down`] makes
//! it unreachable. To be unreachable for real, clients talk to a small TCP relay in front of the
//! tiny_http server: while down, the relay closes every connection without answering (and cuts
//! the ones already open), so a client sees a connection error, never an HTTP answer.
//!
//! Starts with a public bucket `images` and the table `generations` (the gateway's schema, with
//! its `id` primary key and `unique (job_id, image_index)`).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine;
use comfyui_gateway::storage::RetryPolicy;
use comfyui_gateway::storage::supabase::{SupabaseOptions, SupabaseStorage};
use serde_json::{Value, json};

/// Which requests a scripted failure applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST`/`PUT /storage/v1/object/{bucket}/{path}`
    Upload,
    /// `POST /storage/v1/object/sign/{bucket}/{path}`
    Sign,
    /// `POST /rest/v1/{table}`
    Insert,
    /// `GET /storage/v1/bucket/{id}`
    Bucket,
    /// Any request.
    Any,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, e.g. `/rest/v1/generations?on_conflict=job_id,image_index`.
    pub url: String,
    /// Headers with lowercase names, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }

    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An object in a bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredObject {
    /// The bytes uploaded.
    pub bytes: Vec<u8>,
    /// The upload's `Content-Type`.
    pub content_type: String,
    /// The upload's `cache-control`, served back on public downloads.
    pub cache_control: Option<String>,
    id: String,
}

struct Bucket {
    public: bool,
    objects: BTreeMap<String, StoredObject>,
    /// The bucket's file size limit in bytes: larger uploads get 413 `EntityTooLarge`.
    file_size_limit: Option<usize>,
}

struct Table {
    columns: &'static [&'static str],
    not_null: &'static [&'static str],
    unique: &'static [&'static [&'static str]],
    rows: Vec<Value>,
}

struct ScriptedFailure {
    route: Route,
    remaining: usize,
    status: u16,
    body: String,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    tables: BTreeMap<String, Table>,
    requests: Vec<RecordedRequest>,
    failures: VecDeque<ScriptedFailure>,
    tokens: BTreeMap<String, (String, String)>,
    down: bool,
    dropped_connections: usize,
}

/// The relay's open connections, so going down can cut them.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<Vec<(u64, TcpStream)>>,
}

impl Connections {
    fn add(&self, stream: &TcpStream) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let clone = stream.try_clone().ok()?;
        lock(&self.open).push((id, clone));
        Some(id)
    }

    fn remove(&self, id: u64) {
        lock(&self.open).retain(|(n, _)| *n != id);
    }

    fn cut_all(&self) {
        for (_, stream) in lock(&self.open).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A running fake Supabase project; dropping it shuts it down.
pub struct FakeSupabase {
    state: Arc<Mutex<State>>,
    connections: Arc<Connections>,
    addr: SocketAddr,
    key: String,
    stop: Arc<AtomicBool>,
    server: Arc<tiny_http::Server>,
    relay: Option<JoinHandle<()>>,
    handler: Option<JoinHandle<()>>,
}

impl FakeSupabase {
    /// Starts the fake on an ephemeral port with a public `images` bucket and an empty
    /// `generations` table.
    pub fn start() -> FakeSupabase {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0").expect("binding 127.0.0.1:0 for the fake"),
        );
        let upstream = server
            .server_addr()
            .to_ip()
            .expect("the fake listens on TCP");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake's relay");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let key = fake_service_key();

        let mut state = State::default();
        state.buckets.insert(
            "images".into(),
            Bucket {
                public: true,
                objects: BTreeMap::new(),
                file_size_limit: None,
            },
        );
        state
            .tables
            .insert("generations".into(), generations_table());
        let state = Arc::new(Mutex::new(state));
        let connections = Arc::new(Connections::default());
        let stop = Arc::new(AtomicBool::new(false));

        let relay = {
            let (state, connections, stop) = (state.clone(), connections.clone(), stop.clone());
            thread::spawn(move || relay(listener, upstream, state, connections, stop))
        };
        let handler = {
            let (state, server, key) = (state.clone(), server.clone(), key.clone());
            thread::spawn(move || {
                for request in server.incoming_requests() {
                    handle(request, &state, &key);
                }
            })
        };
        FakeSupabase {
            state,
            connections,
            addr,
            key,
            stop,
            server,
            relay: Some(relay),
            handler: Some(handler),
        }
    }

    /// The project URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service-role key the fake accepts (a JWT-looking string).
    pub fn key(&self) -> String {
        self.key.clone()
    }

    /// Answers the next `times` requests matching `route` with `status` and `body` (JSON), before
    /// any other check. Failures queue up in the order they were scripted.
    pub fn fail_next(&self, route: Route, times: usize, status: u16, body: impl Into<String>) {
        lock(&self.state).failures.push_back(ScriptedFailure {
            route,
            remaining: times,
            status,
            body: body.into(),
        });
    }

    /// Down: every connection is closed without an answer, open ones are cut. Up: serves again.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
        if down {
            self.connections.cut_all();
        }
    }

    /// How many connections were closed unanswered while down.
    pub fn dropped_connections(&self) -> usize {
        lock(&self.state).dropped_connections
    }

    /// Adds a bucket (replacing one of the same name).
    pub fn create_bucket(&self, id: &str, public: bool) {
        lock(&self.state).buckets.insert(
            id.into(),
            Bucket {
                public,
                objects: BTreeMap::new(),
                file_size_limit: None,
            },
        );
    }

    /// Sets (or, with `None`, lifts) a bucket's file size limit: Storage then refuses larger
    /// uploads with `statusCode` "413", `EntityTooLarge`, as a real project does.
    pub fn set_file_size_limit(&self, bucket: &str, limit: Option<usize>) {
        if let Some(bucket) = lock(&self.state).buckets.get_mut(bucket) {
            bucket.file_size_limit = limit;
        }
    }

    /// Every request received so far (requests made while down never arrive).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Every stored object, keyed `{bucket}/{path}`.
    pub fn objects(&self) -> BTreeMap<String, StoredObject> {
        let state = lock(&self.state);
        let mut all = BTreeMap::new();
        for (bucket_id, bucket) in &state.buckets {
            for (path, object) in &bucket.objects {
                all.insert(format!("{bucket_id}/{path}"), object.clone());
            }
        }
        all
    }

    /// The rows of the `generations` table.
    pub fn rows(&self) -> Vec<Value> {
        self.rows_of("generations")
    }

    /// The rows of `table` (empty if there is no such table).
    pub fn rows_of(&self, table: &str) -> Vec<Value> {
        lock(&self.state)
            .tables
            .get(table)
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakeSupabase {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.connections.cut_all();
        // Wake the relay's blocking accept so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
        self.server.unblock();
        if let Some(handler) = self.handler.take() {
            let _ = handler.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn fake_service_key() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(br#"{"iss":"supabase","ref":"fake","role":"service_role"}"#);
    let signature = b64.encode(comfyui_gateway::ids::new_uuid());
    format!("{header}.{claims}.{signature}")
}

fn generations_table() -> Table {
    Table {
        columns: &[
            "id",
            "job_id",
            "prompt_id",
            "workflow",
            "image_index",
            "storage_key",
            "url",
            "width",
            "height",
            "bytes",
            "kind",
            "content_type",
            "seed",
            "params",
            "created_at",
        ],
        // As the README's CREATE TABLE (and ALTER TABLE) leave it: width and height may be null
        // (a sound has neither); kind and content_type have defaults.
        not_null: &[
            "id",
            "job_id",
            "workflow",
            "image_index",
            "storage_key",
            "url",
            "bytes",
            "kind",
            "content_type",
        ],
        unique: &[&["id"], &["job_id", "image_index"]],
        rows: Vec::new(),
    }
}

// ----- the relay: how the fake goes down for real -----

fn relay(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<Connections>,
    stop: Arc<AtomicBool>,
) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = client else { continue };
        {
            let mut state = lock(&state);
            if state.down {
                state.dropped_connections += 1;
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let Some(id) = connections.add(&client) else {
            continue;
        };
        let connections = connections.clone();
        thread::spawn(move || {
            pipe(client, server);
            connections.remove(id);
        });
    }
}

/// Copies bytes both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Both);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

// ----- request handling -----

/// An answer: status, JSON or raw body, extra headers.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: String,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string().into_bytes(),
            content_type: "application/json; charset=utf-8".into(),
            headers: Vec::new(),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: Vec::new(),
            content_type: String::new(),
            headers: Vec::new(),
        }
    }
}

/// Storage's error shape: always HTTP 400, the real status as a string.
fn storage_error(status: &str, error: &str, message: &str, code: &str) -> Reply {
    Reply::json(
        400,
        json!({"statusCode": status, "error": error, "message": message, "code": code}),
    )
}

fn no_such_bucket() -> Reply {
    storage_error(
        "404",
        "Bucket not found",
        "Bucket not found",
        "NoSuchBucket",
    )
}

fn no_such_key() -> Reply {
    storage_error("404", "not_found", "Object not found", "NoSuchKey")
}

/// PostgREST's error shape.
fn postgrest_error(status: u16, code: &str, details: Value, hint: Value, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"code": code, "details": details, "hint": hint, "message": message}),
    )
}

/// What a request is, from its method and path.
enum Endpoint {
    Upload {
        bucket: String,
        path: String,
        replace: bool,
    },
    Sign {
        bucket: String,
        path: String,
    },
    SignedDownload {
        bucket: String,
        path: String,
    },
    PublicDownload {
        bucket: String,
        path: String,
    },
    GetBucket(String),
    CreateBucket,
    Insert(String),
    Unknown,
}

impl Endpoint {
    fn route(&self) -> Route {
        match self {
            Endpoint::Upload { .. } => Route::Upload,
            Endpoint::Sign { .. } => Route::Sign,
            Endpoint::Insert(_) => Route::Insert,
            Endpoint::GetBucket(_) => Route::Bucket,
            _ => Route::Any,
        }
    }

    fn is_storage(&self) -> bool {
        !matches!(self, Endpoint::Insert(_) | Endpoint::Unknown)
    }
}

fn classify(method: &str, path: &str) -> Endpoint {
    let split = |rest: &str| -> Option<(String, String)> {
        let (bucket, path) = rest.split_once('/')?;
        Some((
            comfyui_gateway::percent::decode(bucket, false),
            comfyui_gateway::percent::decode(path, false),
        ))
    };
    if let Some(rest) = path.strip_prefix("/storage/v1/") {
        let endpoint = match (method, rest) {
            ("POST", r) if r.starts_with("object/sign/") => {
                split(&r[12..]).map(|(bucket, path)| Endpoint::Sign { bucket, path })
            }
            ("GET", r) if r.starts_with("object/sign/") => {
                split(&r[12..]).map(|(bucket, path)| Endpoint::SignedDownload { bucket, path })
            }
            ("GET", r) if r.starts_with("object/public/") => {
                split(&r[14..]).map(|(bucket, path)| Endpoint::PublicDownload { bucket, path })
            }
            ("POST" | "PUT", r) if r.starts_with("object/") => {
                split(&r[7..]).map(|(bucket, path)| Endpoint::Upload {
                    bucket,
                    path,
                    replace: method == "PUT",
                })
            }
            ("GET", r) if r.starts_with("bucket/") => Some(Endpoint::GetBucket(
                comfyui_gateway::percent::decode(&r[7..], false),
            )),
            ("POST", "bucket") => Some(Endpoint::CreateBucket),
            _ => None,
        };
        return endpoint.unwrap_or(Endpoint::Unknown);
    }
    match (method, path.strip_prefix("/rest/v1/")) {
        ("POST", Some(table)) if !table.is_empty() && !table.contains('/') => {
            Endpoint::Insert(comfyui_gateway::percent::decode(table, false))
        }
        _ => Endpoint::Unknown,
    }
}

fn handle(mut request: tiny_http::Request, state: &Mutex<State>, key: &str) {
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let recorded = RecordedRequest {
        method: request.method().as_str().to_string(),
        url: request.url().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect(),
        body,
    };
    let reply = {
        let mut state = lock(state);
        state.requests.push(recorded.clone());
        answer(&mut state, &recorded, key)
    };
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    let mut headers = reply.headers;
    if !reply.content_type.is_empty() {
        headers.push(("Content-Type".into(), reply.content_type));
    }
    for (name, value) in headers {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response = response.with_header(header);
        }
    }
    let _ = request.respond(response);
}

fn answer(state: &mut State, request: &RecordedRequest, key: &str) -> Reply {
    let (path, query) = request.url.split_once('?').unwrap_or((&request.url, ""));
    let endpoint = classify(&request.method, path);
    if let Some(reply) = scripted_failure(state, endpoint.route()) {
        return reply;
    }
    match &endpoint {
        // Downloads are what public and signed URLs are for: no key needed.
        Endpoint::PublicDownload { bucket, path } => return public_download(state, bucket, path),
        Endpoint::SignedDownload { bucket, path } => {
            return signed_download(state, bucket, path, query);
        }
        _ => {}
    }
    if let Some(reply) = check_api_key(request, key) {
        return reply;
    }
    if let Some(reply) = check_authorization(request, key, &endpoint) {
        return reply;
    }
    match endpoint {
        Endpoint::Upload {
            bucket,
            path,
            replace,
        } => upload(state, request, &bucket, &path, replace),
        Endpoint::Sign { bucket, path } => sign(state, request, &bucket, &path),
        Endpoint::GetBucket(id) => get_bucket(state, &id),
        Endpoint::CreateBucket => create_bucket(state, request),
        Endpoint::Insert(table) => insert(state, request, &table, query),
        Endpoint::Unknown | Endpoint::PublicDownload { .. } | Endpoint::SignedDownload { .. } => {
            Reply::json(
                404,
                json!({"message": "no Route matched with those values"}),
            )
        }
    }
}

fn scripted_failure(state: &mut State, route: Route) -> Option<Reply> {
    let index = state
        .failures
        .iter()
        .position(|f| f.remaining > 0 && (f.route == Route::Any || f.route == route))?;
    let failure = &mut state.failures[index];
    failure.remaining -= 1;
    let reply = Reply {
        status: failure.status,
        body: failure.body.clone().into_bytes(),
        content_type: "application/json; charset=utf-8".into(),
        headers: Vec::new(),
    };
    if failure.remaining == 0 {
        state.failures.remove(index);
    }
    Some(reply)
}

/// The API gateway in front of every service checks `apikey` first.
fn check_api_key(request: &RecordedRequest, key: &str) -> Option<Reply> {
    match request.header("apikey") {
        None => Some(Reply::json(
            401,
            json!({"message": "No API key found in request"}),
        )),
        Some(given) if given != key => Some(Reply::json(
            401,
            json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."}),
        )),
        Some(_) => None,
    }
}

/// Then each service checks the JWT in `Authorization` its own way.
fn check_authorization(request: &RecordedRequest, key: &str, endpoint: &Endpoint) -> Option<Reply> {
    let authorization = request.header("authorization");
    let valid = authorization == Some(format!("Bearer {key}").as_str());
    match (endpoint.is_storage(), authorization, valid) {
        (_, _, true) => None,
        (true, None, _) => Some(storage_error(
            "400",
            "Error",
            "headers must have required property 'authorization'",
            "InvalidRequest",
        )),
        (true, Some(_), _) => Some(storage_error(
            "403",
            "Unauthorized",
            "signature verification failed",
            "AccessDenied",
        )),
        // PostgREST without a JWT runs as the anon role, which may not write the table.
        (false, None, _) => Some(postgrest_error(
            401,
            "42501",
            Value::Null,
            Value::Null,
            "permission denied for table generations",
        )),
        (false, Some(_), _) => Some(postgrest_error(
            401,
            "PGRST301",
            Value::Null,
            Value::Null,
            "JWSError JWSInvalidSignature",
        )),
    }
}

// ----- Storage -----

/// Storage's own rule for object names; braces, for one, are refused.
fn valid_object_name(path: &str) -> bool {
    !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_alphanumeric() || "_/!-.*'() &$@=;:+,?".contains(c))
}

fn upload(
    state: &mut State,
    request: &RecordedRequest,
    bucket_id: &str,
    path: &str,
    replace: bool,
) -> Reply {
    let Some(bucket) = state.buckets.get_mut(bucket_id) else {
        return no_such_bucket();
    };
    if !valid_object_name(path) {
        return storage_error(
            "400",
            "InvalidKey",
            &format!("Invalid key: {path}"),
            "InvalidKey",
        );
    }
    if bucket
        .file_size_limit
        .is_some_and(|limit| request.body.len() > limit)
    {
        return storage_error(
            "413",
            "Payload too large",
            "The object exceeded the maximum allowed size",
            "EntityTooLarge",
        );
    }
    let upsert = request.header("x-upsert") == Some("true");
    let existing = bucket.objects.get(path).map(|o| o.id.clone());
    let id = match (&existing, replace, upsert) {
        (Some(_), false, false) => {
            return storage_error(
                "409",
                "Duplicate",
                "The resource already exists",
                "KeyAlreadyExists",
            );
        }
        (None, true, _) => return no_such_key(),
        (Some(id), _, _) => id.clone(),
        (None, false, _) => comfyui_gateway::ids::new_uuid(),
    };
    let object = StoredObject {
        bytes: request.body.clone(),
        content_type: request
            .header("content-type")
            .unwrap_or("text/plain;charset=UTF-8")
            .to_string(),
        cache_control: request.header("cache-control").map(str::to_string),
        id: id.clone(),
    };
    bucket.objects.insert(path.to_string(), object);
    Reply::json(200, json!({"Key": format!("{bucket_id}/{path}"), "Id": id}))
}

fn sign(state: &mut State, request: &RecordedRequest, bucket_id: &str, path: &str) -> Reply {
    let Some(bucket) = state.buckets.get(bucket_id) else {
        return no_such_bucket();
    };
    if !request.json()["expiresIn"].is_u64() {
        return storage_error(
            "400",
            "Error",
            "body must have required property 'expiresIn'",
            "InvalidRequest",
        );
    }
    if !bucket.objects.contains_key(path) {
        return no_such_key();
    }
    let token = format!("token-{}", comfyui_gateway::ids::new_uuid());
    state
        .tokens
        .insert(token.clone(), (bucket_id.to_string(), path.to_string()));
    Reply::json(
        200,
        json!({"signedURL": format!("/object/sign/{bucket_id}/{path}?token={token}")}),
    )
}

fn download(object: &StoredObject, cache_control: &str) -> Reply {
    Reply {
        status: 200,
        body: object.bytes.clone(),
        content_type: object.content_type.clone(),
        headers: vec![("cache-control".into(), cache_control.into())],
    }
}

fn public_download(state: &State, bucket_id: &str, path: &str) -> Reply {
    let object = state
        .buckets
        .get(bucket_id)
        .filter(|bucket| bucket.public)
        .and_then(|bucket| bucket.objects.get(path));
    match object {
        Some(object) => download(
            object,
            object.cache_control.as_deref().unwrap_or("no-cache"),
        ),
        None => no_such_key(),
    }
}

fn signed_download(state: &State, bucket_id: &str, path: &str, query: &str) -> Reply {
    let token = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or_default();
    let granted = state
        .tokens
        .get(token)
        .is_some_and(|(b, p)| b == bucket_id && p == path);
    if !granted {
        return storage_error("400", "InvalidJWT", "invalid signature", "InvalidJWT");
    }
    match state
        .buckets
        .get(bucket_id)
        .and_then(|b| b.objects.get(path))
    {
        Some(object) => download(object, "no-cache"),
        None => no_such_key(),
    }
}

fn get_bucket(state: &State, id: &str) -> Reply {
    match state.buckets.get(id) {
        Some(bucket) => Reply::json(
            200,
            json!({
                "id": id, "name": id, "owner": "", "public": bucket.public,
                "file_size_limit": null, "allowed_mime_types": null,
                "created_at": "2026-11-24T04:49:01.705Z", "updated_at": "2026-11-24T04:49:01.705Z"
            }),
        ),
        None => no_such_bucket(),
    }
}

fn create_bucket(state: &mut State, request: &RecordedRequest) -> Reply {
    let body = request.json();
    let Some(id) = body["id"].as_str().or(body["name"].as_str()) else {
        return storage_error(
            "400",
            "Error",
            "body must have required property 'name'",
            "InvalidRequest",
        );
    };
    if state.buckets.contains_key(id) {
        return storage_error(
            "409",
            "Duplicate",
            "The resource already exists",
            "BucketAlreadyExists",
        );
    }
    let public = body["public"].as_bool().unwrap_or(false);
    state.buckets.insert(
        id.to_string(),
        Bucket {
            public,
            objects: BTreeMap::new(),
            file_size_limit: body["file_size_limit"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok()),
        },
    );
    Reply::json(200, json!({"name": id}))
}

// ----- PostgREST -----

/// What `Prefer` and `on_conflict` ask of an insert.
struct InsertOptions {
    resolution: Option<String>,
    representation: bool,
    on_conflict: Option<Vec<String>>,
}

fn insert_options(request: &RecordedRequest, query: &str) -> InsertOptions {
    let prefer: Vec<String> = request
        .header("prefer")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .collect();
    let on_conflict = query.split('&').find_map(|pair| {
        pair.strip_prefix("on_conflict=").map(|cols| {
            comfyui_gateway::percent::decode(cols, false)
                .split(',')
                .map(str::to_string)
                .collect()
        })
    });
    InsertOptions {
        resolution: prefer
            .iter()
            .find_map(|p| p.strip_prefix("resolution=").map(str::to_string)),
        representation: prefer.iter().any(|p| p == "return=representation"),
        on_conflict,
    }
}

fn insert(state: &mut State, request: &RecordedRequest, name: &str, query: &str) -> Reply {
    let Some(table) = state.tables.get_mut(name) else {
        return postgrest_error(
            404,
            "PGRST205",
            Value::Null,
            json!("Perhaps you meant the table 'public.generations'"),
            &format!("Could not find the table 'public.{name}' in the schema cache"),
        );
    };
    let rows = match request.json() {
        Value::Array(rows) => rows,
        row @ Value::Object(_) => vec![row],
        _ => {
            return postgrest_error(
                400,
                "PGRST102",
                Value::Null,
                Value::Null,
                "Empty or invalid json",
            );
        }
    };
    let options = insert_options(request, query);
    // One statement: either every row lands or none does.
    let mut staged = table.rows.clone();
    let mut affected = Vec::new();
    for row in rows {
        let row = match complete_row(table, name, row) {
            Ok(row) => row,
            Err(reply) => return reply,
        };
        match apply_row(table, name, &mut staged, row, &options) {
            Ok(Some(row)) => affected.push(row),
            Ok(None) => {}
            Err(reply) => return reply,
        }
    }
    table.rows = staged;
    if options.representation {
        Reply::json(201, Value::Array(affected))
    } else {
        Reply::empty(201)
    }
}

/// Checks a row's columns and types, and fills in the defaults.
fn complete_row(table: &Table, name: &str, row: Value) -> Result<Value, Reply> {
    let Value::Object(mut fields) = row else {
        return Err(postgrest_error(
            400,
            "PGRST102",
            Value::Null,
            Value::Null,
            "Empty or invalid json",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| !table.columns.contains(&k.as_str())) {
        return Err(postgrest_error(
            400,
            "PGRST204",
            Value::Null,
            Value::Null,
            &format!("Could not find the '{unknown}' column of '{name}' in the schema cache"),
        ));
    }
    fields.entry("params").or_insert_with(|| json!({}));
    fields.entry("kind").or_insert_with(|| json!("image"));
    fields
        .entry("content_type")
        .or_insert_with(|| json!("image/png"));
    fields
        .entry("created_at")
        .or_insert_with(|| json!("2026-11-24T04:49:01.705+00:00"));
    for column in table.columns {
        fields.entry(*column).or_insert(Value::Null);
    }
    if let Some(column) = table.not_null.iter().find(|c| fields[**c].is_null()) {
        return Err(postgrest_error(
            400,
            "23502",
            json!("Failing row contains (...)."),
            Value::Null,
            &format!(
                "null value in column \"{column}\" of relation \"{name}\" violates not-null constraint"
            ),
        ));
    }
    for column in ["image_index", "width", "height", "bytes", "seed"] {
        let value = &fields[column];
        if !(value.is_null() || value.is_u64() || value.is_i64()) {
            return Err(postgrest_error(
                400,
                "22P02",
                Value::Null,
                Value::Null,
                &format!("invalid input syntax for type integer: \"{value}\""),
            ));
        }
    }
    Ok(Value::Object(fields))
}

fn same_key(a: &Value, b: &Value, columns: &[&str]) -> bool {
    columns.iter().all(|c| a[*c] == b[*c])
}

/// Inserts or merges one row into `staged`; returns the row written (`None` if ignored).
fn apply_row(
    table: &Table,
    name: &str,
    staged: &mut Vec<Value>,
    row: Value,
    options: &InsertOptions,
) -> Result<Option<Value>, Reply> {
    let mut replaces = None;
    if let Some(resolution) = &options.resolution {
        let target: Vec<&str> = match &options.on_conflict {
            Some(cols) => cols.iter().map(String::as_str).collect(),
            None => vec!["id"],
        };
        let matches_constraint = table
            .unique
            .iter()
            .any(|u| u.len() == target.len() && u.iter().all(|c| target.contains(c)));
        if !matches_constraint {
            return Err(postgrest_error(
                400,
                "42P10",
                Value::Null,
                Value::Null,
                "there is no unique or exclusion constraint matching the ON CONFLICT specification",
            ));
        }
        if let Some(index) = staged.iter().position(|old| same_key(old, &row, &target)) {
            if resolution == "ignore-duplicates" {
                return Ok(None);
            }
            replaces = Some(index);
        }
    }
    for unique in table.unique {
        let clash = staged
            .iter()
            .enumerate()
            .any(|(i, old)| Some(i) != replaces && same_key(old, &row, unique));
        if clash {
            let values: Vec<String> = unique.iter().map(|c| value_text(&row[*c])).collect();
            return Err(postgrest_error(
                409,
                "23505",
                json!(format!(
                    "Key ({})=({}) already exists.",
                    unique.join(", "),
                    values.join(", ")
                )),
                Value::Null,
                &format!(
                    "duplicate key value violates unique constraint \"{name}_{}_key\"",
                    unique.join("_")
                ),
            ));
        }
    }
    match replaces {
        Some(index) => staged[index] = row.clone(),
        None => staged.push(row.clone()),
    }
    Ok(Some(row))
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A [`SupabaseStorage`] for `fake` with retries measured in milliseconds (4 attempts);
/// `adjust` changes its options before it is built.
pub fn storage_for(
    fake: &FakeSupabase,
    adjust: impl FnOnce(&mut SupabaseOptions),
) -> SupabaseStorage {
    let mut options = SupabaseOptions::new(fake.url(), fake.key());
    options.retry = RetryPolicy {
        attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    };
    options.connect_timeout = Duration::from_secs(2);
    options.request_timeout = Duration::from_secs(10);
    adjust(&mut options);
    SupabaseStorage::new(options)
}
