//! The spool against the fake Supabase: outputs of every kind kept through an outage reach
//! storage, with their content types, once it is back, and stay safely on disk while it is not.

mod common;

use std::fs;
use std::path::PathBuf;

use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::storage::spool::{PendingFile, Spool};
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

/// An output file: its key, bytes and content type.
type Output = (String, Vec<u8>, String);

/// A job with a video and a sound, as the job thread would hand it over: its files staged on
/// disk, and the pending rows. Also returns each file's key, bytes and content type.
fn job() -> (String, Vec<PendingFile>, Vec<ImageRecord>, Vec<Output>) {
    let job = new_uuid();
    let staged = std::env::temp_dir().join(format!("gateway-staged-{}", new_uuid()));
    fs::create_dir_all(&staged).expect("the temp dir is writable");
    let outputs: Vec<Output> = [
        ("mp4", "video/mp4", b"\0\0\0\x18ftypisom a video".as_slice()),
        (
            "wav",
            "audio/wav",
            b"RIFF\x24\0\0\0WAVEfmt a sound".as_slice(),
        ),
    ]
    .iter()
    .enumerate()
    .map(|(i, (extension, content_type, bytes))| {
        (
            format!("{job}/{i}.{extension}"),
            bytes.to_vec(),
            content_type.to_string(),
        )
    })
    .collect();
    let files = outputs
        .iter()
        .enumerate()
        .map(|(i, (key, bytes, content_type))| {
            let path = staged.join(format!("{i}.part"));
            fs::write(&path, bytes).expect("the temp dir is writable");
            PendingFile {
                key: key.clone(),
                path,
                content_type: content_type.clone(),
            }
        })
        .collect();
    let rows = outputs
        .iter()
        .enumerate()
        .map(|(i, (key, bytes, content_type))| ImageRecord {
            id: new_uuid(),
            job_id: job.clone(),
            prompt_id: None,
            workflow: "txt2video".into(),
            image_index: i as u32,
            storage_key: key.clone(),
            url: String::new(),
            width: (i == 0).then_some(832),
            height: (i == 0).then_some(480),
            bytes: bytes.len() as u64,
            kind: if i == 0 { "video" } else { "audio" }.into(),
            content_type: content_type.clone(),
            seed: Some(u64::MAX - 1),
            params: json!({"prompt": "a red fox"}),
            created_at: "2026-11-24T04:49:01Z".into(),
        })
        .collect();
    (job, files, rows, outputs)
}

#[test]
fn a_job_spooled_during_an_outage_is_flushed_when_supabase_is_back() {
    let fake = FakeSupabase::start();
    let storage = storage(&fake);
    let spool = temp_spool();
    let (job, files, rows, outputs) = job();

    fake.set_down(true);
    let error = storage
        .put_file(&files[0].key, &files[0].path, &files[0].content_type)
        .expect_err("Supabase is down");
    assert!(error.is_transient());
    let job_dir = spool.save(&job, &files, &rows).expect("spooled");
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
    for (key, bytes, content_type) in &outputs {
        let object = &objects[&format!("images/{key}")];
        assert_eq!(&object.bytes, bytes);
        assert_eq!(&object.content_type, content_type);
    }
    let stored = fake.rows();
    assert_eq!(stored.len(), 2);
    for (row, (key, _, content_type)) in stored.iter().zip(&outputs) {
        let url = format!("{}/storage/v1/object/public/images/{key}", fake.url());
        assert_eq!(row["url"], json!(url));
        assert_eq!(row["seed"], json!(u64::MAX - 1));
        assert_eq!(row["content_type"], json!(content_type));
    }
    assert_eq!(stored[0]["kind"], "video");
    assert_eq!(
        (stored[0]["width"].clone(), stored[1]["width"].clone()),
        (json!(832), json!(null))
    );
    assert_eq!(stored[1]["kind"], "audio");
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
    let (job, files, rows, _) = job();
    let job_dir = spool.save(&job, &files, &rows).expect("spooled");

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
