//! Logging and tracing: a `tracing` subscriber writing text or JSON lines to stderr through a
//! dedicated writer thread (a slow or blocked stderr never stalls a request on the async
//! runtime), plus OpenTelemetry span export over OTLP when the standard `OTEL_*` variables ask
//! for it (see the `telemetry` crate; off, no OpenTelemetry code runs per span).

use std::io::IsTerminal as _;

use anyhow::anyhow;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat};

/// The service name spans are exported under unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "aegis-gateway";

/// Keep until exit: dropping it flushes queued log lines and exports queued spans.
pub struct TelemetryGuards {
    _log: tracing_appender::non_blocking::WorkerGuard,
    pub tracing: telemetry::TelemetryGuard,
}

/// Installs the process's global `tracing` subscriber. Logs: the filter is `RUST_LOG` when that
/// is set and not empty, `config.filter` otherwise; lines go to stderr, colored only on a
/// terminal, via a writer thread with a bounded queue (when stderr cannot keep up, lines are
/// dropped rather than blocking requests; audit records never go this way). Spans: exported when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, whatever the log filter.
/// Must run inside the tokio runtime. Fails if `RUST_LOG` or an `OTEL_*` variable is invalid or a
/// subscriber is already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<TelemetryGuards> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.trim().is_empty() => {
            EnvFilter::builder().parse(&rust_log).map_err(|error| {
                anyhow!("RUST_LOG={rust_log:?} is not a valid tracing filter ({error}); fix or unset it")
            })?
        }
        _ => EnvFilter::builder().parse(&config.filter).map_err(|error| {
            anyhow!("log.filter = {:?} is not a valid tracing filter ({error})", config.filter)
        })?,
    };
    let tracing_config = telemetry::TracingConfig::from_env(SERVICE_NAME)
        .map_err(|error| anyhow!("OpenTelemetry configuration: {error}"))?;
    let (spans, tracing) =
        telemetry::init(&tracing_config).map_err(|error| anyhow!("OpenTelemetry export: {error}"))?;
    let (writer, log) = tracing_appender::non_blocking(std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = match config.format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines.json().with_ansi(false).flatten_event(true).with_current_span(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(lines.with_filter(filter))
        .try_init()
        .map_err(|error| anyhow!("cannot install the log subscriber: {error}"))?;
    Ok(TelemetryGuards { _log: log, tracing })
}
