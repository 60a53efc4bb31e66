use clap::Parser;

fn main() {
    let cli = quantized::cli::Cli::parse();
    if let Err(err) = quantized::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
