//! `ferryctl` binary: parses flags, runs the command, prints errors with the gRPC code, exits non-zero.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ferryctl::cli::Cli::parse();
    match ferryctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", ferryctl::error_line(&error));
            ExitCode::from(error.exit_code())
        }
    }
}
