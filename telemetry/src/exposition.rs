//! Prometheus exposition formats. `prometheus-client` writes OpenMetrics 1.0 text, which
//! Prometheus asks for; other scrapers, `curl` and `promtool check metrics` expect the classic
//! text format 0.0.4. [`negotiate`] picks by the request's `Accept` header and converts.

/// The OpenMetrics text content type.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text content type.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The body and content type to answer a scrape whose `Accept` header is `accept`, given the
/// metrics in OpenMetrics text.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
        (OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        (TEXT_CONTENT_TYPE, to_classic_text(&openmetrics))
    }
}

/// Converts OpenMetrics text to the classic text format: drops `# UNIT` and `# EOF`, and names
/// a counter family's `# HELP` and `# TYPE` after its `_total` samples, as the classic format
/// has them.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line waits for its TYPE line, which says whether it is a counter.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), false);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter";
            if help.is_some_and(|(help_name, _)| help_name == name) {
                flush_help(&mut out, help.take(), counter);
            } else {
                flush_help(&mut out, help.take(), false);
            }
            let suffix = if counter && !name.ends_with("_total") { "_total" } else { "" };
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), false);
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, false);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, counter: bool) {
    if let Some((name, text)) = help {
        let suffix = if counter && !name.ends_with("_total") { "_total" } else { "" };
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP app_requests Requests served.\n# TYPE app_requests counter\n\
        app_requests_total{route=\"/\"} 3\n# HELP app_latency_seconds Latency.\n\
        # TYPE app_latency_seconds histogram\n# UNIT app_latency_seconds seconds\n\
        app_latency_seconds_sum 0.5\napp_latency_seconds_count 2\n# EOF\n";

    #[test]
    fn counters_are_named_after_their_samples_and_openmetrics_only_lines_go() {
        let text = to_classic_text(OPENMETRICS);
        assert_eq!(
            text,
            "# HELP app_requests_total Requests served.\n# TYPE app_requests_total counter\n\
             app_requests_total{route=\"/\"} 3\n# HELP app_latency_seconds Latency.\n\
             # TYPE app_latency_seconds histogram\napp_latency_seconds_sum 0.5\napp_latency_seconds_count 2\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(
            negotiate(Some(accept), OPENMETRICS.to_owned()),
            (OPENMETRICS_CONTENT_TYPE, OPENMETRICS.to_owned())
        );
        let (content_type, body) = negotiate(Some("*/*"), OPENMETRICS.to_owned());
        assert_eq!(content_type, TEXT_CONTENT_TYPE);
        assert!(!body.contains("# EOF"));
        assert_eq!(negotiate(None, OPENMETRICS.to_owned()).0, TEXT_CONTENT_TYPE);
    }
}
