//! Logging and tracing: log lines on stderr, plus OpenTelemetry span export when the standard
//! `OTEL_*` variables ask for it (see `telemetry::subscriber`).

use anyhow::anyhow;

use crate::config::{LogConfig, LogFormat};

/// The service name spans are exported under unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "aegis-ledger";

/// Installs the process's global `tracing` subscriber (see `telemetry::subscriber::install`).
/// Must run inside the tokio runtime. Keep the returned guard until exit and shut it down there.
pub fn init(config: &LogConfig) -> anyhow::Result<telemetry::TelemetryGuard> {
    let lines = match config.format {
        LogFormat::Text => telemetry::subscriber::LogLines::Text,
        LogFormat::Json => telemetry::subscriber::LogLines::Json,
    };
    telemetry::subscriber::install(SERVICE_NAME, &config.filter, lines, std::io::stderr)
        .map_err(|error| anyhow!("{error}"))
}
