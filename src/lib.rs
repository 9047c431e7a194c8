//! comfyui-gateway: put a ComfyUI image generator behind a small, dependable HTTP API.

pub mod api;
pub mod app;
pub mod comfyui;
pub mod config;
pub mod ids;
pub mod image;
pub mod job;
pub mod metrics;
pub mod server;
pub mod sim;
pub mod sse;
pub mod storage;
pub mod timestamp;
pub mod workflow;
