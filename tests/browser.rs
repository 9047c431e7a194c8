//! The web page (`GET /`) end to end: headless Chromium drives it against a gateway and the
//! ComfyUI simulator, through `tests/browser/e2e.mjs` (playwright-core, Debian's Chromium).
//!
//! The browser tests need `node`, the npm package in `tests/browser` (`npm ci --prefix
//! tests/browser`) and `/usr/bin/chromium` (`apt-get install -y chromium`); `.ci/run` installs
//! them. Without them these tests fail, saying what to install; `SKIP_BROWSER_TESTS=1` skips
//! them instead, with a loud `SKIPPED:` line. Screenshots land in `tests/artifacts/`; with
//! `UPDATE_SCREENSHOT=1` the main one is also copied to `docs/screenshot.png` for the README.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use comfyui_sim::Failure;
use common::harness::{Harness, Options, agent};

/// Debian's Chromium: playwright-core drives it and never downloads a browser of its own.
const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn browser_dir() -> PathBuf {
    repo().join("tests").join("browser")
}

fn artifacts_dir() -> PathBuf {
    repo().join("tests").join("artifacts")
}

/// Each missing prerequisite, with the command that installs it.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let node_runs = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !node_runs {
        missing.push("Node.js 20 or later (`apt-get install -y nodejs npm`)".to_string());
    }
    let package = browser_dir().join("node_modules/playwright-core/package.json");
    if !package.is_file() {
        missing
            .push("the npm package playwright-core (`npm ci --prefix tests/browser`)".to_string());
    }
    if !Path::new(CHROMIUM).is_file() {
        missing.push(format!(
            "Chromium at {CHROMIUM} (`apt-get install -y chromium`)"
        ));
    }
    missing
}

/// Whether the browser test can run. Skips only when asked to, and then says so where it is seen
/// even on success: straight to stderr, past the test harness's output capture.
fn browser_available(test: &str) -> bool {
    if std::env::var("SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: {test}: SKIP_BROWSER_TESTS=1 is set, so the web page was NOT tested in a browser\n"
        );
        return false;
    }
    let missing = missing_prerequisites();
    assert!(
        missing.is_empty(),
        "the browser test needs {}. Install it (`.ci/run` does), or set SKIP_BROWSER_TESTS=1 to skip \
         the browser tests on purpose",
        missing.join(", and ")
    );
    true
}

/// A gateway and a simulator whose steps are slow enough (150 ms) for progress to be seen.
fn harness(vars: Vec<(&'static str, String)>) -> Harness {
    Harness::with(Options {
        vars,
        ..Options::step_ms(150)
    })
}

/// Runs `e2e.mjs` against the gateway and fails with its output unless every check passed.
///
/// With an API key, the simulator fails the first job in ComfyUI (`E2E_FIRST_JOB_FAILS`), so the
/// page's handling of a terminal `error` event is seen too.
fn run_e2e(h: &Harness, api_key: Option<&str>) {
    let mut command = Command::new("node");
    command
        .arg(browser_dir().join("e2e.mjs"))
        .arg(h.gateway.url())
        .arg(artifacts_dir())
        .current_dir(browser_dir());
    match api_key {
        Some(key) => {
            h.sim.fail_next(Failure::ExecutionError {
                node_id: None,
                exception_type: "torch.OutOfMemoryError".into(),
                message: "CUDA out of memory (simulated)".into(),
            });
            command
                .env("E2E_API_KEY", key)
                .env("E2E_FIRST_JOB_FAILS", "1")
        }
        None => command.env_remove("E2E_API_KEY"),
    };
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run node {}: {e}", browser_dir().display()));
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser test failed ({}): see the checks above and the screenshots in {}",
        output.status,
        artifacts_dir().display()
    );
}

#[test]
fn the_page_runs_a_job_shows_progress_and_the_image_and_cancels() {
    if !browser_available("the_page_runs_a_job_shows_progress_and_the_image_and_cancels") {
        return;
    }
    let h = harness(Vec::new());
    run_e2e(&h, None);
    if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = repo().join("docs");
        std::fs::create_dir_all(&docs).expect("docs/ is writable");
        std::fs::copy(
            artifacts_dir().join("page.png"),
            docs.join("screenshot.png"),
        )
        .expect("the screenshot the browser test saved can be copied to docs/");
    }
}

#[test]
fn the_page_asks_for_the_api_key_and_sends_it_with_every_call() {
    if !browser_available("the_page_asks_for_the_api_key_and_sends_it_with_every_call") {
        return;
    }
    let key = "page-test-key-7f3a";
    let h = harness(vec![("API_KEYS", format!("another-key,{key}"))]);
    run_e2e(&h, Some(key));
}

/// Runs without a browser: the page must load without a key, since the key is typed into it.
#[test]
fn the_page_is_public_html_while_the_api_needs_a_key() {
    let h = harness(vec![("API_KEYS", "secret-key".to_string())]);
    let mut page = agent()
        .get(&h.url("/"))
        .call()
        .expect("the gateway answers");
    assert_eq!(page.status().as_u16(), 200);
    let content_type = page.headers().get("Content-Type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
    let html = page.body_mut().read_to_string().expect("a readable page");
    assert!(html.starts_with("<!doctype html>") && html.contains("id=\"api-key\""));
    assert!(
        !html.contains("secret-key"),
        "the page must not carry a key"
    );
    let (status, _) = h.get_json("/workflows");
    assert_eq!(status, 401, "the API behind the page still needs the key");
}
