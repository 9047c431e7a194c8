//! The pipeline with Supabase storage: the exact requests Supabase sees, links, and failures.

mod common;

use common::fake_supabase::Route;
use common::harness::{Harness, Options, small_txt2img};
use serde_json::Value;

fn supabase_harness(vars: Vec<(&'static str, String)>) -> Harness {
    Harness::with(Options {
        supabase: true,
        vars,
        ..Options::default()
    })
}

#[test]
fn images_are_uploaded_and_rows_inserted_as_supabase_expects() {
    let h = supabase_harness(vec![]);
    let events = h
        .generate_stream(&small_txt2img("a fox in the cloud"))
        .until_terminal();
    let complete = events.last().expect("terminal");
    assert_eq!(complete.event, "complete", "{:?}", complete.data);
    let job_id = complete.data["job_id"].as_str().expect("job id");
    let fake = h.supabase.as_ref().expect("fake supabase");
    let key = format!("{job_id}/0.png");
    assert_eq!(
        complete.data["images"][0]["url"],
        format!("{}/storage/v1/object/public/images/{key}", fake.url()).as_str()
    );

    let requests = fake.requests();
    let upload = requests
        .iter()
        .find(|r| r.method == "POST" && r.path() == format!("/storage/v1/object/images/{key}"))
        .expect("the image was uploaded to the images bucket");
    assert_eq!(upload.header("apikey"), Some(fake.key().as_str()));
    assert_eq!(
        upload.header("authorization"),
        Some(format!("Bearer {}", fake.key()).as_str())
    );
    assert_eq!(upload.header("content-type"), Some("image/png"));
    assert_eq!(
        upload.body.len() as u64,
        complete.data["images"][0]["bytes"].as_u64().unwrap_or(0)
    );

    let insert = requests
        .iter()
        .find(|r| r.method == "POST" && r.path().starts_with("/rest/v1/generations"))
        .expect("rows were inserted");
    assert_eq!(insert.header("apikey"), Some(fake.key().as_str()));
    assert_eq!(insert.header("content-type"), Some("application/json"));
    let rows: Value = serde_json::from_slice(&insert.body).expect("JSON rows");
    let row = &rows[0];
    assert_eq!(row["job_id"], job_id);
    assert_eq!(row["workflow"], "txt2img");
    assert_eq!(row["image_index"], 0);
    assert_eq!(row["storage_key"], key.as_str());
    assert_eq!(row["url"], complete.data["images"][0]["url"]);
    assert_eq!(
        (row["width"].as_u64(), row["height"].as_u64()),
        (Some(64), Some(64))
    );
    assert_eq!(row["seed"], 42);
    assert_eq!(row["params"]["prompt"], "a fox in the cloud");
    assert!(row["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(row["created_at"].is_string());
    assert_eq!(fake.rows().len(), 1, "one row stored");
    assert!(
        // Hidden entries (the staging folder of downloads in progress) are not spooled jobs.
        !std::fs::read_dir(h.dir.path().join("spool"))
            .map(|d| d
                .flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(false),
        "nothing spooled"
    );
}

#[test]
fn signed_urls_when_a_ttl_is_set() {
    let h = supabase_harness(vec![("SUPABASE_SIGNED_URL_TTL", "60".into())]);
    let (status, result) = h.post_json("/generate", &small_txt2img("signed"));
    assert_eq!(status, 200, "{result}");
    let fake = h.supabase.as_ref().expect("fake");
    let url = result["images"][0]["url"].as_str().expect("url");
    assert!(
        url.starts_with(&format!("{}/storage/v1/object/sign/images/", fake.url()))
            && url.contains("token="),
        "{url}"
    );
    let sign = fake
        .requests()
        .into_iter()
        .find(|r| r.path().starts_with("/storage/v1/object/sign/"))
        .expect("a sign request");
    let body: Value = serde_json::from_slice(&sign.body).expect("JSON");
    assert_eq!(body["expiresIn"], 60);
}

fn error_body(status: &str, error: &str, message: &str, code: &str) -> String {
    serde_json::json!({"statusCode": status, "error": error, "message": message, "code": code})
        .to_string()
}

#[test]
fn transient_supabase_failures_are_retried() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    fake.fail_next(
        Route::Upload,
        2,
        503,
        r#"{"message": "upstream connect error"}"#,
    );
    let (status, result) = h.post_json("/generate", &small_txt2img("third time lucky"));
    assert_eq!(status, 200, "{result}");
    let uploads = fake
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/storage/v1/object/images/"))
        .count();
    assert_eq!(uploads, 3, "503, 503, then 200");
    assert_eq!(fake.rows().len(), 1);
}

#[test]
fn a_permanent_supabase_error_is_reported_with_its_message_and_images_kept() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    fake.fail_next(
        Route::Upload,
        1,
        400,
        error_body(
            "404",
            "Bucket not found",
            "Bucket not found",
            "NoSuchBucket",
        ),
    );
    let events = h
        .generate_stream(&small_txt2img("no bucket"))
        .until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.data["code"], "storage_failed", "{:?}", last.data);
    let message = last.data["message"].as_str().unwrap_or("");
    assert!(message.contains("Bucket not found"), "{message}");
    let uploads = fake
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/storage/v1/object/images/"))
        .count();
    assert_eq!(uploads, 1, "a 4xx is not retried");
    let spool_dir = last.data["details"]["spool_dir"]
        .as_str()
        .expect("spool_dir");
    assert!(
        std::path::Path::new(spool_dir)
            .join("manifest.json")
            .exists(),
        "images kept in {spool_dir}"
    );
}

#[test]
fn an_output_over_the_buckets_size_limit_is_kept_and_not_promised_an_upload() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    // Any PNG is larger than 16 bytes: Storage answers 413 EntityTooLarge inside a 400.
    fake.set_file_size_limit("images", Some(16));
    let events = h
        .generate_stream(&small_txt2img("too large"))
        .until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.event, "error", "{:?}", last.data);
    assert_eq!(last.data["code"], "storage_failed", "{:?}", last.data);
    let message = last.data["message"].as_str().unwrap_or_default();
    assert!(message.contains("EntityTooLarge"), "{message}");
    assert!(message.contains("size limit"), "says why: {message}");
    assert!(
        message.contains("will not be uploaded automatically"),
        "no promise it cannot keep: {message}"
    );
    assert!(!message.contains("when storage works again"), "{message}");
    let details = &last.data["details"];
    assert_eq!(details["will_retry"], false, "{details}");
    let spool_dir = std::path::PathBuf::from(details["spool_dir"].as_str().expect("spool_dir"));
    assert!(
        message.contains(&spool_dir.display().to_string()),
        "{message}"
    );
    assert!(spool_dir.join("manifest.json").exists(), "files kept");
    let uploads = || {
        fake.requests()
            .iter()
            .filter(|r| r.path().starts_with("/storage/v1/object/images/"))
            .count()
    };
    assert_eq!(uploads(), 1, "a refusal is not retried");

    // The periodic flush leaves it alone: no upload loop.
    for _ in 0..3 {
        assert_eq!(h.app.flush_spool(), 0);
    }
    assert_eq!(uploads(), 1, "the spool does not retry a refusal");
    assert!(spool_dir.join("manifest.json").exists());

    // Once the limit is raised, a restart (its start-up flush) uploads it.
    fake.set_file_size_limit("images", None);
    assert_eq!(h.app.flush_spool(), 0, "still not retried periodically");
    assert_eq!(h.app.flush_spool_at_start(), 1, "a restart tries it again");
    assert!(!spool_dir.exists(), "uploaded and removed from the spool");
    let job_id = last.data["job_id"].as_str().expect("job id");
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "completed", "{job}");
}

#[test]
fn a_failure_that_can_pass_is_promised_a_later_upload() {
    let h = supabase_harness(vec![]);
    h.supabase.as_ref().expect("fake").set_down(true);
    let (status, answer) = h.post_json("/generate", &small_txt2img("outage"));
    assert_eq!(status, 502, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("when storage works again"), "{message}");
    assert_eq!(answer["error"]["details"]["will_retry"], true, "{answer}");
}

#[test]
fn supabase_down_spools_then_uploads_once_it_returns() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    fake.set_down(true);
    let (status, answer) = h.post_json("/generate", &small_txt2img("outage"));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("storage_failed")),
        "{answer}"
    );
    let job_id = answer["error"]["details"]["job_id"]
        .as_str()
        .expect("job id")
        .to_string();
    let spool_dir = std::path::PathBuf::from(
        answer["error"]["details"]["spool_dir"]
            .as_str()
            .expect("spool"),
    );
    assert!(spool_dir.exists());
    assert_eq!(
        h.app.flush_spool(),
        0,
        "still down: nothing stored, nothing lost"
    );
    assert!(spool_dir.exists());

    fake.set_down(false);
    assert_eq!(h.app.flush_spool(), 1);
    assert!(!spool_dir.exists(), "spool emptied once uploaded");
    let key = format!("{job_id}/0.png");
    assert!(
        fake.objects().keys().any(|k| k.ends_with(&key)),
        "image uploaded"
    );
    let rows = fake.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["job_id"], job_id.as_str());
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["result"]["images"][0]["key"], key.as_str());
    assert_eq!(job["result"]["recovered_from"]["code"], "storage_failed");
    // The recovered output is an asset too, with the hash of the bytes storage holds, so Comfy
    // API v2 lists it like an output stored at once.
    let stored = fake
        .objects()
        .into_iter()
        .find(|(path, _)| path.ends_with(&key))
        .expect("uploaded")
        .1
        .bytes;
    let (status, v2) = h.get_json(&format!("/api/v2/jobs/{job_id}"));
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["status"], "succeeded", "{v2}");
    let outputs = v2["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{v2}");
    assert_eq!(
        outputs[0]["hash"],
        comfyui_gateway::blobs::BlobHash::of(&stored).to_string(),
        "{v2}"
    );
}

#[test]
fn ready_is_503_naming_storage_while_supabase_is_down() {
    let h = supabase_harness(vec![]);
    assert_eq!(h.get_json("/ready").0, 200);
    h.supabase.as_ref().expect("fake").set_down(true);
    let (status, body) = h.get_json("/ready");
    assert_eq!(status, 503, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("supabase storage"), "{reasons}");
}

#[test]
fn housekeeping_uploads_the_spool_as_soon_as_it_starts() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    fake.set_down(true);
    let (status, answer) = h.post_json("/generate", &small_txt2img("left behind"));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("storage_failed"))
    );
    let spool_dir = std::path::PathBuf::from(
        answer["error"]["details"]["spool_dir"]
            .as_str()
            .expect("spool dir"),
    );
    fake.set_down(false);
    // What `main` starts at start-up: its first round runs at once, the next only an hour later.
    comfyui_gateway::app::App::spawn_housekeeping(&h.app, std::time::Duration::from_secs(3600))
        .expect("housekeeping starts");
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool_dir.exists() && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !spool_dir.exists(),
        "the spooled job was uploaded at start-up"
    );
    assert_eq!(fake.rows().len(), 1);
}

#[test]
fn a_job_spooled_before_a_restart_is_completed_by_the_restarted_gateway() {
    let data = common::harness::TestDir::new();
    let with_data = || Options {
        supabase: true,
        vars: vec![("DATA_DIR", data.path().display().to_string())],
        ..Options::default()
    };
    let job_id = {
        let h = Harness::with(with_data());
        h.supabase.as_ref().expect("fake").set_down(true);
        let (status, answer) = h.post_json("/generate", &small_txt2img("outage"));
        assert_eq!(status, 502, "{answer}");
        answer["error"]["details"]["job_id"]
            .as_str()
            .expect("job id")
            .to_string()
    }; // the gateway stops here, its job and its spooled image left in DATA_DIR
    let h = Harness::with(with_data());
    let (_, before) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(before["error"]["code"], "storage_failed", "{before}");
    assert_eq!(
        h.app.flush_spool(),
        1,
        "the restarted gateway uploads the spool"
    );
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "completed", "{job}");
    let rows = h.supabase.as_ref().expect("fake").rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["job_id"], job_id.as_str());
}

#[test]
fn a_5xx_that_outlasts_the_retries_is_spooled_for_a_later_upload_not_refused() {
    let h = supabase_harness(vec![]);
    let fake = h.supabase.as_ref().expect("fake");
    // As many 503s as the storage makes attempts (see `storage_for`): the job's upload fails.
    fake.fail_next(
        Route::Upload,
        4,
        503,
        error_body("503", "Service Unavailable", "upstream overloaded", ""),
    );
    let (status, answer) = h.post_json("/generate", &small_txt2img("overloaded"));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("storage_failed")),
        "{answer}"
    );
    let details = &answer["error"]["details"];
    assert_eq!(details["will_retry"], true, "a 5xx can pass: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("when storage works again"), "{message}");
    assert!(
        !message.contains("will not be uploaded automatically"),
        "{message}"
    );
    let job_id = details["job_id"].as_str().expect("job id");
    assert_eq!(h.app.spool.refusal(job_id), None, "not marked refused");

    // The next periodic flush (no restart needed) uploads it.
    assert_eq!(h.app.flush_spool(), 1);
    let spool_dir = std::path::PathBuf::from(details["spool_dir"].as_str().expect("spool_dir"));
    assert!(!spool_dir.exists(), "uploaded and removed from the spool");
    let uploads = fake
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/storage/v1/object/images/"))
        .count();
    assert_eq!(
        uploads, 5,
        "four 503s while the job ran, then the flush's upload"
    );
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "completed", "{job}");
}
