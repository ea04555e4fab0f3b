//! The `mongosim` binary: parses flags, binds, prints "mongosim listening on ADDR" when
//! ready and serves until SIGINT/SIGTERM.
//!
//! It must stay thin: everything else lives in the library.

use clap::Parser;
use tokio::net::TcpListener;

/// An in-memory MongoDB 6.0/7.0 replica-set primary for tests and demos.
#[derive(Debug, Parser)]
#[command(name = "mongosim", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Replica-set name (default "rs0").
    #[arg(long, conflicts_with = "single_node")]
    replset: Option<String>,
    /// Run as a standalone: no setName, no oplog.
    #[arg(long)]
    single_node: bool,
    /// User name of a root user (enables authentication).
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Password of that user (also read from MONGOSIM_PASSWORD).
    #[arg(long, env = "MONGOSIM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Reported server version (6.0.x or 7.0.x).
    #[arg(long, default_value = "7.0.14")]
    server_version: String,
    /// Oplog cap in MiB.
    #[arg(long, default_value_t = 64)]
    oplog_size_mb: usize,
    /// Seconds between TTL monitor passes (the server's ttlMonitorSleepSecs).
    #[arg(long, default_value_t = 60)]
    ttl_monitor_secs: u64,
    /// Accept configureFailPoint (test commands).
    #[arg(long)]
    enable_test_commands: bool,
    /// Size in bytes of the filesystem dbStats reports (fsTotalSize, before `scale`).
    #[arg(long, value_name = "BYTES", default_value_t = mongosim::DEFAULT_FS_TOTAL_BYTES)]
    fs_total_size: u64,
    /// Bytes used on that filesystem as dbStats reports them (fsUsedSize, before `scale`);
    /// at most --fs-total-size.
    #[arg(long, value_name = "BYTES", default_value_t = mongosim::DEFAULT_FS_USED_BYTES)]
    fs_used_size: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.fs_used_size > args.fs_total_size {
        anyhow::bail!(
            "--fs-used-size {} exceeds --fs-total-size {}: a filesystem cannot use more than its size",
            args.fs_used_size,
            args.fs_total_size
        );
    }
    let mut builder = mongosim::MongoSim::builder()
        .server_version(&args.server_version)
        .oplog_size_mb(args.oplog_size_mb)
        .ttl_monitor_interval(std::time::Duration::from_secs(args.ttl_monitor_secs.max(1)))
        .test_commands(args.enable_test_commands)
        .filesystem(args.fs_total_size, args.fs_used_size);
    builder = if args.single_node {
        builder.single_node()
    } else {
        builder.replset(args.replset.as_deref().unwrap_or("rs0"))
    };
    if let (Some(u), Some(p)) = (&args.user, &args.password) {
        builder = builder.user(u, p);
    }
    let listener = TcpListener::bind((args.bind.as_str(), args.port)).await?;
    let sim = mongosim::MongoSim::serve(builder.config().clone(), listener)?;
    println!("mongosim listening on {}", sim.addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown().await;
    Ok(())
}
