//! The `quantized` command line: serve, demo, admin, migrate, config.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::admin_cli::{self, AdminArgs};
use crate::app::{self, Application};
use crate::config::Settings;
use crate::{demo, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "quantized",
    version,
    about = "Quantized: a billed, OpenAI-compatible LLM API gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway
    Serve {
        /// TOML config file (every key optional; QUANTIZED_* variables override it)
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Zero-setup demo: offline demo provider, seeded license and key, on 127.0.0.1
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Operate a running gateway through its admin API
    Admin(AdminArgs),
    /// Apply database migrations and exit
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (secrets redacted)
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())?;
            settings.require_admin_token()?;
            telemetry::init_logging();
            actix_web::rt::System::new().block_on(async move {
                let app = Application::build(settings.clone())?;
                log::info!("quantized listening on {} (port {})", settings.listen, app.port());
                app.run_until_stopped().await?;
                log::info!("quantized stopped");
                Ok(())
            })
        }
        Command::Demo { port } => {
            telemetry::init_logging();
            actix_web::rt::System::new().block_on(demo::run(port))
        }
        Command::Admin(args) => actix_web::rt::System::new().block_on(admin_cli::run(args)),
        Command::Migrate { config } => {
            let settings = Settings::load(config.as_deref())?;
            telemetry::init_logging();
            let pool = app::prepare_store(&settings, 1)?;
            drop(pool);
            log::info!("database {} is up to date", settings.database.display());
            Ok(())
        }
        Command::Config { config } => {
            let settings = Settings::load(config.as_deref())?;
            print_text(&settings.to_redacted_toml());
            Ok(())
        }
    }
}

/// The one place besides the admin client that writes to stdout.
#[allow(clippy::print_stdout)]
pub fn print_text(text: &str) {
    println!("{text}");
}
