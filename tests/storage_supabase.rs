//! Supabase storage against the fake project: the exact requests sent, the URLs handed out, and
//! what happens when Supabase fails (retried or reported, never duplicated).

mod common;

use std::time::Duration;

use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::storage::supabase::SupabaseStorage;
use comfyui_gateway::storage::{ErrorKind, ImageRecord, Storage};
use common::fake_supabase::{FakeSupabase, RecordedRequest, Route, storage_for};
use serde_json::json;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really a png";

fn storage(fake: &FakeSupabase) -> SupabaseStorage {
    storage_for(fake, |_| {})
}

fn record(job: &str, index: u32, seed: u64) -> ImageRecord {
    ImageRecord {
        id: new_uuid(),
        job_id: job.into(),
        prompt_id: Some("b9f1c1d0-prompt".into()),
        workflow: "txt2img".into(),
        image_index: index,
        storage_key: format!("{job}/{index}.png"),
        url: format!("https://example.test/{job}/{index}.png"),
        width: Some(512),
        height: Some(512),
        bytes: PNG.len() as u64,
        kind: "image".into(),
        content_type: "image/png".into(),
        seed: Some(seed),
        params: json!({"prompt": "a red fox", "seed": seed, "steps": 20}),
        created_at: "2026-11-24T04:49:01Z".into(),
    }
}

fn requests_to(fake: &FakeSupabase, method: &str, prefix: &str) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == method && r.url.starts_with(prefix))
        .collect()
}

/// A plain client for checking what the fake serves.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

#[test]
fn upload_sends_both_key_headers_and_returns_a_public_url_that_downloads() {
    let fake = FakeSupabase::start();
    let job = new_uuid();
    let key = format!("{job}/0.png");
    let url = storage(&fake)
        .put_image(&key, PNG, "image/png")
        .expect("the fake accepts the upload");
    assert_eq!(
        url,
        format!("{}/storage/v1/object/public/images/{key}", fake.url())
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let upload = &requests[0];
    assert_eq!(upload.method, "POST");
    assert_eq!(upload.url, format!("/storage/v1/object/images/{key}"));
    assert_eq!(upload.header("apikey"), Some(fake.key().as_str()));
    let bearer = format!("Bearer {}", fake.key());
    assert_eq!(upload.header("authorization"), Some(bearer.as_str()));
    assert_eq!(upload.header("content-type"), Some("image/png"));
    assert_eq!(upload.header("x-upsert"), Some("true"));
    assert_eq!(upload.header("cache-control"), Some("max-age=3600"));
    assert_eq!(upload.body, PNG);
    assert_eq!(fake.objects()[&format!("images/{key}")].bytes, PNG);

    let mut download = client().get(&url).call().expect("the fake answers");
    assert_eq!(download.status(), 200);
    let cache = download.headers().get("cache-control").cloned();
    assert_eq!(
        cache.as_ref().and_then(|v| v.to_str().ok()),
        Some("max-age=3600")
    );
    let bytes = download.body_mut().read_to_vec().expect("a body");
    assert_eq!(bytes, PNG);
}

#[test]
fn signed_urls_are_asked_for_and_made_absolute() {
    let fake = FakeSupabase::start();
    let storage = storage_for(&fake, |o| o.signed_url_ttl_secs = 60);
    let key = format!("{}/0.png", new_uuid());
    let url = storage
        .put_image(&key, PNG, "image/png")
        .expect("upload and sign succeed");
    let prefix = format!("{}/storage/v1/object/sign/images/{key}?token=", fake.url());
    assert!(url.starts_with(&prefix), "{url}");

    let sign = &requests_to(&fake, "POST", "/storage/v1/object/sign/")[0];
    assert_eq!(sign.url, format!("/storage/v1/object/sign/images/{key}"));
    assert_eq!(sign.json(), json!({"expiresIn": 60}));
    assert_eq!(sign.header("apikey"), Some(fake.key().as_str()));

    let mut download = client().get(&url).call().expect("the fake answers");
    assert_eq!(download.status(), 200);
    assert_eq!(download.body_mut().read_to_vec().expect("a body"), PNG);
}

#[test]
fn rows_go_in_one_upsert_with_seeds_as_exact_integers() {
    let fake = FakeSupabase::start();
    let job = new_uuid();
    let rows = vec![record(&job, 0, u64::MAX), record(&job, 1, 42)];
    storage(&fake)
        .record(&rows)
        .expect("the fake accepts the rows");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "all rows of a job in one request");
    let insert = &requests[0];
    assert_eq!(insert.method, "POST");
    assert_eq!(
        insert.url,
        "/rest/v1/generations?on_conflict=job_id,image_index"
    );
    assert_eq!(insert.header("apikey"), Some(fake.key().as_str()));
    let bearer = format!("Bearer {}", fake.key());
    assert_eq!(insert.header("authorization"), Some(bearer.as_str()));
    assert_eq!(insert.header("content-type"), Some("application/json"));
    assert_eq!(
        insert.header("prefer"),
        Some("resolution=merge-duplicates,return=minimal")
    );
    let text = String::from_utf8_lossy(&insert.body);
    assert!(text.contains("\"seed\":18446744073709551615"), "{text}");

    let stored = fake.rows();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["seed"], json!(u64::MAX));
    let back: Vec<ImageRecord> = stored
        .into_iter()
        .map(|row| serde_json::from_value(row).expect("a stored row is a record"))
        .collect();
    assert_eq!(back, rows);
}

#[test]
fn a_503_twice_then_success_is_retried_to_success() {
    let fake = FakeSupabase::start();
    let body = r#"{"message":"upstream connect error or disconnect/reset before headers"}"#;
    fake.fail_next(Route::Upload, 2, 503, body);
    let key = format!("{}/0.png", new_uuid());
    storage(&fake)
        .put_image(&key, PNG, "image/png")
        .expect("the third try succeeds");
    assert_eq!(
        requests_to(&fake, "POST", "/storage/v1/object/images/").len(),
        3
    );
    assert!(fake.objects().contains_key(&format!("images/{key}")));
}

#[test]
fn a_storage_400_carrying_status_code_503_is_retried() {
    let fake = FakeSupabase::start();
    let body = r#"{"statusCode":"503","error":"Service Unavailable","message":"database unreachable","code":"DatabaseError"}"#;
    fake.fail_next(Route::Upload, 1, 400, body);
    storage(&fake)
        .put_image(&format!("{}/0.png", new_uuid()), PNG, "image/png")
        .expect("the second try succeeds");
    assert_eq!(
        requests_to(&fake, "POST", "/storage/v1/object/images/").len(),
        2
    );
}

#[test]
fn a_missing_bucket_is_permanent_and_reported_in_supabases_words() {
    let fake = FakeSupabase::start();
    let storage = storage_for(&fake, |o| o.bucket = "missing".into());
    let key = format!("{}/0.png", new_uuid());
    let error = storage
        .put_image(&key, PNG, "image/png")
        .expect_err("there is no such bucket");
    assert!(!error.is_transient());
    assert_eq!(error.http_status(), Some(400));
    assert_eq!(error.status_code(), Some("404"));
    assert_eq!(error.status(), Some(404));
    assert_eq!(error.code(), Some("NoSuchBucket"));
    assert_eq!(error.message(), "Bucket not found");
    assert_eq!(
        error.to_string(),
        format!("uploading {key} to Supabase: 404 Not Found: Bucket not found (NoSuchBucket)")
    );
    assert_eq!(fake.requests().len(), 1, "no retry");

    let error = storage
        .check()
        .expect_err("readiness sees the missing bucket");
    assert_eq!(error.code(), Some("NoSuchBucket"));
}

#[test]
fn an_invalid_api_key_is_permanent_and_never_shown() {
    let fake = FakeSupabase::start();
    let secret = "eyJhbGciOiJIUzI1NiJ9.wrong-secret-do-not-print.sig";
    let storage = storage_for(&fake, |o| o.key = secret.into());
    let error = storage
        .put_image(&format!("{}/0.png", new_uuid()), PNG, "image/png")
        .expect_err("the key is wrong");
    assert!(!error.is_transient());
    assert_eq!(error.status(), Some(401));
    assert_eq!(error.message(), "Invalid API key");
    assert_eq!(fake.requests().len(), 1, "no retry");
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{storage:?}"),
    ] {
        assert!(!shown.contains("wrong-secret"), "{shown}");
    }

    let error = storage
        .record(&[record(&new_uuid(), 0, 1)])
        .expect_err("same for rows");
    assert_eq!(error.status(), Some(401));
}

#[test]
fn an_unreachable_supabase_is_transient_after_every_attempt() {
    let fake = FakeSupabase::start();
    fake.set_down(true);
    let storage = storage(&fake);
    let error = storage
        .put_image(&format!("{}/0.png", new_uuid()), PNG, "image/png")
        .expect_err("nothing answers");
    assert!(error.is_transient());
    assert_eq!(error.kind(), ErrorKind::Unreachable);
    assert_eq!(fake.dropped_connections(), 4, "one connection per attempt");
    assert!(fake.requests().is_empty());

    let error = storage.check().expect_err("not ready while down");
    assert!(error.is_transient());
    assert_eq!(fake.dropped_connections(), 5, "check does not retry");
}

#[test]
fn a_retried_insert_creates_no_duplicate_rows() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let job = new_uuid();
    let rows = vec![record(&job, 0, 1), record(&job, 1, 2)];
    storage.record(&rows).expect("first insert");

    // The same rows again, as after an answer lost on the way back: first a PostgREST 503.
    let body = r#"{"code":"PGRST002","details":null,"hint":null,"message":"Could not query the database for the schema cache. Retrying."}"#;
    fake.fail_next(Route::Insert, 1, 503, body);
    let mut again = rows.clone();
    again[1].url = "https://example.test/replaced".into();
    storage.record(&again).expect("the retry merges");

    assert_eq!(requests_to(&fake, "POST", "/rest/v1/").len(), 3);
    let stored = fake.rows();
    assert_eq!(stored.len(), 2, "no duplicates");
    assert_eq!(stored[1]["url"], json!("https://example.test/replaced"));
}

#[test]
fn a_conflict_23505_counts_as_already_recorded() {
    let fake = FakeSupabase::start();
    let body = r#"{"code":"23505","details":"Key (job_id, image_index)=(j, 0) already exists.","hint":null,"message":"duplicate key value violates unique constraint \"generations_job_id_image_index_key\""}"#;
    fake.fail_next(Route::Insert, 1, 409, body);
    storage(&fake)
        .record(&[record(&new_uuid(), 0, 1)])
        .expect("a duplicate means the rows are there");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn an_unknown_table_is_permanent() {
    let fake = FakeSupabase::start();
    let storage = storage_for(&fake, |o| o.table = "nope".into());
    let error = storage
        .record(&[record(&new_uuid(), 0, 1)])
        .expect_err("there is no such table");
    assert!(!error.is_transient());
    assert_eq!(error.status(), Some(404));
    assert_eq!(error.code(), Some("PGRST205"));
    assert!(error.message().contains("public.nope"), "{error}");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn check_reads_the_bucket() {
    let fake = FakeSupabase::start();
    storage(&fake).check().expect("the bucket exists");
    let requests = fake.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].url, "/storage/v1/bucket/images");
    assert_eq!(requests[0].header("apikey"), Some(fake.key().as_str()));
}

/// The fake itself answers as the captured real services do, so tests against it mean something.
#[test]
fn the_fake_speaks_the_captured_protocol() {
    let fake = FakeSupabase::start();
    let agent = client();
    let key = fake.key();
    let bearer = format!("Bearer {key}");
    let base = fake.url();
    let answer = |response: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        let mut response = response.expect("the fake answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or(json!(text)),
        )
    };
    let upload = format!("{base}/storage/v1/object/images/job-1/0.png");

    let (status, body) = answer(agent.post(&upload).send(PNG));
    assert_eq!(
        (status, body),
        (401, json!({"message": "No API key found in request"}))
    );
    let (status, body) = answer(agent.post(&upload).header("apikey", "x").send(PNG));
    assert_eq!((status, &body["message"]), (401, &json!("Invalid API key")));
    let (status, body) = answer(agent.post(&upload).header("apikey", &key).send(PNG));
    assert_eq!(
        (status, &body["statusCode"], &body["code"]),
        (400, &json!("400"), &json!("InvalidRequest"))
    );

    let authorized = |request: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        request
            .header("apikey", &key)
            .header("Authorization", &bearer)
    };
    let (status, body) = answer(
        authorized(agent.post(&upload))
            .header("x-upsert", "false")
            .send(PNG),
    );
    assert_eq!(status, 200);
    assert_eq!(body["Key"], json!("images/job-1/0.png"));
    let (status, body) = answer(
        authorized(agent.post(&upload))
            .header("x-upsert", "false")
            .send(PNG),
    );
    assert_eq!(
        (status, body),
        (
            400,
            json!({"statusCode":"409","error":"Duplicate","message":"The resource already exists","code":"KeyAlreadyExists"})
        )
    );
    let missing = format!("{base}/storage/v1/object/nope/job-1/0.png");
    let (status, body) = answer(authorized(agent.post(&missing)).send(PNG));
    assert_eq!(
        (status, body),
        (
            400,
            json!({"statusCode":"404","error":"Bucket not found","message":"Bucket not found","code":"NoSuchBucket"})
        )
    );
    let sign_missing = format!("{base}/storage/v1/object/sign/images/job-1/9.png");
    let (status, body) = answer(authorized(agent.post(&sign_missing)).send(r#"{"expiresIn":60}"#));
    assert_eq!(
        (status, &body["statusCode"], &body["code"]),
        (400, &json!("404"), &json!("NoSuchKey"))
    );

    let table = format!("{base}/rest/v1/generations");
    let row = json!({
        "id": "00000000-0000-4000-8000-000000000001", "job_id": "00000000-0000-4000-8000-000000000002",
        "workflow": "txt2img", "image_index": 0, "storage_key": "k", "url": "u",
        "width": 1, "height": 1, "bytes": 1
    });
    let insert = |url: &str, body: &serde_json::Value| {
        answer(
            authorized(agent.post(url))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    };
    assert_eq!(insert(&table, &row).0, 201);
    let (status, body) = insert(&table, &row);
    assert_eq!((status, &body["code"]), (409, &json!("23505")));
    let (status, body) = insert(&format!("{base}/rest/v1/nope"), &row);
    assert_eq!((status, &body["code"]), (404, &json!("PGRST205")));
    let mut extra = row.clone();
    extra["colour"] = json!("red");
    let (status, body) = insert(&table, &extra);
    assert_eq!((status, &body["code"]), (400, &json!("PGRST204")));
    assert_eq!(fake.rows().len(), 1);
}

#[test]
fn a_restart_between_jobs_is_survived_by_the_connection_pool() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let job = new_uuid();
    storage
        .put_image(&format!("{job}/0.png"), PNG, "image/png")
        .expect("first upload");
    // A deploy: every open connection is cut, then the service answers again.
    fake.set_down(true);
    fake.set_down(false);
    storage
        .put_image(&format!("{job}/1.png"), PNG, "image/png")
        .expect("a stale pooled connection is retried or replaced");
    assert_eq!(fake.objects().len(), 2);
}

#[test]
fn files_of_every_kind_upload_from_disk_with_their_content_type_and_length() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let job = new_uuid();
    let dir = std::env::temp_dir().join(format!("gateway-upload-{}", new_uuid()));
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    // A video big enough to take many reads from the file.
    let video: Vec<u8> = b"\0\0\0\x18ftypisom"
        .iter()
        .copied()
        .chain((0..3_000_000u32).map(|i| (i % 251) as u8))
        .collect();
    let outputs: [(&str, Vec<u8>, &str); 4] = [
        ("gif", b"GIF89a\x01\0\x01\0;".to_vec(), "image/gif"),
        ("mp4", video, "video/mp4"),
        ("flac", b"fLaC\0\0\0\x22".to_vec(), "audio/flac"),
        ("glb", b"glTF\x02\0\0\0".to_vec(), "model/gltf-binary"),
    ];
    for (index, (extension, bytes, content_type)) in outputs.iter().enumerate() {
        let path = dir.join(format!("{index}.part"));
        std::fs::write(&path, bytes).expect("writable");
        let key = format!("{job}/{index}.{extension}");
        let url = storage
            .put_file(&key, &path, content_type)
            .expect("the fake accepts every kind");
        assert_eq!(
            url,
            format!("{}/storage/v1/object/public/images/{key}", fake.url())
        );
        let object = &fake.objects()[&format!("images/{key}")];
        assert_eq!(&object.content_type, content_type);
        assert!(object.bytes == *bytes, "{key}: bytes differ");
    }
    let uploads = requests_to(&fake, "POST", "/storage/v1/object/images/");
    assert_eq!(uploads.len(), 4);
    for (upload, (_, bytes, content_type)) in uploads.iter().zip(&outputs) {
        assert_eq!(upload.header("content-type"), Some(*content_type));
        // Streamed from the file with its length announced, not chunked.
        let length = bytes.len().to_string();
        assert_eq!(upload.header("content-length"), Some(length.as_str()));
        assert_eq!(upload.header("transfer-encoding"), None);
    }

    // A file that is not there fails at once, without a request.
    let error = storage
        .put_file(&format!("{job}/9.mp4"), &dir.join("missing"), "video/mp4")
        .expect_err("no such file");
    assert!(!error.is_transient());
    assert_eq!(requests_to(&fake, "POST", "/storage/v1/object/").len(), 4);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn a_file_upload_failing_with_503_is_resent_whole_and_a_400_is_not_retried() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let job = new_uuid();
    let dir = std::env::temp_dir().join(format!("gateway-upload-retry-{}", new_uuid()));
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    let video: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    let path = dir.join("0.part");
    std::fs::write(&path, &video).expect("writable");

    // Supabase fails twice mid-upload: each retry reopens the file and sends all of it again.
    let body = r#"{"message":"upstream connect error or disconnect/reset before headers"}"#;
    fake.fail_next(Route::Upload, 2, 503, body);
    let key = format!("{job}/0.mp4");
    storage
        .put_file(&key, &path, "video/mp4")
        .expect("the third try succeeds");
    let uploads = requests_to(&fake, "POST", "/storage/v1/object/images/");
    assert_eq!(uploads.len(), 3);
    let length = video.len().to_string();
    for upload in &uploads {
        assert_eq!(upload.header("content-length"), Some(length.as_str()));
    }
    assert!(
        fake.objects()[&format!("images/{key}")].bytes == video,
        "the stored video differs"
    );
    assert!(path.exists(), "the staged file is left for the caller");

    // A refusal is permanent: one try, nothing stored, Supabase's words kept.
    let body = r#"{"statusCode":"413","error":"Payload too large","message":"The object exceeded the maximum allowed size"}"#;
    fake.fail_next(Route::Upload, 1, 400, body);
    let key = format!("{job}/1.mp4");
    let error = storage
        .put_file(&key, &path, "video/mp4")
        .expect_err("too large for the bucket");
    assert!(!error.is_transient());
    assert_eq!(error.status(), Some(413));
    assert_eq!(
        error.message(),
        "The object exceeded the maximum allowed size"
    );
    assert_eq!(
        requests_to(&fake, "POST", "/storage/v1/object/images/").len(),
        4
    );
    assert!(!fake.objects().contains_key(&format!("images/{key}")));
    std::fs::remove_dir_all(dir).expect("cleanup");
}
