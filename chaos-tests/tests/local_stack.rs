//! `scripts/local-stack.sh`, the README's first command: it starts the stack, the `curl` and
//! `aegisctl prove` commands it prints succeed, Ctrl-C stops everything, and a second run reuses
//! the data.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::{binary, free_port};

/// Ports for the script: a gateway port and a base with the 23 ledger ports after it free.
fn ports() -> (u16, u16) {
    loop {
        let base = free_port().port();
        if (1..23).all(|offset| free_port().port() == base + offset) {
            return (free_port().port(), base);
        }
    }
}

struct Stack {
    child: Child,
    printed: Vec<String>,
}

fn start(dir: &Path, gateway_port: u16, ledger_port: u16) -> Stack {
    let bin_dir = binary("aegis-ledger").parent().expect("binary directory").to_owned();
    for name in ["aegis-gateway", "aegisctl"] {
        binary(name);
    }
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/local-stack.sh"))
        .env("AEGIS_BIN_DIR", &bin_dir)
        .env("AEGIS_LOCAL_DIR", dir)
        .env("AEGIS_LOCAL_GATEWAY_PORT", gateway_port.to_string())
        .env("AEGIS_LOCAL_LEDGER_PORT", ledger_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run scripts/local-stack.sh");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("script output");
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    assert!(
        printed.last().is_some_and(|line| line.starts_with("Press Ctrl-C")),
        "the stack did not start: {printed:?}"
    );
    // Keep draining stdout so the script never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Stack { child, printed }
}

impl Stack {
    /// The command printed on the line after the one starting with `label`.
    fn command_after(&self, label: &str) -> String {
        let at = self
            .printed
            .iter()
            .position(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} in {:?}", self.printed));
        self.printed[at + 1].trim().to_owned()
    }

    /// Ctrl-C, and wait for a clean stop.
    fn interrupt(mut self) {
        assert!(self.stop(), "the stack did not stop within 60 s of Ctrl-C");
    }

    /// Sends Ctrl-C (SIGINT) to the script; whether it exited within 60 s.
    fn stop(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }
}

impl Drop for Stack {
    /// A failed test still stops the stack it started.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Whether the metrics text has the family of `metric` (a histogram's series name its family).
fn is_exposed(text: &str, metric: &str) -> bool {
    let family =
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| metric.strip_suffix(suffix)).unwrap_or(metric);
    text.contains(&format!("# TYPE {family} ")) || text.contains(&format!("# TYPE {metric} "))
}

/// Every `aegis_*` metric name in the Grafana dashboard's queries.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/aegis-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("dashboard JSON");
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 20, "the dashboard has queries: {}", expressions.len());
    let mut metrics: Vec<String> = expressions
        .iter()
        .flat_map(|expression| {
            expression
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|token| token.starts_with("aegis_gateway_") || token.starts_with("aegis_ledger_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    metrics.sort();
    metrics.dedup();
    metrics
}

fn collect_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expression)) => out.push(expression.clone()),
                    _ => collect_expressions(value, out),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|value| collect_expressions(value, out)),
        _ => {}
    }
}

/// The body of `GET path` on a loopback port.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `promtool check metrics` (Debian's prometheus package; `.ci/run` installs it) accepts `text`.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: `apt-get install -y prometheus` (.ci/run and the README's setup do it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool rejects the metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn bash(command: &str) -> (bool, String) {
    let output = Command::new("bash").args(["-c", command]).output().expect("run bash");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn the_readmes_first_command_starts_a_provable_stack_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway_port, ledger_port) = ports();

    let stack = start(dir.path(), gateway_port, ledger_port);
    let (ok, response) = bash(&stack.command_after("Send a chat completion"));
    assert!(ok && response.contains("HTTP/1.1 200"), "the printed curl failed: {response}");
    let record_id = response
        .lines()
        .find_map(|line| line.strip_prefix("x-aegis-record-id: "))
        .expect("the response names its audit record")
        .trim()
        .to_owned();
    let prove = stack.command_after("Prove that request").replace("RECORD_ID", &record_id);
    let (ok, proof) = bash(&prove);
    assert!(
        ok && proof.contains("VERIFIED") && proof.contains(&record_id),
        "the printed prove failed: {proof}"
    );
    let (ok, both) = bash(&stack.command_after("Both at once"));
    assert!(ok && both.contains("VERIFIED"), "the printed one-liner failed: {both}");
    // Both /metrics outputs pass Prometheus's own linter, and every metric the Grafana dashboard
    // queries is one of theirs. Two gateways share the port: a few rounds reach both.
    let stream = stack
        .command_after("Send a chat completion")
        .replace(r#""model":"mock-1","#, r#""model":"mock-1","stream":true,"#);
    let wanted = dashboard_metrics();
    let mut exposed = String::new();
    for _ in 0..20 {
        let (ok, streamed) = bash(&stream);
        assert!(ok && streamed.contains("data: [DONE]"), "{streamed}");
        for port in [gateway_port, ledger_port + 2] {
            let text = http_get(port, "/metrics");
            promtool_check(&text);
            exposed.push_str(&text);
        }
        if wanted.iter().all(|metric| is_exposed(&exposed, metric)) {
            break;
        }
    }
    for metric in &wanted {
        assert!(
            is_exposed(&exposed, metric),
            "the dashboard queries {metric}, which neither /metrics exposes"
        );
    }
    stack.interrupt();
    for port in [gateway_port, ledger_port, ledger_port + 10, ledger_port + 20] {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still served after Ctrl-C");
    }

    // Again on the same data: the cluster is reused and the first record is still provable.
    let stack = start(dir.path(), gateway_port, ledger_port);
    let init = std::fs::read_to_string(dir.path().join("init.txt")).expect("init output");
    assert!(init.contains("already initialised"), "{init}");
    let (ok, proof) = bash(&prove);
    assert!(ok && proof.contains("VERIFIED"), "the first record is gone after a restart: {proof}");
    stack.interrupt();
}
