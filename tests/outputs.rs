//! Outputs of every kind on local disk, as a client downloads them through the gateway: the
//! right content type per kind, and nothing served as a page.

mod common;

use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::storage::Storage;
use common::harness::{Harness, agent};

#[test]
fn every_stored_kind_is_served_with_its_content_type() {
    let h = Harness::start();
    let local = h.app.local.as_ref().expect("the harness stores locally");
    let job = new_uuid();
    let staged = h.dir.path().join("staged.part");
    let outputs: [(&str, &[u8], &str); 5] = [
        ("gif", b"GIF89a\x01\0\x01\0;", "image/gif"),
        ("mp4", b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2", "video/mp4"),
        ("wav", b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
        ("glb", b"glTF\x02\0\0\0", "model/gltf-binary"),
        (
            "bin",
            b"<html><script>alert(1)</script>",
            "application/octet-stream",
        ),
    ];
    for (index, (extension, bytes, content_type)) in outputs.into_iter().enumerate() {
        std::fs::write(&staged, bytes).expect("the data dir is writable");
        let key = format!("{job}/{index}.{extension}");
        let url = local
            .put_file(&key, &staged, content_type)
            .expect("local storage takes every kind");
        std::fs::remove_file(&staged).expect("the staged file stays for its owner");
        assert_eq!(url, h.url(&format!("/images/{key}")));

        let mut response = agent().get(&url).call().expect("the gateway answers");
        assert_eq!(response.status(), 200, "{key}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some(content_type),
            "{key}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        let body = response.body_mut().read_to_vec().expect("a body");
        assert_eq!(body, bytes, "{key}");
    }

    // Keys the gateway never writes are not served, whatever is on disk.
    let folder = h.dir.path().join("images").join(&job);
    std::fs::write(folder.join("9.html"), b"<script>").expect("writable");
    let response = agent()
        .get(&h.url(&format!("/images/{job}/9.html")))
        .call()
        .expect("the gateway answers");
    assert_eq!(response.status(), 404);
}
