//! Quantized: a self-hosted, billed, OpenAI-compatible LLM API gateway.

pub mod admin_cli;
pub mod api;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod json_body;
pub mod ledger;
pub mod metering;
pub mod metrics;
pub mod providers;
pub mod routing;
pub mod store;
pub mod strict_json;
pub mod telemetry;
pub mod validation;

pub use app::Application;
pub use config::Settings;
