//! Start-up: open and migrate the store, seed the catalog, start the actors, bind, serve.
//! `main`, `quantized demo` and the tests all build the gateway through `Application`.

use std::net::TcpListener;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;

use crate::api;
use crate::auth::registry::{AuthCaches, KeyRegistry};
use crate::catalog::{self, CatalogCache};
use crate::config::Settings;
use crate::error::ApiError;
use crate::ledger::{writer::Writer, writer::WriterStats, Balance, CreditLedger, GetBalance};
use crate::metering::ledger_error;
use crate::metrics::Metrics;
use crate::providers::{start_breakers, Breakers, Providers};
use crate::store::{self, Pool};
use crate::telemetry;

/// What every worker shares: the store, the actors and the catalog.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub ledger: Addr<CreditLedger>,
    pub registry: Addr<KeyRegistry>,
    /// The registry's caches, read directly on the hot path.
    pub auth_caches: AuthCaches,
    pub catalog: Arc<CatalogCache>,
    pub ledger_stats: Arc<WriterStats>,
    pub breakers: Breakers,
    pub metrics: Metrics,
}

impl AppState {
    pub async fn balance(&self, license_id: &str) -> Result<Balance, ApiError> {
        self.ledger
            .send(GetBalance(license_id.to_string()))
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("ledger: {e}")))?
            .map_err(ledger_error)
    }
}

/// Opens the database, applies migrations and seeds new catalog models.
pub fn prepare_store(settings: &Settings, pool_size: u32) -> anyhow::Result<Pool> {
    let pool = store::open(&settings.database, settings.store.sync, pool_size)?;
    store::migrate(&pool)?;
    let seed = catalog::read_seed(settings.models.as_deref())?;
    let mut conn = store::get(&pool)?;
    let added = store::catalog::seed(&mut conn, &seed)?;
    if added > 0 {
        log::info!("catalog: added {added} model(s) from the seed file");
    }
    Ok(pool)
}

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
}

impl Application {
    /// Must run inside an actix `System` (the actors live there).
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
        let workers = if settings.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            settings.workers
        };
        let pool = prepare_store(&settings, (workers as u32) * 2 + 4)?;
        let catalog = Arc::new(CatalogCache::load(&pool)?);
        let writer = Writer::start(pool.clone())?;
        let ledger_stats = writer.stats.clone();
        let ledger_pool = pool.clone();
        let ledger = CreditLedger::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            CreditLedger::new(ledger_pool, writer)
        });
        let registry_pool = pool.clone();
        let auth_caches = AuthCaches::default();
        let registry_caches = auth_caches.clone();
        let registry = KeyRegistry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            KeyRegistry::new(registry_pool, registry_caches)
        });

        let listener = TcpListener::bind(&settings.listen).with_context(|| {
            format!(
                "cannot listen on {} (is another gateway already using this port?)",
                settings.listen
            )
        })?;
        let port = listener.local_addr().context("local address")?.port();
        let breakers = start_breakers(&settings);
        let settings = Arc::new(settings);
        let state = web::Data::new(AppState {
            breakers: breakers.clone(),
            metrics: Metrics::default(),
            settings: settings.clone(),
            pool,
            ledger,
            registry,
            auth_caches,
            catalog,
            ledger_stats,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Providers hold per-thread HTTP clients, so each worker builds its own.
                .app_data(web::Data::new(Providers::new(&settings, &breakers)))
                .wrap(middleware::from_fn(telemetry::request_context))
                .configure(api::configure)
                .default_service(web::to(api::not_found))
        })
        // Small SSE writes must leave at once, not wait for the client's delayed ACK
        // (Nagle's algorithm cost ~40 ms per stream on kept-alive connections).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .workers(workers)
        .shutdown_timeout(30)
        .listen(listener)
        .context("start HTTP server")?
        .run();
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (or `handle().stop()`), then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
