//! No thread or file descriptor outlives its job: 200 jobs, half of whose clients hang up
//! mid-stream. Alone in its own test binary, so no other test's threads are counted.

mod common;

use common::harness::{Harness, Options};
use serde_json::json;
use std::time::{Duration, Instant};

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Waits (bounded) for a count to come back to at most `limit`; returns the last count.
fn settles_to(limit: usize, dir: &str) -> usize {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let now = count_entries(dir);
        if now <= limit || Instant::now() >= give_up {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_hundred_jobs_with_random_disconnects_leak_nothing() {
    let h = Harness::with(Options::step_ms(1));
    // Warm up once so lazily created threads and pooled connections exist before counting.
    let body = json!({"workflow": "invert", "width": 8, "height": 8});
    assert_eq!(h.post_json("/generate", &body).0, 200);
    let threads_before = count_entries("/proc/self/task");
    let fds_before = count_entries("/proc/self/fd");

    let mut seed = 0x9e37_79b9_u64;
    for i in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let body = json!({"workflow": "invert", "width": 8, "height": 8, "color": i});
        let mut stream = h.generate_stream(&body);
        assert_eq!(stream.status, 200, "job {i}");
        if seed % 2 == 0 {
            let first = stream.next_event().expect("queued");
            assert_eq!(first.event, "queued");
            drop(stream); // hang up mid-stream
        } else {
            let events = stream.until_terminal();
            assert_eq!(events.last().map(|e| e.event.as_str()), Some("complete"));
        }
    }
    // Every job finishes even when nobody watched it to the end.
    let give_up = Instant::now() + Duration::from_secs(30);
    while h.app.jobs.active() > 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.app.jobs.active(), 0, "all 200 jobs finished");
    assert_eq!(h.finished_count("completed", 201), 201);

    let threads_after = settles_to(threads_before, "/proc/self/task");
    assert!(
        threads_after <= threads_before,
        "threads: {threads_before} before, {threads_after} after"
    );
    // A little slack for pooled keep-alive connections to the simulator.
    let fds_after = settles_to(fds_before + 4, "/proc/self/fd");
    assert!(
        fds_after <= fds_before + 4,
        "file descriptors: {fds_before} before, {fds_after} after"
    );
}
