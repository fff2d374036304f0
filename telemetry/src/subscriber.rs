//! The process's `tracing` subscriber, the same for both binaries: log lines (text or JSON) on
//! a writer, filtered by `RUST_LOG` or the configured filter, plus span export when the `OTEL_*`
//! variables turn it on (whatever the log filter).

use std::io::IsTerminal as _;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::{TelemetryGuard, TracingConfig};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLines {
    /// Human-readable, colored when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the subscriber could not be installed; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `RUST_LOG` is set but is not a filter.
    #[error("RUST_LOG={value:?} is not a valid tracing filter ({reason}); fix or unset it")]
    RustLog {
        /// The variable's value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// The configured filter is not a filter.
    #[error("log.filter = {value:?} is not a valid tracing filter ({reason})")]
    Filter {
        /// The configured value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// An `OTEL_*` variable is invalid, or the exporter could not be built.
    #[error("OpenTelemetry configuration: {0}")]
    Tracing(#[from] crate::Error),
    /// A global subscriber was installed already.
    #[error("cannot install the log subscriber: {0}")]
    AlreadyInstalled(String),
}

/// Installs the global subscriber. Log lines go to `writer`, filtered by `RUST_LOG` when it is
/// set and not empty, by `filter` otherwise. Spans are exported under `service_name` unless
/// `OTEL_SERVICE_NAME` says otherwise. Must run inside the tokio runtime; keep the returned guard
/// until exit and shut it down there.
pub fn install<W>(
    service_name: &str,
    filter: &str,
    lines: LogLines,
    writer: W,
) -> Result<TelemetryGuard, InstallError>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.trim().is_empty() => EnvFilter::builder()
            .parse(&rust_log)
            .map_err(|error| InstallError::RustLog { value: rust_log.clone(), reason: error.to_string() })?,
        _ => EnvFilter::builder()
            .parse(filter)
            .map_err(|error| InstallError::Filter { value: filter.to_owned(), reason: error.to_string() })?,
    };
    let (spans, guard) = crate::init(&TracingConfig::from_env(service_name)?)?;
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = match lines {
        LogLines::Text => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogLines::Json => layer.json().with_ansi(false).flatten_event(true).with_current_span(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|error| InstallError::AlreadyInstalled(error.to_string()))?;
    Ok(guard)
}
