//! The CreditLedger: the only place balances change. It keeps every active license's
//! balance and open holds in memory (so a reserve is a map lookup), and hands each change to
//! the writer thread, answering only once the change is committed.
//!
//! Invariant: for a limited license, `held ≤ available`, and every charge is at most its
//! hold, so no order of events can take a balance below zero.

pub mod price;
pub mod writer;

use std::collections::HashMap;

use actix::prelude::*;

use crate::store::usage::{Adjustment, LedgerWrite, Settlement};
use crate::store::{self, Pool};
use price::{Price, Prices, PRICE_SCALE};
use writer::Writer;

/// The smallest reply worth sending: below this many affordable output tokens, 402.
pub const MIN_OUTPUT_TOKENS: u64 = 16;

#[derive(Debug, derive_more::Display)]
pub enum LedgerError {
    #[display("insufficient credits")]
    InsufficientCredits,
    #[display("unknown license")]
    UnknownLicense,
    #[display("{_0}")]
    Refused(String),
    #[display("ledger storage failed: {_0}")]
    Store(String),
}

struct Account {
    /// Committed balance; `None` = unlimited.
    available: Option<i64>,
    used: i64,
    /// Sum of open holds.
    held: i64,
}

impl Account {
    fn spendable(&self) -> Option<i64> {
        self.available.map(|a| a - self.held)
    }
}

pub struct CreditLedger {
    pool: Pool,
    writer: Writer,
    accounts: HashMap<String, Account>,
}

impl CreditLedger {
    pub fn new(pool: Pool, writer: Writer) -> Self {
        Self { pool, writer, accounts: HashMap::new() }
    }

    /// Loads a license's committed balance the first time it is seen.
    fn account(&mut self, license_id: &str) -> Result<&mut Account, LedgerError> {
        if !self.accounts.contains_key(license_id) {
            let conn = store::get(&self.pool).map_err(|e| LedgerError::Store(format!("{e:#}")))?;
            let balance = store::licenses::balance(&conn, license_id)
                .map_err(|e| LedgerError::Store(format!("{e:#}")))?
                .ok_or(LedgerError::UnknownLicense)?;
            self.accounts.insert(
                license_id.to_string(),
                Account { available: balance.available, used: balance.used, held: 0 },
            );
        }
        self.accounts.get_mut(license_id).ok_or(LedgerError::UnknownLicense)
    }
}

impl Actor for CreditLedger {
    type Context = Context<Self>;
}

/// Money set aside for one request until it settles.
#[derive(Debug)]
pub struct Hold {
    pub license_id: String,
    pub amount: i64,
    pub prices: Prices,
    /// Output tokens the hold pays for; the request must not ask upstream for more.
    pub max_output_tokens: u64,
}

/// Holds the worst-case cost of a request: the prompt estimate plus `max_output_tokens`,
/// lowered to what the balance can pay for (never below `MIN_OUTPUT_TOKENS`).
#[derive(Message)]
#[rtype(result = "Result<Hold, LedgerError>")]
pub struct Reserve {
    pub license_id: String,
    pub prices: Prices,
    pub prompt_tokens: u64,
    pub max_output_tokens: u64,
}

impl Reserve {
    /// A hold for `units` of a fixed-price tool (a web search, a fetched URL) at
    /// `micro_credits_per_unit` each: the units are billed as input tokens at that price, with no
    /// output side, so settling with fewer units charges less and never more than the hold.
    /// `None` when the price is negative or above the largest per-unit price the ledger takes
    /// (one credit).
    pub fn units(license_id: String, micro_credits_per_unit: i64, units: u64) -> Option<Reserve> {
        let input = micro_credits_per_unit.checked_mul(PRICE_SCALE).and_then(Price::from_units)?;
        Some(Reserve {
            license_id,
            prices: Prices { input, output: Price::ZERO },
            prompt_tokens: units,
            max_output_tokens: 0,
        })
    }
}

impl Handler<Reserve> for CreditLedger {
    type Result = Result<Hold, LedgerError>;

    fn handle(&mut self, msg: Reserve, _: &mut Context<Self>) -> Self::Result {
        let account = self.account(&msg.license_id)?;
        let full = msg.prices.cost(msg.prompt_tokens, msg.max_output_tokens);
        let (amount, max_output_tokens) = match account.spendable() {
            None => (full, msg.max_output_tokens),
            Some(spendable) if full <= spendable => (full, msg.max_output_tokens),
            Some(spendable) => {
                let affordable =
                    msg.prices.affordable_output(spendable, msg.prompt_tokens).unwrap_or(0);
                if affordable < MIN_OUTPUT_TOKENS.min(msg.max_output_tokens) || affordable == 0 {
                    return Err(LedgerError::InsufficientCredits);
                }
                let tokens = affordable.min(msg.max_output_tokens);
                (msg.prices.cost(msg.prompt_tokens, tokens), tokens)
            }
        };
        account.held += amount;
        Ok(Hold { license_id: msg.license_id, amount, prices: msg.prices, max_output_tokens })
    }
}

/// Gives a hold back untouched: the request failed before anything was delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub Hold);

impl Handler<Release> for CreditLedger {
    type Result = ();

    fn handle(&mut self, Release(hold): Release, _: &mut Context<Self>) {
        if let Some(account) = self.accounts.get_mut(&hold.license_id) {
            account.held -= hold.amount;
        }
    }
}

/// What a settled request cost and what is left.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub credits_used: i64,
    pub credits_remaining: Option<i64>,
}

/// Turns a hold into a charge for the tokens actually used, and records the usage row,
/// the debit and its ledger entry in one committed transaction before answering.
#[derive(Message)]
#[rtype(result = "Result<Settled, LedgerError>")]
pub struct Settle {
    pub hold: Hold,
    /// The usage row; its `micro_credits` is filled in here.
    pub usage: Settlement,
}

impl Handler<Settle> for CreditLedger {
    type Result = ResponseActFuture<Self, Result<Settled, LedgerError>>;

    fn handle(&mut self, msg: Settle, _: &mut Context<Self>) -> Self::Result {
        let Settle { hold, mut usage } = msg;
        let cost = hold.prices.cost(usage.prompt_tokens, usage.completion_tokens);
        let license_id = hold.license_id.clone();
        let applied = self.account(&license_id).map(|account| {
            account.held -= hold.amount;
            // A limited license never pays more than was held; an unlimited one pays the cost.
            let charge = if account.available.is_some() { cost.min(hold.amount) } else { cost };
            if let Some(available) = account.available.as_mut() {
                *available -= charge;
            }
            account.used += charge;
            (charge, account.available)
        });
        let (charge, remaining) = match applied {
            Ok(v) => v,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        usage.micro_credits = charge;
        let committed = self.writer.submit(LedgerWrite::Settle(usage));
        Box::pin(
            async move { committed.await.unwrap_or_else(|_| Err("ledger writer gone".into())) }
                .into_actor(self)
                .map(move |result, act, _| match result {
                    Ok(()) => Ok(Settled { credits_used: charge, credits_remaining: remaining }),
                    Err(e) => {
                        // Not written: undo the in-memory charge so memory and disk agree.
                        if let Some(account) = act.accounts.get_mut(&license_id) {
                            if let Some(available) = account.available.as_mut() {
                                *available += charge;
                            }
                            account.used -= charge;
                        }
                        Err(LedgerError::Store(e))
                    }
                }),
        )
    }
}

/// An administrator's top-up (positive) or removal (negative).
#[derive(Message)]
#[rtype(result = "Result<(), LedgerError>")]
pub struct Adjust(pub Adjustment);

impl Handler<Adjust> for CreditLedger {
    type Result = ResponseActFuture<Self, Result<(), LedgerError>>;

    fn handle(&mut self, Adjust(adjustment): Adjust, _: &mut Context<Self>) -> Self::Result {
        let delta = adjustment.micro_credits;
        let license_id = adjustment.license_id.clone();
        let checked = self.account(&license_id).and_then(|account| {
            let Some(available) = account.available else {
                return Err(LedgerError::Refused(
                    "License is unlimited; its balance cannot change".into(),
                ));
            };
            // Money held by requests in flight cannot be removed from under them.
            match available.checked_add(delta) {
                Some(after) if after >= account.held => {
                    account.available = Some(after);
                    Ok(())
                }
                Some(_) => Err(LedgerError::Refused("Balance cannot go below zero".into())),
                None => Err(LedgerError::Refused("Balance would overflow".into())),
            }
        });
        if let Err(e) = checked {
            return Box::pin(fut::ready(Err(e)));
        }
        let committed = self.writer.submit(LedgerWrite::Adjust(adjustment));
        Box::pin(
            async move { committed.await.unwrap_or_else(|_| Err("ledger writer gone".into())) }
                .into_actor(self)
                .map(move |result, act, _| {
                    result.map_err(|e| {
                        if let Some(available) =
                            act.accounts.get_mut(&license_id).and_then(|a| a.available.as_mut())
                        {
                            *available -= delta;
                        }
                        LedgerError::Store(e)
                    })
                }),
        )
    }
}

/// The live balance of a license, as `GET /v1/license` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub available: Option<i64>,
    pub used: i64,
}

#[derive(Message)]
#[rtype(result = "Result<Balance, LedgerError>")]
pub struct GetBalance(pub String);

impl Handler<GetBalance> for CreditLedger {
    type Result = Result<Balance, LedgerError>;

    fn handle(
        &mut self,
        GetBalance(license_id): GetBalance,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let account = self.account(&license_id)?;
        Ok(Balance { available: account.available, used: account.used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{licenses, organisations, test_pool};

    fn settlement(license_id: &str, request_id: &str) -> Settlement {
        Settlement {
            request_id: request_id.into(),
            license_id: license_id.into(),
            api_key_id: None,
            endpoint: "fetch",
            model: String::new(),
            provider: "demo".into(),
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            micro_credits: 0,
            status: "completed",
        }
    }

    #[test]
    fn unit_reserves_price_each_unit_exactly() {
        let r = Reserve::units("l".into(), 8_000, 3).unwrap();
        assert_eq!(r.prices.cost(r.prompt_tokens, r.max_output_tokens), 24_000);
        assert_eq!(r.prices.cost(2, 0), 16_000);
        assert_eq!(r.prices.cost(0, 0), 0);
        assert_eq!(Reserve::units("l".into(), 0, 5).unwrap().prices.cost(5, 0), 0);
        assert_eq!(
            Reserve::units("l".into(), price::MAX_UNIT_MICRO_CREDITS, 2).unwrap().prices.cost(2, 0),
            2 * price::MAX_UNIT_MICRO_CREDITS
        );
        assert!(Reserve::units("l".into(), price::MAX_UNIT_MICRO_CREDITS + 1, 1).is_none());
        assert!(Reserve::units("l".into(), -1, 1).is_none());
        assert!(Reserve::units("l".into(), i64::MAX, 1).is_none());
    }

    #[actix_web::test]
    async fn unit_holds_cover_every_unit_and_settle_for_the_ones_used() {
        let (_dir, pool) = test_pool();
        let license_id = {
            let mut conn = pool.get().unwrap();
            let inst = organisations::create_institution(&conn, "u", "U").unwrap();
            let lt = organisations::create_license_type(&conn, &inst.id, "s", "S", Some(20_000))
                .unwrap();
            let new = licenses::NewLicense {
                institution_id: &inst.id,
                license_type_id: &lt.id,
                unique_id: Some("x"),
                user_id: None,
                micro_credits: Some(20_000),
            };
            licenses::create(&mut conn, &new).unwrap().license_id
        };
        let writer = Writer::start(pool.clone()).unwrap();
        let ledger = CreditLedger::new(pool, writer).start();
        let reserve = |units| Reserve::units(license_id.clone(), 8_000, units).unwrap();

        // 3 × 8,000 does not fit in 20,000: refused outright, nothing lowered.
        assert!(matches!(
            ledger.send(reserve(3)).await.unwrap(),
            Err(LedgerError::InsufficientCredits)
        ));
        let hold = ledger.send(reserve(2)).await.unwrap().unwrap();
        assert_eq!(hold.amount, 16_000);
        // Only 4,000 is spendable while the hold is open.
        assert!(ledger.send(reserve(1)).await.unwrap().is_err());
        let mut usage = settlement(&license_id, "r1");
        usage.prompt_tokens = 1;
        let settled = ledger.send(Settle { hold, usage }).await.unwrap().unwrap();
        assert_eq!(settled.credits_used, 8_000);
        assert_eq!(settled.credits_remaining, Some(12_000));
        // A settle for none of the units charges nothing.
        let hold = ledger.send(reserve(1)).await.unwrap().unwrap();
        let settled = ledger
            .send(Settle { hold, usage: settlement(&license_id, "r2") })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(settled.credits_used, 0);
        let balance = ledger.send(GetBalance(license_id.clone())).await.unwrap().unwrap();
        assert_eq!(balance, Balance { available: Some(12_000), used: 8_000 });
    }
}
