//! Per-request context: a request id, the gateway's own overhead, one log line a request.

use std::cell::Cell;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};

use crate::app::AppState;
use crate::metrics::RequestLabels;

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id the middleware gave this request (a fresh one outside the middleware).
    pub fn of(req: &HttpRequest) -> String {
        req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_else(new_request_id)
    }
}

fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// Time spent waiting for the upstream, which is not the gateway's overhead.
#[derive(Default)]
pub struct UpstreamWait(pub Cell<Duration>);

pub fn add_upstream_wait(req: &HttpRequest, waited: Duration) {
    let mut ext = req.extensions_mut();
    let wait = ext.get_or_insert_with(UpstreamWait::default);
    wait.0.set(wait.0.get() + waited);
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.path().to_owned();
    let mut res = next.call(req).await?;
    let upstream =
        res.request().extensions().get::<UpstreamWait>().map(|w| w.0.get()).unwrap_or_default();
    let overhead = started.elapsed().saturating_sub(upstream);
    let overhead_ms = overhead.as_secs_f64() * 1000.0;
    if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
        let labels = res.request().extensions().get::<RequestLabels>().cloned();
        state.metrics.record_request(&path, labels.as_ref(), res.status().as_u16(), overhead);
        if !upstream.is_zero() {
            state.metrics.upstream.observe(upstream);
        }
    }
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{overhead_ms:.3}")) {
        headers.insert(HeaderName::from_static("x-quantized-overhead-ms"), value);
    }
    log::info!(target: "quantized::request", "{id} {method} {path} {} overhead={overhead_ms:.3}ms", res.status().as_u16());
    Ok(res)
}

/// Names the model and provider of a request in its metrics.
pub fn label_request(req: &HttpRequest, model: &str, provider: Option<&'static str>) {
    req.extensions_mut().insert(RequestLabels { model: Some(model.to_string()), provider });
}

pub fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info,actix_server=warn");
    let _ = env_logger::Builder::from_env(env).try_init();
}
