//! The Comfy API v2 asset routes over real HTTP: uploads streamed and deduplicated by blake3,
//! expected hashes, minting from a hash, content with HTTP Range, deletion, and records that
//! survive a restart.

mod common;
// The event schemas are tests/v2.rs's business.
#[allow(dead_code)]
#[path = "common/v2_schema.rs"]
mod v2_schema;

use std::collections::HashMap;
use std::sync::Arc;

use comfyui_gateway::app::App;
use comfyui_gateway::blobs::BlobHash;
use comfyui_gateway::config::Config;
use comfyui_gateway::server::Server;
use common::harness::{Harness, Options, agent, workflows_dir};
use common::tiny_png;
use serde_json::{Value, json};
use v2_schema::assert_valid;

const BOUNDARY: &str = "----comfytest7d1f";

/// A multipart body as the SDK sends it: fields first, then the file.
fn form(fields: &[(&str, &str)], file: &[u8], filename: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("a body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON ({e}): {text}"))
    };
    // Every body is the contract's: an Asset (a Job, for the few job calls) or the envelope.
    match status {
        200 | 201 if value.get("status").is_some() => assert_valid("Job", &value),
        200 | 201 if value.get("id").is_some() => assert_valid("Asset", &value),
        400.. => assert_valid("ErrorEnvelope", &value),
        _ => {}
    }
    (status, value)
}

fn upload(h: &Harness, body: Vec<u8>) -> (u16, Value) {
    read(
        agent()
            .post(h.url("/api/v2/assets"))
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send(&body[..]),
    )
}

fn upload_png(h: &Harness, png: &[u8], name: &str) -> (u16, Value) {
    let hash = BlobHash::of(png).to_string();
    upload(
        h,
        form(
            &[
                ("content_type", "image/png"),
                ("file_path", name),
                ("expected_hash", &hash),
            ],
            png,
            name,
        ),
    )
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(none)")
}

/// Asserts that the answer `(status, body)` is the error envelope with `code` under `expected`.
#[track_caller]
fn assert_error(status: u16, body: &Value, expected: u16, code: &str) {
    assert_eq!((status, error_code(body)), (expected, code), "{body}");
}

fn head_status(h: &Harness, hash: &str) -> u16 {
    agent()
        .head(h.url(&format!("/api/v2/assets/by-hash/{hash}")))
        .call()
        .expect("answers")
        .status()
        .as_u16()
}

/// GETs the content with optional extra headers: status, headers, body.
fn content(
    h: &Harness,
    id: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut request = agent().get(h.url(&format!("/api/v2/assets/{id}/content")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("answers");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                value.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let body = response.body_mut().read_to_vec().expect("a body");
    (status, headers, body)
}

#[test]
fn an_upload_is_hashed_stored_and_deduplicated() {
    let h = Harness::start();
    let png = tiny_png(8, 8);
    let hash = BlobHash::of(&png).to_string();
    assert_eq!(head_status(&h, &hash), 404);

    let (status, first) = upload_png(&h, &png, "photo.png");
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["created_new"], true);
    assert_eq!(first["hash"], hash);
    assert_eq!(first["size_bytes"], png.len());
    assert_eq!(first["content_type"], "image/png");
    assert_eq!(first["type"], "image");
    assert_eq!(first["file_path"], "photo.png");
    assert!(first["url_expires_at"].is_string() && first["created_at"].is_string());
    let id = first["id"].as_str().expect("id");
    assert!(comfyui_gateway::ids::is_uuid(id));
    assert_eq!(first["url"], h.url(&format!("/api/v2/assets/{id}/content")));
    assert_eq!(head_status(&h, &hash), 200);

    // The same bytes again: no new blob, the same record returned.
    let (status, again) = upload_png(&h, &png, "photo.png");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created_new"], false);
    assert_eq!(again["id"], id);
    // Same bytes, another name: a new record over the same blob.
    let (status, renamed) = upload_png(&h, &png, "copy.png");
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["created_new"], false);
    assert_ne!(renamed["id"], id);

    let (status, record) = read(agent().get(h.url(&format!("/api/v2/assets/{id}"))).call());
    assert_eq!(status, 200);
    assert_eq!(record["hash"], hash);
    assert!(record.get("created_new").is_none());
    let (status, _, bytes) = content(&h, id, &[]);
    assert_eq!((status, bytes == png), (200, true));
}

#[test]
fn a_wrong_expected_hash_is_refused_and_nothing_is_kept() {
    let h = Harness::start();
    let png = tiny_png(4, 4);
    let wrong = BlobHash::of(b"something else").to_string();
    for fields_after_file in [false, true] {
        let body = if fields_after_file {
            // A client may send the expected hash after the file: checked all the same.
            let mut body = form(&[], &png, "a.png");
            let closing = format!("--{BOUNDARY}--\r\n");
            body.truncate(body.len() - closing.len());
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"expected_hash\"\r\n\r\n\
                     {wrong}\r\n{closing}"
                )
                .as_bytes(),
            );
            body
        } else {
            form(&[("expected_hash", &wrong)], &png, "a.png")
        };
        let (status, body) = upload(&h, body);
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "hash_mismatch");
        assert_eq!(body["error"]["details"]["expected"], wrong);
        assert_eq!(
            body["error"]["details"]["actual"],
            BlobHash::of(&png).to_string()
        );
        assert_eq!(head_status(&h, &BlobHash::of(&png).to_string()), 404);
    }
    assert!(h.app.assets.is_empty());
}

#[test]
fn bad_uploads_get_the_envelope() {
    let h = Harness::with(Options {
        vars: vec![("MAX_UPLOAD_BYTES", "4096".to_string())],
        ..Options::default()
    });
    // Not multipart.
    let (status, body) = read(
        agent()
            .post(h.url("/api/v2/assets"))
            .header("Content-Type", "application/json")
            .send("{}"),
    );
    assert_error(status, &body, 400, "invalid_request");
    // No file part.
    let no_file = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file_path\"\r\n\r\nx.png\r\n--{BOUNDARY}--\r\n"
    );
    let (status, body) = upload(&h, no_file.into_bytes());
    assert_error(status, &body, 400, "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("file")
    );
    // Cut short.
    let mut cut = form(&[], b"0123456789", "a.bin");
    cut.truncate(cut.len() - 12);
    let (status, body) = upload(&h, cut);
    assert_error(status, &body, 400, "invalid_request");
    // A malformed expected hash.
    let (status, body) = upload(&h, form(&[("expected_hash", "md5:abc")], b"x", "a.bin"));
    assert_error(status, &body, 400, "invalid_request");
    // Over MAX_UPLOAD_BYTES, sent chunked so that only the streaming limit can catch it.
    let big = form(&[], &vec![7u8; 5000], "big.bin");
    let (status, body) = read(
        agent()
            .post(h.url("/api/v2/assets"))
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send(ureq::SendBody::from_reader(&mut &big[..])),
    );
    assert_error(status, &body, 413, "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_UPLOAD_BYTES")
    );
    // Declared over the limit: refused from the Content-Length alone.
    let (status, body) = upload(&h, big);
    assert_error(status, &body, 413, "payload_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_UPLOAD_BYTES")
    );
    assert!(h.app.assets.is_empty());
    assert_eq!(
        head_status(&h, &BlobHash::of(&[7u8; 5000]).to_string()),
        404
    );
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_client_gone_mid_upload_leaves_no_blob_and_no_temporary_file() {
    use std::io::Write;
    let h = Harness::with(Options::default());
    let dir = h.app.blobs.dir().to_path_buf();
    let whole = form(&[], &vec![9u8; 1 << 20], "gone.bin");
    let addr = h.gateway.url().trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).expect("connects");
    let head = format!(
        "POST /api/v2/assets HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n",
        whole.len()
    );
    socket.write_all(head.as_bytes()).expect("head sent");
    // Half the body: more than the parser buffers before it streams the file to disk.
    socket
        .write_all(&whole[..whole.len() / 2])
        .expect("half the body sent");
    // The upload is under way: its bytes are landing in a temporary file of the blob store.
    let deadline = std::time::Instant::now() + common::EVENT_DEADLINE;
    while files_under(&dir).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no upload began");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(socket);
    while !files_under(&dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            files_under(&dir)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(h.app.assets.is_empty());
}

#[test]
fn uploads_have_their_own_limit_and_a_refused_one_is_read_to_its_end() {
    let h = Harness::with(Options {
        vars: vec![
            ("MAX_BODY_BYTES", "2048".to_string()),
            ("MAX_UPLOAD_BYTES", "1048576".to_string()),
        ],
        ..Options::default()
    });
    // Larger than MAX_BODY_BYTES, within MAX_UPLOAD_BYTES: stored.
    let bytes = vec![3u8; 600_000];
    let (status, asset) = upload(&h, form(&[("file_path", "big.bin")], &bytes, "big.bin"));
    assert_eq!(status, 201, "{asset}");
    assert_eq!(asset["size_bytes"], bytes.len());
    // A large body refused on its first bytes still gets the envelope (the gateway reads the
    // rest itself, through a small buffer, before answering).
    let mut bad = b"--nope\r\n".to_vec();
    bad.extend(vec![0u8; 500_000]);
    let agent = agent();
    let response = agent
        .post(h.url("/api/v2/assets"))
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(&bad[..]);
    let (status, body) = read(response);
    assert_error(status, &body, 400, "invalid_request");
    let (status, record) = read(
        agent
            .get(h.url(&format!(
                "/api/v2/assets/{}",
                asset["id"].as_str().expect("id")
            )))
            .call(),
    );
    assert_eq!(status, 200, "{record}");
    // Other routes keep MAX_BODY_BYTES.
    let (status, body) = read(
        agent
            .post(h.url("/api/v2/assets/from-hash"))
            .header("Content-Type", "application/json")
            .send(&vec![b' '; 4096][..]),
    );
    assert_error(status, &body, 413, "payload_too_large");
}

#[test]
fn from_hash_mints_over_known_bytes_only() {
    let h = Harness::start();
    let png = tiny_png(6, 6);
    let hash = BlobHash::of(&png).to_string();
    let mint = |body: Value| {
        read(
            agent()
                .post(h.url("/api/v2/assets/from-hash"))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    };
    let (status, body) = mint(json!({ "hash": hash, "file_path": "x.png" }));
    assert_error(status, &body, 404, "blob_not_found");
    let (status, body) = mint(json!({ "hash": "blake3:nothex" }));
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = mint(json!({ "file_path": "x.png" }));
    assert_error(status, &body, 400, "invalid_request");

    let (status, uploaded) = upload_png(&h, &png, "first.png");
    assert_eq!(status, 201, "{uploaded}");
    let (status, minted) =
        mint(json!({ "hash": hash, "file_path": "second.png", "tags": ["input"] }));
    assert_eq!(status, 201, "{minted}");
    assert_eq!(minted["hash"], hash);
    assert_eq!(minted["file_path"], "second.png");
    assert_eq!(minted["created_new"], false);
    assert_ne!(minted["id"], uploaded["id"]);
    // The identical reference again is returned as it is.
    let (status, again) =
        mint(json!({ "hash": hash, "file_path": "second.png", "tags": ["input"] }));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], minted["id"]);
}

#[test]
fn content_honours_one_range_and_refuses_ranges_past_the_end() {
    let h = Harness::start();
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let (status, asset) = upload(&h, form(&[("file_path", "data.bin")], &bytes, "data.bin"));
    assert_eq!(status, 201, "{asset}");
    assert_eq!(asset["content_type"], "application/octet-stream");
    assert_eq!(asset["type"], "file");
    let id = asset["id"].as_str().expect("id");

    let (status, headers, body) = content(&h, id, &[]);
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["content-length"], "1000");
    let etag = headers["etag"].clone();

    let (status, headers, body) = content(&h, id, &[("Range", "bytes=10-19")]);
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 10-19/1000");
    assert_eq!(body, &bytes[10..20]);

    let (status, headers, body) = content(&h, id, &[("Range", "bytes=-5")]);
    assert_eq!(
        (status, headers["content-range"].as_str()),
        (206, "bytes 995-999/1000")
    );
    assert_eq!(body, &bytes[995..]);

    let (status, headers, body) = content(&h, id, &[("Range", "bytes=990-5000")]);
    assert_eq!((status, body.len()), (206, 10));
    assert_eq!(headers["content-range"], "bytes 990-999/1000");

    let (status, headers, body) = content(&h, id, &[("Range", "bytes=1000-")]);
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], "bytes */1000");
    let error: Value = serde_json::from_slice(&body).expect("JSON");
    assert_valid("ErrorEnvelope", &error);
    assert_eq!(error_code(&error), "range_not_satisfiable");

    // Several ranges, or a range for another version, get the whole content.
    let (status, _, body) = content(&h, id, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!((status, body.len()), (200, 1000));
    let (status, _, body) = content(&h, id, &[("Range", "bytes=0-1"), ("If-Range", "\"other\"")]);
    assert_eq!((status, body.len()), (200, 1000));
    let (status, _, body) = content(&h, id, &[("Range", "bytes=0-1"), ("If-Range", &etag)]);
    assert_eq!((status, body.len()), (206, 2));
}

#[test]
fn delete_removes_the_record_and_unshared_bytes() {
    let h = Harness::start();
    let png = tiny_png(5, 5);
    let hash = BlobHash::of(&png).to_string();
    let (_, one) = upload_png(&h, &png, "one.png");
    let (_, two) = upload_png(&h, &png, "two.png");
    let delete = |id: &Value| {
        read(
            agent()
                .delete(h.url(&format!("/api/v2/assets/{}", id.as_str().expect("id"))))
                .call(),
        )
    };
    assert_eq!(delete(&one["id"]).0, 204);
    let (status, body) = read(
        agent()
            .get(h.url(&format!(
                "/api/v2/assets/{}",
                one["id"].as_str().expect("id")
            )))
            .call(),
    );
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = delete(&one["id"]);
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    assert_eq!(head_status(&h, &hash), 200, "two.png still uses the bytes");
    assert_eq!(delete(&two["id"]).0, 204);
    assert_eq!(head_status(&h, &hash), 404);
    let (status, _, _) = content(&h, two["id"].as_str().expect("id"), &[]);
    assert_eq!(status, 404);
}

#[test]
fn assets_need_the_key_when_keys_are_set() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "sekrit".to_string())],
        ..Options::default()
    });
    let (status, body) = upload(&h, form(&[], b"x", "x.bin"));
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = read(
        agent()
            .post(h.url("/api/v2/assets"))
            .header("Authorization", "Bearer sekrit")
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send(&form(&[], b"x", "x.bin")[..]),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn records_and_bytes_survive_a_restart() {
    let h = Harness::start();
    let png = tiny_png(7, 7);
    let (status, asset) = upload_png(&h, &png, "kept.png");
    assert_eq!(status, 201);
    let id = asset["id"].as_str().expect("id");

    // A second gateway over the same DATA_DIR reads the records back.
    let bound = Server::bind("127.0.0.1:0").expect("binds");
    let vars: HashMap<&str, String> = HashMap::from([
        ("COMFYUI_URL", h.sim.url()),
        ("WORKFLOWS_DIR", workflows_dir().display().to_string()),
        ("DATA_DIR", h.dir.path().display().to_string()),
        ("PUBLIC_BASE_URL", format!("http://{}", bound.addr())),
    ]);
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("config");
    let app = Arc::new(App::new(config).expect("app"));
    let second = bound.serve(app).expect("serves");
    let (status, record) = read(
        agent()
            .get(format!("{}/api/v2/assets/{id}", second.url()))
            .call(),
    );
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["hash"], asset["hash"]);
    assert_eq!(
        record["url"],
        format!("{}/api/v2/assets/{id}/content", second.url())
    );
    let mut response = agent()
        .get(format!("{}/api/v2/assets/{id}/content", second.url()))
        .call()
        .expect("answers");
    assert_eq!(response.body_mut().read_to_vec().expect("bytes"), png);
    let head = agent()
        .head(format!(
            "{}/api/v2/assets/by-hash/{}",
            second.url(),
            asset["hash"].as_str().expect("hash")
        ))
        .call()
        .expect("answers");
    assert_eq!(head.status().as_u16(), 200);
}

/// Runs a small `/generate` job to its `complete` data (JSON answer).
fn generate(h: &Harness) -> Value {
    let (status, result) = h.post_json(
        "/generate",
        &json!({"workflow": "txt2img", "prompt": "a cat", "seed": 1, "steps": 2,
                "width": 64, "height": 64}),
    );
    assert_eq!(status, 200, "{result}");
    result
}

#[test]
fn a_generate_output_is_an_asset_served_by_the_gateway() {
    let h = Harness::start();
    let result = generate(&h);
    let image = &result["images"][0];
    let (status, stored) = h.get_bytes(image["url"].as_str().expect("url"));
    assert_eq!(status, 200);
    let hash = BlobHash::of(&stored).to_string();
    // Additive fields of the `complete` data.
    assert_eq!(image["hash"], hash);
    let id = image["asset_id"].as_str().expect("an asset id");

    let (status, asset) = read(agent().get(h.url(&format!("/api/v2/assets/{id}"))).call());
    assert_eq!(status, 200, "{asset}");
    assert_eq!(asset["hash"], hash);
    assert_eq!(asset["size_bytes"], stored.len());
    assert_eq!(asset["content_type"], "image/png");
    assert_eq!(asset["type"], "image");
    assert_eq!(asset["job_id"], result["job_id"]);
    let (status, _, bytes) = content(&h, id, &[]);
    assert_eq!(status, 200);
    assert!(bytes == stored, "the asset is the stored (stripped) file");

    // The job's assets, as the v2 job view reads them.
    let job_id = result["job_id"].as_str().expect("job id");
    let outputs = h.app.assets.for_job(job_id);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].id, id);
    let view = outputs[0].to_output_json(&h.app.config.public_base_url);
    assert_valid("Output", &view);
    assert_eq!(view["node_id"], image["node"]);
    assert_eq!(view["url"], h.url(&format!("/api/v2/assets/{id}/content")));
    let job = h
        .app
        .jobs
        .get(&comfyui_gateway::ids::JobId::parse(job_id).expect("a job id"))
        .expect("the job is remembered");
    let watch = job.watch_outputs();
    assert_eq!(watch.committed.len(), 1);
    assert!(watch.live.is_none(), "the job has ended");
    // Local outputs join the blob store: a client may mint from their hash.
    assert_eq!(head_status(&h, &hash), 200);
}

#[test]
fn a_supabase_output_redirects_to_a_fresh_storage_url() {
    let h = Harness::with(Options {
        supabase: true,
        vars: vec![("SUPABASE_SIGNED_URL_TTL", "600".to_string())],
        ..Options::default()
    });
    let result = generate(&h);
    let image = &result["images"][0];
    let id = image["asset_id"].as_str().expect("an asset id");
    let key = image["key"].as_str().expect("key");
    let fake = h.supabase.as_ref().expect("fake supabase");
    let stored = fake
        .objects()
        .into_iter()
        .find(|(path, _)| path.ends_with(key))
        .expect("uploaded")
        .1
        .bytes;
    assert_eq!(image["hash"], BlobHash::of(&stored).to_string());

    let (status, asset) = read(agent().get(h.url(&format!("/api/v2/assets/{id}"))).call());
    assert_eq!(status, 200, "{asset}");
    assert_eq!(asset["hash"], image["hash"]);
    let no_redirects = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let response = no_redirects
        .get(asset["url"].as_str().expect("url"))
        .call()
        .expect("answers");
    assert_eq!(response.status().as_u16(), 302);
    let location = response
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string();
    assert!(location.starts_with(&fake.url()), "{location}");
    assert!(
        location.contains("/object/sign/"),
        "a signed URL: {location}"
    );
    let (status, bytes) = h.get_bytes(&location);
    assert_eq!(status, 200);
    assert!(bytes == stored);
    // Supabase refusing to sign is said, in the envelope.
    fake.fail_next(
        common::fake_supabase::Route::Sign,
        1,
        403,
        r#"{"statusCode":"403","error":"Unauthorized","message":"no"}"#,
    );
    let (status, body) = read(no_redirects.get(asset["url"].as_str().expect("url")).call());
    assert_error(status, &body, 502, "storage_failed");
    // Remote outputs are not copied into the local blob store.
    assert!(!h.app.assets.can_mint(&BlobHash::of(&stored)));
}

#[test]
fn a_watcher_is_told_of_each_output_as_it_is_committed() {
    let h = Harness::with(Options::step_ms(20));
    let (status, created) = h.post_json(
        "/jobs",
        &json!({"workflow": "txt2img", "prompt": "a dog", "seed": 2, "steps": 5,
                "width": 64, "height": 64}),
    );
    assert_eq!(status, 202, "{created}");
    let job_id = created["job_id"].as_str().expect("job id");
    let job = h
        .app
        .jobs
        .get(&comfyui_gateway::ids::JobId::parse(job_id).expect("a job id"))
        .expect("the job");
    let watch = job.watch_outputs();
    let live = watch.live.expect("the job has not ended yet");
    assert!(watch.committed.is_empty());
    let deadline = std::time::Duration::from_secs(30);
    let asset = live.recv_timeout(deadline).expect("an output is committed");
    assert_eq!(asset.job_id.as_deref(), Some(job_id));
    assert_eq!(asset.output_index, Some(0));
    // The channel closes when the job ends, after its last output.
    assert!(live.recv_timeout(deadline).is_err());
    assert!(job.is_finished());
    assert_eq!(job.outputs().len(), 1);
    let (_, snapshot) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(
        snapshot["result"]["images"][0]["asset_id"],
        asset.id.as_str()
    );
}

fn submit(h: &Harness, workflow: Value) -> String {
    let (status, job) = read(
        agent()
            .post(h.url("/api/v2/jobs"))
            .header("Content-Type", "application/json")
            .send(json!({ "workflow": workflow }).to_string()),
    );
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().expect("job id").to_string()
}

#[test]
fn deleting_an_asset_keeps_the_bytes_a_waiting_job_needs() {
    // One prompt at a time on the one backend: the second job waits in the gateway's queue,
    // and its input is uploaded to ComfyUI only when it is dispatched.
    let mut options = Options::step_ms(100);
    options.vars.push(("QUEUE_AHEAD", "0".to_string()));
    let h = Harness::with(options);
    let busy = submit(&h, common::sampler_graph(10));
    let png = tiny_png(16, 16);
    let (status, asset) = upload_png(&h, &png, "input.png");
    assert_eq!(status, 201, "{asset}");
    let waiting = submit(
        &h,
        json!({
            "1": {"class_type": "LoadImage", "inputs": {"image":
                {"__type": "core/ASSET", "info": {"id": asset["id"]}}}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "in", "images": ["2", 0]}},
        }),
    );
    let job = |id: &str| {
        h.app
            .jobs
            .get(&comfyui_gateway::ids::JobId::parse(id).expect("a job id"))
            .expect("the job")
    };
    assert!(
        !job(&waiting).is_on_backend(),
        "still in the gateway's queue"
    );
    let (status, _) = read(
        agent()
            .delete(h.url(&format!(
                "/api/v2/assets/{}",
                asset["id"].as_str().expect("id")
            )))
            .call(),
    );
    assert_eq!(status, 204);
    let hash = asset["hash"].as_str().expect("hash");
    assert_eq!(
        head_status(&h, hash),
        200,
        "the waiting job still needs the bytes"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    assert!(job(&busy).wait_until_finished(Some(deadline)));
    assert!(job(&waiting).wait_until_finished(Some(deadline)));
    let (status, done) = read(
        agent()
            .get(h.url(&format!("/api/v2/jobs/{waiting}")))
            .call(),
    );
    assert_eq!(status, 200);
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[test]
fn an_output_that_cannot_be_hashed_keeps_its_job_and_file() {
    let h = Harness::start();
    // The blob store's folder is gone and a file stands in its way: nothing can be linked in.
    let blobs = h.dir.path().join("blobs");
    std::fs::remove_dir_all(&blobs).expect("remove blobs");
    std::fs::write(&blobs, b"in the way").expect("a file");
    let result = generate(&h);
    let image = &result["images"][0];
    assert!(image["asset_id"].is_null(), "{image}");
    assert!(image["hash"].is_null(), "{image}");
    let (status, bytes) = h.get_bytes(image["url"].as_str().expect("url"));
    assert_eq!(status, 200);
    assert!(!bytes.is_empty());
    let job_id = result["job_id"].as_str().expect("job id");
    assert!(h.app.assets.for_job(job_id).is_empty());
}

#[test]
fn an_upload_idempotency_key_replays_or_refuses() {
    let h = Harness::start();
    let send = |key: &str, body: Vec<u8>| {
        let response = agent()
            .post(h.url("/api/v2/assets"))
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header("Idempotency-Key", key)
            .send(&body[..])
            .expect("the gateway answers");
        let replayed = response
            .headers()
            .get("Idempotency-Replayed")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (status, body) = read(Ok(response));
        (status, body, replayed)
    };
    let png = tiny_png(9, 9);
    let key = "c0ffee00-upload-key";
    let (status, first, replayed) = send(key, form(&[("file_path", "a.png")], &png, "a.png"));
    assert_eq!((status, replayed), (201, None), "{first}");
    // The same request again: the recorded answer, said to be one.
    let (status, again, replayed) = send(key, form(&[("file_path", "a.png")], &png, "a.png"));
    assert_eq!(
        (status, replayed.as_deref()),
        (201, Some("true")),
        "{again}"
    );
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["created_new"], true);
    // The same key for other bytes: refused, and those bytes are not kept.
    let other = tiny_png(10, 10);
    let (status, body, _) = send(key, form(&[("file_path", "a.png")], &other, "a.png"));
    assert_error(status, &body, 422, "idempotency_key_reuse");
    assert_eq!(head_status(&h, &BlobHash::of(&other).to_string()), 404);
    // A key longer than 255 characters.
    let (status, body, _) = send(&"k".repeat(256), form(&[], &png, "a.png"));
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(h.app.assets.len(), 1);
}

#[test]
fn head_on_content_tells_the_size_without_the_bytes() {
    let h = Harness::start();
    let bytes = vec![5u8; 3000];
    let (status, asset) = upload(&h, form(&[("file_path", "x.bin")], &bytes, "x.bin"));
    assert_eq!(status, 201, "{asset}");
    let url = asset["url"].as_str().expect("url");
    let mut response = agent().head(url).call().expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("Content-Length"), "3000");
    assert_eq!(header("Accept-Ranges"), "bytes");
    assert_eq!(
        header("ETag"),
        format!("\"{}\"", &asset["hash"].as_str().expect("hash")[7..])
    );
    assert!(response.body_mut().read_to_vec().expect("body").is_empty());
}
