//! The billing half of every metered request: reserve before the upstream call, settle on
//! every way out. `Meter` is a guard: dropped without settling (an error, a client gone
//! before any output), it releases its hold, so no path can leave credits held.

use actix::Addr;
use serde_json::{json, Value};

use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::ledger::{CreditLedger, Hold, LedgerError, Release, Reserve, Settle, Settled};
use crate::providers::TokenUsage;
use crate::store::usage::Settlement;

pub struct Meter {
    ledger: Addr<CreditLedger>,
    hold: Option<Hold>,
    /// The usage row to write; tokens and credits are filled in at settlement.
    record: Settlement,
}

impl Meter {
    pub async fn reserve(
        ledger: &Addr<CreditLedger>,
        reserve: Reserve,
        record: Settlement,
    ) -> Result<Meter, ApiError> {
        let hold = ledger
            .send(reserve)
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("ledger: {e}")))?;
        let hold = hold.map_err(ledger_error)?;
        Ok(Meter { ledger: ledger.clone(), hold: Some(hold), record })
    }

    /// Who served the request, for the usage row (known only after routing).
    pub fn set_provider(&mut self, provider: &str) {
        self.record.provider = provider.to_string();
    }

    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// The output ceiling the hold pays for.
    pub fn max_output_tokens(&self) -> u64 {
        self.hold.as_ref().map_or(0, |h| h.max_output_tokens)
    }

    /// Charges for `usage` and waits until the charge is committed.
    pub async fn settle(
        mut self,
        usage: TokenUsage,
        status: &'static str,
    ) -> Result<Settled, ApiError> {
        let hold = self
            .hold
            .take()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("meter settled twice")))?;
        let mut record = self.record.clone();
        record.prompt_tokens = usage.prompt_tokens;
        record.completion_tokens = usage.completion_tokens;
        record.status = status;
        let settled = self.ledger.send(Settle { hold, usage: record }).await;
        settled
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("ledger: {e}")))?
            .map_err(ledger_error)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            self.ledger.do_send(Release(hold));
        }
    }
}

/// The usage row of a metered request before it is settled: who, what, where.
pub fn usage_record(
    request_id: String,
    caller: &AuthContext,
    endpoint: &'static str,
    model: &str,
    stream: bool,
) -> Settlement {
    Settlement {
        request_id,
        license_id: caller.license_id.clone(),
        api_key_id: Some(caller.key_id.clone()),
        endpoint,
        model: model.to_string(),
        provider: String::new(),
        stream,
        prompt_tokens: 0,
        completion_tokens: 0,
        micro_credits: 0,
        status: "completed",
    }
}

pub fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::InsufficientCredits => ApiError::InsufficientCredits,
        LedgerError::UnknownLicense => ApiError::Unauthorized,
        LedgerError::Refused(message) => ApiError::Conflict(message),
        LedgerError::Store(cause) => ApiError::Internal(anyhow::anyhow!("ledger: {cause}")),
    }
}

/// The usage object of every metered response: token counts plus what it cost and what
/// is left (`null` for an unlimited license).
pub fn usage_json(usage: TokenUsage, settled: Settled) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "credits_used": settled.credits_used,
        "credits_remaining": settled.credits_remaining,
    })
}
