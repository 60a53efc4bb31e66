//! One test binary for the whole HTTP surface (one build, shared by every test).

mod fake_search;
mod fake_upstream;
mod helpers;

mod admin;
mod auth;
mod billing;
mod chat_completions;
mod endpoints;
mod errors;
mod jwt;
mod lifecycle;
mod metrics;
mod upstreams;
mod web_search;
