//! One test binary for the whole HTTP surface (one build, shared by every test).

mod fake_search;
mod fake_upstream;
mod helpers;

mod admin;
mod auth;
mod billing;
mod chat_completions;
mod durability;
mod endpoints;
mod errors;
mod hostile;
mod jwt;
mod lifecycle;
mod metrics;
mod stress;
mod upstreams;
mod web_search;
