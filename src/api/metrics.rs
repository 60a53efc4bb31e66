use actix_web::{web, HttpResponse};

use crate::api::admin::Admin;
use crate::app::AppState;
use crate::error::ApiError;
use crate::metrics::{counter, gauge};
use crate::providers::breaker::{GetStatus, State};
use std::sync::atomic::Ordering;

/// GET /metrics (admin token): Prometheus text format (design §8).
pub async fn metrics(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut out = String::with_capacity(8 * 1024);
    state.metrics.render_requests(&mut out);
    state.metrics.render_histograms(&mut out);

    out.push_str("# HELP quantized_breaker_state Circuit state per provider: 0 closed, 1 half-open, 2 open.\n");
    out.push_str("# TYPE quantized_breaker_state gauge\n");
    let mut names: Vec<_> = state.breakers.keys().copied().collect();
    names.sort();
    let mut failures = String::new();
    for name in names {
        let status = state.breakers[name]
            .send(GetStatus)
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("breaker: {e}")))?;
        let value = match status.state {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        };
        out.push_str(&format!("quantized_breaker_state{{provider=\"{name}\"}} {value}\n"));
        failures.push_str(&format!(
            "quantized_breaker_consecutive_failures{{provider=\"{name}\"}} {}\n",
            status.consecutive_failures
        ));
    }
    out.push_str("# HELP quantized_breaker_consecutive_failures Consecutive upstream failures per provider.\n");
    out.push_str("# TYPE quantized_breaker_consecutive_failures gauge\n");
    out.push_str(&failures);

    let ledger = &state.ledger_stats;
    let commits = ledger.commits.load(Ordering::Relaxed);
    let writes = ledger.writes.load(Ordering::Relaxed);
    counter(&mut out, "quantized_ledger_commits_total", "Ledger transactions committed.", commits);
    counter(
        &mut out,
        "quantized_ledger_writes_total",
        "Ledger writes (settlements, adjustments) in those commits.",
        writes,
    );
    counter(
        &mut out,
        "quantized_ledger_failed_writes_total",
        "Ledger writes that failed.",
        ledger.failed_writes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "quantized_ledger_commit_seconds_total",
        "Time spent committing ledger transactions.",
        ledger.commit_micros_total.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let average = if commits == 0 { 0.0 } else { writes as f64 / commits as f64 };
    gauge(
        &mut out,
        "quantized_ledger_batch_size_average",
        "Writes per commit since start.",
        average,
    );
    gauge(
        &mut out,
        "quantized_ledger_batch_size_max",
        "Largest group commit since start.",
        ledger.largest_batch.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "quantized_credits_charged_total",
        "Micro-credits debited by committed requests.",
        ledger.credits_charged.load(Ordering::Relaxed),
    );
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(out))
}
