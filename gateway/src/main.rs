//! `aegis-gateway`, the gateway binary: loads the configuration, starts logging and serves until
//! SIGTERM or Ctrl-C. Everything else lives in the library.

use std::process::ExitCode;

use gateway::config::{Config, ConfigError};

/// The gateway allocates small, short-lived buffers per request; mimalloc is faster at that
/// than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an unusable configuration or command line.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Flags(error)) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_CONFIG));
        }
        Err(error) => {
            eprintln!("aegis-gateway: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if std::env::args_os().any(|arg| arg == "--check-config") {
        eprintln!("aegis-gateway: the configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("aegis-gateway").build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("aegis-gateway: cannot start the tokio runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
    // The span exporter's connections (gRPC channel or HTTP client) live on the runtime.
    let guards = match runtime.block_on(async { gateway::telemetry::init(&config.log) }) {
        Ok(guards) => guards,
        Err(error) => {
            eprintln!("aegis-gateway: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let outcome = runtime.block_on(gateway::run(config, shutdown_signal()));
    // Export what is queued (bounded in time) before the runtime goes.
    match runtime.block_on(runtime.spawn_blocking(move || guards.tracing.shutdown())) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "span export did not shut down cleanly"),
        Err(error) => tracing::warn!(%error, "span export did not shut down cleanly"),
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or Ctrl-C. A second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = || async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
                "Ctrl-C"
            }
        }
    };
    let signal = wait().await;
    tracing::info!("{signal} received, shutting down; send it again to exit at once");
    tokio::spawn(async move {
        let signal = wait().await;
        tracing::warn!("{signal} received again, exiting without a clean shutdown");
        std::process::exit(130);
    });
}
