//! `ferry-agent` binary: parses flags and the config file, sets up logging and SIGINT/SIGTERM, calls
//! [`ferry_agent::run`]. Nothing else lives here. Exit codes: 0 clean shutdown, 1 runtime error, 2 configuration.

use std::process::ExitCode;

use clap::Parser;
use ferry_agent::{AgentError, Args, Command, LogFormat};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Replay(replay)) = args.command.take() {
        return match ferry_agent::replay::run(replay).await {
            Ok((report, ok)) => {
                print!("{report}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    let (config, log_format) = match args.into_config() {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(signal) => signal,
        Err(error) => {
            eprintln!("error: installing the SIGTERM handler: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    match ferry_agent::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ AgentError::Config(_)) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
