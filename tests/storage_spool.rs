//! The spool against the fake Supabase: images kept through an outage reach storage once it is
//! back, and stay safely on disk while it is not.

mod common;

use std::fs;
use std::path::PathBuf;

use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::storage::spool::{PendingImage, Spool};
use comfyui_gateway::storage::supabase::SupabaseStorage;
use comfyui_gateway::storage::{ImageRecord, Storage};
use common::fake_supabase::{FakeSupabase, storage_for};
use serde_json::json;

fn storage(fake: &FakeSupabase) -> SupabaseStorage {
    storage_for(fake, |o| o.retry.attempts = 2)
}

fn temp_spool() -> Spool {
    let dir: PathBuf = std::env::temp_dir().join(format!("gateway-spool-test-{}", new_uuid()));
    Spool::new(dir).expect("the temp dir is writable")
}

/// A job with two images, as the job thread would hand it over: keys, bytes, pending rows.
fn job() -> (String, Vec<PendingImage>, Vec<ImageRecord>) {
    let job = new_uuid();
    let images: Vec<_> = (0..2)
        .map(|i| {
            (
                format!("{job}/{i}.png"),
                format!("png {i}").into_bytes(),
                "image/png".to_string(),
            )
        })
        .collect();
    let rows = (0..2u32)
        .map(|i| ImageRecord {
            id: new_uuid(),
            job_id: job.clone(),
            prompt_id: None,
            workflow: "txt2img".into(),
            image_index: i,
            storage_key: format!("{job}/{i}.png"),
            url: String::new(),
            width: 64,
            height: 64,
            bytes: 5,
            seed: Some(u64::MAX - 1),
            params: json!({"prompt": "a red fox"}),
            created_at: "2026-11-24T04:49:01Z".into(),
        })
        .collect();
    (job, images, rows)
}

#[test]
fn a_job_spooled_during_an_outage_is_flushed_when_supabase_is_back() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let spool = temp_spool();
    let (job, images, rows) = job();

    fake.set_down(true);
    let (key, bytes, content_type) = &images[0];
    let error = storage
        .put_image(key, bytes, content_type)
        .expect_err("Supabase is down");
    assert!(error.is_transient());
    let job_dir = spool.save(&job, &images, &rows).expect("spooled");
    assert_eq!(
        spool.pending().expect("listable"),
        std::slice::from_ref(&job)
    );

    fake.set_down(false);
    let outcomes = spool.flush_all(&storage);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].0, job);
    let recorded = outcomes[0].1.as_ref().expect("flushed");

    let objects = fake.objects();
    for (key, bytes, _) in &images {
        assert_eq!(&objects[&format!("images/{key}")].bytes, bytes);
    }
    let stored = fake.rows();
    assert_eq!(stored.len(), 2);
    for (row, (key, _, _)) in stored.iter().zip(&images) {
        let url = format!("{}/storage/v1/object/public/images/{key}", fake.url());
        assert_eq!(row["url"], json!(url));
        assert_eq!(row["seed"], json!(u64::MAX - 1));
    }
    assert_eq!(recorded.len(), 2);
    assert!(!job_dir.exists(), "the spooled folder is removed");
    assert!(spool.pending().expect("listable").is_empty());
    fs::remove_dir_all(spool.dir()).expect("cleanup");
}

#[test]
fn a_flush_while_still_down_leaves_the_files_for_later() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let spool = temp_spool();
    let (job, images, rows) = job();
    let job_dir = spool.save(&job, &images, &rows).expect("spooled");

    fake.set_down(true);
    let error = spool
        .flush_one(&job, &storage)
        .expect_err("Supabase is down");
    assert!(error.is_transient());
    assert!(job_dir.join("manifest.json").is_file());
    assert!(job_dir.join("image-0").is_file());
    assert_eq!(
        spool.pending().expect("listable"),
        std::slice::from_ref(&job)
    );
    assert!(fake.objects().is_empty());

    // Back up, but refusing (a permanent error): the job still stays spooled.
    fake.set_down(false);
    fake.fail_next(
        common::fake_supabase::Route::Upload,
        1,
        400,
        r#"{"statusCode":"403","error":"Unauthorized","message":"new row violates row-level security policy","code":"AccessDenied"}"#,
    );
    let error = spool
        .flush_one(&job, &storage)
        .expect_err("the first upload is refused");
    assert_eq!(error.code(), Some("AccessDenied"));
    assert_eq!(fake.requests().len(), 1, "a 403 is not retried");
    assert!(job_dir.is_dir());

    spool.flush_one(&job, &storage).expect("flushed");
    assert_eq!(fake.objects().len(), 2);
    assert_eq!(fake.rows().len(), 2);
    assert!(!job_dir.exists());
    fs::remove_dir_all(spool.dir()).expect("cleanup");
}
