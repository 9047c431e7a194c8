//! The ComfyUI client: HTTP calls ([`ComfyClient`]), the websocket ([`Monitor`]) and the typed
//! messages both carry ([`WsEvent`], [`HistoryEntry`]).
//!
//! It speaks ComfyUI's API as its server defines it, older and newer variants alike, and knows
//! nothing of the gateway's own HTTP handlers, SSE or storage. Everything blocks, and everything
//! is bounded by a timeout.
//!
//! A single prompt can be driven like this (names as in ComfyUI's own API examples; the gateway
//! itself keeps one such websocket per backend and routes its messages by `prompt_id`):
//!
//! ```no_run
//! use std::time::Duration;
//! use comfyui_gateway::comfyui::{ClientOptions, ComfyClient, Monitor, WsEvent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ComfyClient::new("http://127.0.0.1:8188", ClientOptions::default())?;
//! let client_id = comfyui_gateway::ids::new_uuid();
//! // Connect first: ComfyUI sends execution events only to a client id that is connected.
//! let mut monitor = Monitor::connect(client.base_url(), &client_id, Duration::from_secs(5))?;
//! let graph = serde_json::json!({ /* an API-format graph */ });
//! let queued = client.queue_prompt(&graph, &client_id)?;
//! loop {
//!     match monitor.next_event(Duration::from_millis(250))? {
//!         Some(event) if event.prompt_id() != Some(&queued.prompt_id) => {}
//!         Some(WsEvent::ExecutionSuccess { .. }) => break,
//!         Some(WsEvent::Executing { node: None, .. }) => break,
//!         Some(WsEvent::ExecutionError { failure, .. }) => return Err(failure.to_string().into()),
//!         _ => {} // progress, previews, status, or nothing yet
//!     }
//! }
//! monitor.close();
//! if let Some(entry) = client.get_history(&queued.prompt_id)? {
//!     for (node, image) in entry.images() {
//!         let png = client.get_image(image)?;
//!         println!("node {node}: {} ({} bytes)", image.filename, png.len());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod http;
mod messages;
mod url;
mod warnings;
mod ws;

pub(crate) use error::truncate;
pub use error::{ComfyError, describe_node_errors};
pub use http::{
    ClientOptions, ComfyClient, FileDownload, MAX_IMAGE_BYTES, MAX_OUTPUT_BYTES, QueueSnapshot,
    QueuedPrompt,
};
pub use messages::{
    ExecutionFailure, HistoryEntry, HistoryStatus, ImageRef, NodeOutput, NodeProgress, NodeState,
    OutputFile, PreviewFormat, WsEvent, compare_node_ids,
};
pub use warnings::dropped_outputs;
pub use ws::{Monitor, MonitorError};
