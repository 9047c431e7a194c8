//! A large output travels from ComfyUI's `/view` to storage without ever sitting whole in
//! memory: the process's heap, counted by a global allocator, never holds more than a few
//! buffers while a body many times that size goes through.
//!
//! Alone in its own test binary, so that no other test's allocations blur the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use comfyui_gateway::comfyui::{ClientOptions, ComfyClient, ImageRef};
use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::media;
use comfyui_gateway::storage::Storage;
use comfyui_gateway::storage::local::LocalStorage;
use comfyui_gateway::storage::spool::Spool;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// The system allocator, counting the bytes held and their peak.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`; the counters are
// bookkeeping only and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees about `layout` are passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The video's size: many times the heap the transfer may use.
const VIDEO_BYTES: u64 = 96 * 1024 * 1024;
/// The most the heap may grow while it passes: a few copy buffers, nowhere near the video.
const HEAP_CAP: isize = 8 * 1024 * 1024;

/// A video's bytes, generated as they are read.
struct Video {
    sent: u64,
}

impl Read for Video {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        const FTYP: &[u8] = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";
        let n = (buf.len() as u64).min(VIDEO_BYTES - self.sent) as usize;
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let at = self.sent as usize + i;
            *byte = FTYP.get(at).copied().unwrap_or((at % 251) as u8);
        }
        self.sent += n as u64;
        Ok(n)
    }
}

#[test]
fn a_large_video_streams_from_view_to_local_storage_in_small_pieces() {
    // A stand-in for ComfyUI's /view, answering one request from a generator.
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let port = server.server_addr().to_ip().expect("tcp").port();
    let serving = std::thread::spawn(move || {
        let request = server
            .recv_timeout(Duration::from_secs(30))
            .expect("the server works")
            .expect("the client asks within 30 s");
        let response = tiny_http::Response::new(
            tiny_http::StatusCode(200),
            Vec::new(),
            Video { sent: 0 },
            Some(VIDEO_BYTES as usize),
            None,
        );
        let _ = request.respond(response);
    });

    let dir = std::env::temp_dir().join(format!("gateway-streaming-{}", new_uuid()));
    let spool = Spool::new(dir.join("spool")).expect("the temp dir is writable");
    let local = LocalStorage::new(dir.clone(), "http://127.0.0.1:8000".into());
    let client = ComfyClient::new(
        &format!("http://127.0.0.1:{port}"),
        ClientOptions::default(),
    )
    .expect("a valid URL");
    let job = new_uuid();

    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    // The steps a job takes: stream into the staging folder, identify, link into storage.
    let staging = spool.staging(&job).expect("staging folder");
    let mut download = client
        .open_file(&ImageRef {
            filename: "ComfyUI_00001_.mp4".into(),
            subfolder: "video".into(),
            kind: "output".into(),
        })
        .expect("the video is served");
    let received = staging
        .receive("0.part", &mut download, media::HEAD_LEN)
        .expect("received");
    let kind = media::identify(&received.head, "ComfyUI_00001_.mp4");
    let key = format!("{job}/0.{}", kind.extension);
    local
        .put_file(&key, &received.path, kind.content_type)
        .expect("stored");
    drop(staging);
    let grew = PEAK.load(Ordering::Relaxed) - start;
    serving.join().expect("the server thread ends");

    assert_eq!(received.bytes, VIDEO_BYTES);
    assert_eq!((kind.content_type, kind.extension), ("video/mp4", "mp4"));
    let stored = local.image_path(&key).expect("a servable key");
    assert_eq!(
        std::fs::metadata(&stored).expect("stored").len(),
        VIDEO_BYTES
    );
    assert!(
        grew < HEAP_CAP,
        "the heap grew by {grew} bytes for a {VIDEO_BYTES}-byte video"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
