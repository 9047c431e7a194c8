//! A gateway wired to the ComfyUI simulator (and optionally the fake Supabase), on ephemeral
//! ports, with a scratch data directory that is removed afterwards.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use comfyui_gateway::app::App;
use comfyui_gateway::config::Config;
use comfyui_gateway::server::Server;
use comfyui_sim::{ComfySim, SimOptions};

use super::fake_supabase::{FakeSupabase, storage_for};
use super::sse_client::SseStream;

/// A scratch directory removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    /// A fresh empty directory under the system's temp dir.
    pub fn new() -> TestDir {
        let dir = std::env::temp_dir().join(format!(
            "comfyui-gateway-test-{}",
            comfyui_gateway::ids::new_uuid()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        TestDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to build a harness.
pub struct Options {
    /// Store in a fake Supabase instead of local disk.
    pub supabase: bool,
    /// Extra environment variables for the gateway's configuration.
    pub vars: Vec<(&'static str, String)>,
    /// The simulator's options.
    pub sim: SimOptions,
    /// Adjusts the app after it is built (e.g. shorter grace periods).
    pub tweak: fn(&mut App),
    /// More ComfyUI base URLs, after the harness's own simulator.
    pub more_backends: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            supabase: false,
            vars: Vec::new(),
            sim: SimOptions {
                step_delay: Duration::from_millis(5),
                ..SimOptions::default()
            },
            tweak: |_| {},
            more_backends: Vec::new(),
        }
    }
}

impl Options {
    /// The defaults, with the simulator taking `ms` per sampler step.
    pub fn step_ms(ms: u64) -> Options {
        let mut options = Options::default();
        options.sim.step_delay = Duration::from_millis(ms);
        options
    }
}

/// The gateway under test, the simulator behind it, and its data directory.
pub struct Harness {
    pub gateway: Server,
    pub app: Arc<App>,
    pub sim: ComfySim,
    pub supabase: Option<FakeSupabase>,
    pub dir: TestDir,
}

/// The repository's shipped templates.
pub fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")
}

impl Harness {
    /// Gateway + simulator with local storage and fast steps.
    pub fn start() -> Harness {
        Harness::with(Options::default())
    }

    /// Gateway + simulator built from `options`.
    pub fn with(options: Options) -> Harness {
        // RUST_LOG=debug cargo test ... shows what the gateway and the simulator did.
        let _ = env_logger::builder().is_test(true).try_init();
        let sim = ComfySim::start(options.sim).expect("the simulator starts");
        let supabase = options.supabase.then(FakeSupabase::start);
        let dir = TestDir::new();
        let bound = Server::bind("127.0.0.1:0").expect("the gateway binds");
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("LISTEN_ADDR", "127.0.0.1:0".to_string()),
            (
                "COMFYUI_URL",
                std::iter::once(sim.url())
                    .chain(options.more_backends.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("WORKFLOWS_DIR", workflows_dir().display().to_string()),
            ("DATA_DIR", dir.path().display().to_string()),
            ("PROGRESS_INTERVAL_MS", "100".to_string()),
            ("PUBLIC_BASE_URL", format!("http://{}", bound.addr())),
        ]);
        if let Some(fake) = &supabase {
            vars.insert("SUPABASE_URL", fake.url());
            vars.insert("SUPABASE_KEY", fake.key().to_string());
        }
        vars.extend(options.vars);
        let config =
            Config::from_lookup(|name| vars.get(name).cloned()).expect("valid test config");
        let mut app = App::new(config).expect("the app builds");
        app.run.comfyui_grace = Duration::from_secs(3);
        if let Some(fake) = &supabase {
            // The same storage, with retries measured in milliseconds instead of seconds.
            let ttl = app.config.supabase.as_ref().map(|s| s.signed_url_ttl_secs);
            let storage = storage_for(fake, |o| o.signed_url_ttl_secs = ttl.unwrap_or(0));
            app.storage = Arc::new(storage);
        }
        (options.tweak)(&mut app);
        let app = Arc::new(app);
        let gateway = bound.serve(Arc::clone(&app)).expect("the gateway serves");
        Harness {
            gateway,
            app,
            sim,
            supabase,
            dir,
        }
    }

    /// `http://ADDR{path}` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    /// POSTs JSON and reads a JSON answer (`Accept: application/json`).
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = agent()
            .post(&self.url(path))
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        read_json(response)
    }

    /// GETs a path and reads the JSON answer.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        read_json(agent().get(&self.url(path)).call())
    }

    /// DELETEs a path and reads the JSON answer.
    pub fn delete_json(&self, path: &str) -> (u16, Value) {
        read_json(agent().delete(&self.url(path)).call())
    }

    /// GETs raw bytes.
    pub fn get_bytes(&self, url: &str) -> (u16, Vec<u8>) {
        let mut response = agent().get(url).call().expect("the gateway answers");
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .expect("a readable body");
        (status, bytes)
    }

    /// Opens `POST /generate` as an SSE stream.
    pub fn generate_stream(&self, body: &Value) -> SseStream {
        SseStream::open(self.gateway.addr(), "POST", "/generate", Some(body), &[])
    }

    /// Opens `GET path` as an SSE stream with extra headers.
    pub fn get_stream(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::open(self.gateway.addr(), "GET", path, None, headers)
    }

    /// The count of jobs that ended in `state`, once it reaches `expected` (or after 10 s).
    ///
    /// A job's terminal event is visible a moment before the engine counts it, so a test that
    /// saw every job end waits here for the counter rather than reading it at once.
    #[allow(dead_code)] // not every test binary reads the counters
    pub fn finished_count(&self, state: &str, expected: u64) -> u64 {
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let count = self.app.metrics.jobs_finished(state);
            if count >= expected || std::time::Instant::now() >= give_up {
                return count;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A ureq agent that returns error statuses as responses, with test-sized timeouts.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn read_json(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .expect("a readable body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"));
    (status, value)
}

/// A tiny txt2img request for the simulator.
pub fn small_txt2img(prompt: &str) -> Value {
    serde_json::json!({
        "workflow": "txt2img", "prompt": prompt, "seed": 42,
        "steps": 3, "width": 64, "height": 64,
    })
}
