//! Logging and tracing: log lines on stderr through a dedicated writer thread (a slow or blocked
//! stderr never stalls a request on the async runtime), plus OpenTelemetry span export when the
//! standard `OTEL_*` variables ask for it (see `telemetry::subscriber`).

use anyhow::anyhow;

use crate::config::{LogConfig, LogFormat};

/// The service name spans are exported under unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "aegis-gateway";

/// Keep until exit: dropping it flushes queued log lines; shut `tracing` down to export the
/// queued spans.
pub struct TelemetryGuards {
    _log: tracing_appender::non_blocking::WorkerGuard,
    pub tracing: telemetry::TelemetryGuard,
}

/// Installs the process's global `tracing` subscriber (see `telemetry::subscriber::install`).
/// Log lines go through a writer thread with a bounded queue: when stderr cannot keep up, lines
/// are dropped rather than blocking requests (audit records never go this way). Must run inside
/// the tokio runtime.
pub fn init(config: &LogConfig) -> anyhow::Result<TelemetryGuards> {
    let (writer, log) = tracing_appender::non_blocking(std::io::stderr());
    let lines = match config.format {
        LogFormat::Text => telemetry::subscriber::LogLines::Text,
        LogFormat::Json => telemetry::subscriber::LogLines::Json,
    };
    let tracing = telemetry::subscriber::install(SERVICE_NAME, &config.filter, lines, writer)
        .map_err(|error| anyhow!("{error}"))?;
    Ok(TelemetryGuards { _log: log, tracing })
}
