//! comfyui-gateway: put a ComfyUI image generator behind a small, dependable HTTP API.
//!
//! A client POSTs parameters to `/generate`; the gateway fills a workflow template, runs it on
//! ComfyUI, streams progress as Server-Sent Events once a second, stores the images (Supabase
//! Storage, or local disk), records their metadata, and ends the stream with links to the images.
//!
//! The design is deliberately plain: blocking I/O, one OS thread per client request, a fixed
//! handful of threads that move queued jobs along (one per ComfyUI backend, a dispatcher, a
//! ticker, a small output pool), crossbeam channels between them, no async runtime.
//! `ARCHITECTURE.md` follows one job through the modules; the README documents the HTTP API.
//!
//! # The whole flow, in-process
//!
//! The same pieces `main` uses, wired to the ComfyUI simulator (the `comfyui-sim` crate of this
//! workspace, a dev-dependency):
//!
//! ```
//! use std::sync::Arc;
//! use comfyui_gateway::{app::App, config::Config, server::Server};
//! use comfyui_sim::{ComfySim, SimOptions};
//!
//! let comfyui = ComfySim::start(SimOptions::default())?;
//! let data = std::env::temp_dir().join(format!("gateway-doc-{}", comfyui_gateway::ids::new_uuid()));
//! let bound = Server::bind("127.0.0.1:0")?;
//! let vars = [
//!     ("COMFYUI_URL", comfyui.url()),
//!     ("WORKFLOWS_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").to_string()),
//!     ("DATA_DIR", data.display().to_string()),
//!     ("PUBLIC_BASE_URL", format!("http://{}", bound.addr())),
//! ];
//! let config = Config::from_lookup(|name| {
//!     vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.clone())
//! })?;
//! let gateway = bound.serve(Arc::new(App::new(config)?))?;
//!
//! // A client asks for an image and waits for the JSON result.
//! let request = serde_json::json!({"workflow": "invert", "width": 32, "height": 32});
//! let mut response = ureq::post(format!("{}/generate", gateway.url()))
//!     .header("Accept", "application/json")
//!     .header("Content-Type", "application/json")
//!     .send(request.to_string())?;
//! let result: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
//! assert_eq!(result["images"][0]["width"], 32);
//! assert!(result["images"][0]["url"].as_str().unwrap().ends_with("/0.png"));
//! # std::fs::remove_dir_all(&data).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod app;
pub mod assets;
pub mod blobs;
pub mod cli;
pub mod comfyui;
pub mod config;
pub mod convert;
pub mod durable;
pub mod idempotency;
pub mod ids;
pub mod image;
pub mod job;
pub mod media;
pub mod metrics;
pub mod openapi;
pub mod percent;
pub mod server;
pub mod sse;
pub mod storage;
pub mod strip;
pub mod timestamp;
pub mod warmup;
pub mod webhook;
pub mod workflow;
