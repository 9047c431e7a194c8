//! The pipeline with Supabase storage: the exact requests Supabase sees, links, and failures.

mod common;

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
        .find(|r| r.method == "POST" && r.path == format!("/storage/v1/object/images/{key}"))
        .expect("the image was uploaded to the images bucket");
    assert_eq!(upload.header("apikey"), Some(fake.key()));
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
        .find(|r| r.method == "POST" && r.path.starts_with("/rest/v1/generations"))
        .expect("rows were inserted");
    assert_eq!(insert.header("apikey"), Some(fake.key()));
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
        !std::fs::read_dir(h.dir.path().join("spool"))
            .map(|d| d.count() > 0)
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
        .find(|r| r.path.starts_with("/storage/v1/object/sign/"))
        .expect("a sign request");
    let body: Value = serde_json::from_slice(&sign.body).expect("JSON");
    assert_eq!(body["expiresIn"], 60);
}
