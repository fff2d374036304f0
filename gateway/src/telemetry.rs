//! Logging: a `tracing` subscriber writing text or JSON lines to stderr through a dedicated
//! writer thread, so a slow or blocked stderr never stalls a request on the async runtime.

use std::io::IsTerminal as _;

use anyhow::anyhow;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the process's global `tracing` subscriber. The filter is `RUST_LOG` when that is set
/// and not empty, `config.filter` otherwise. Logs go to stderr, colored only on a terminal, via a
/// writer thread with a bounded queue: when stderr cannot keep up, lines are dropped rather than
/// blocking requests (logs are diagnostics; audit records never go this way). Keep the returned
/// guard until exit: dropping it flushes the queue. Fails if `RUST_LOG` is not a valid filter or
/// a subscriber is already installed.
pub fn init_logging(config: &LogConfig) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
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
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = match config.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => {
            builder.json().with_ansi(false).flatten_event(true).with_current_span(true).try_init()
        }
    };
    installed.map_err(|error| anyhow!("cannot install the log subscriber: {error}"))?;
    Ok(guard)
}
