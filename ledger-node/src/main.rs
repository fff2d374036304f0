//! `aegis-ledger`, the ledger node binary: loads the configuration, starts logging and runs the
//! node until SIGTERM or Ctrl-C. Everything else lives in the library.

use std::process::ExitCode;

use ledger_node::config::{Config, ConfigError};

/// See the workspace manifest: measured to cut the node's allocation cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an unusable configuration or command line (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // Usage errors, --help and --version: clap prints them and picks the status (0 for help).
        Err(ConfigError::Flags(error)) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_CONFIG));
        }
        Err(error) => {
            eprintln!("aegis-ledger: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if std::env::args_os().any(|arg| arg == "--check-config") {
        eprintln!("aegis-ledger: the configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("aegis-ledger").build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("aegis-ledger: cannot start the tokio runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
    // The span exporter's connections (gRPC channel or HTTP client) live on the runtime.
    let spans = match runtime.block_on(async { ledger_node::telemetry::init(&config.log) }) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("aegis-ledger: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let outcome = runtime.block_on(ledger_node::run(config, shutdown_signal()));
    // Export what is queued (bounded in time) before the runtime goes.
    match runtime.block_on(runtime.spawn_blocking(move || spans.shutdown())) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "span export did not shut down cleanly"),
        Err(error) => tracing::warn!(%error, "span export did not shut down cleanly"),
    }
    match outcome {
        Ok(()) => {
            tracing::info!("ledger node stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "ledger node failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or Ctrl-C. A second one exits at once, for a shutdown that hangs.
async fn shutdown_signal() {
    let signal = wait_for_signal().await;
    tracing::info!("{signal} received, shutting down; send it again to exit at once");
    tokio::spawn(async {
        let signal = wait_for_signal().await;
        tracing::warn!("{signal} received again, exiting without a clean shutdown");
        std::process::exit(130);
    });
}

/// Waits for SIGTERM (the way service managers stop us) or SIGINT (Ctrl-C) and names it.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                () = ctrl_c() => "Ctrl-C",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                ctrl_c().await;
                "Ctrl-C"
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c().await;
        "Ctrl-C"
    }
}

/// Completes on Ctrl-C; never, if its handler cannot be installed (rather than at once).
async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
