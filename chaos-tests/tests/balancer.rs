//! Two gateway processes behind nginx and then haproxy, both with the example configurations in
//! `deploy/`, in front of a three-node ledger: mixed traffic (plain and streamed chat, embeddings,
//! refusals) flows through the balancer while one gateway is restarted, and every request that
//! got an answer from a gateway has an audit record whose inclusion proof verifies against the
//! published checkpoint, with the status the client saw.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos_tests::{GatewayProcess, LedgerCluster, Process, free_port, wait_for_port};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mmr::{InclusionProof, NoteLimits, leaf_hash};
use prost::Message as _;
use proto::v1;

const API_KEY: &str = "sk-balancer-test";
/// SHA-256 of [`API_KEY`].
const API_KEY_SHA256: &str = "5454943419b8845955970071f65d111d304b805e1359bc14d43e9d7e8317c77d";

fn gateway_config() -> String {
    format!(
        r#"
gateway_id = "set-by-flag"

[[upstreams]]
name = "mock"
kind = "mock"
models = ["*"]

[[tenants]]
id = "acme"

[[credentials]]
id = "acme-app"
tenant = "acme"
key_sha256 = "{API_KEY_SHA256}"
scopes = ["proxy"]

[audit]
ledger_endpoints = []
spool_dir = "set-by-flag"
"#
    )
}

/// One request as the client saw it.
struct Answer {
    status: u16,
    record_id: Option<String>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hello"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
const EMBEDDINGS: &str = r#"{"model":"mock-embed","input":["one","two"]}"#;

async fn send(client: &HttpClient, balancer: SocketAddr, n: u64) -> Option<Answer> {
    let (path, body, key) = match n % 4 {
        0 => ("/v1/chat/completions", CHAT, API_KEY),
        1 => ("/v1/chat/completions", CHAT_STREAM, API_KEY),
        2 => ("/v1/embeddings", EMBEDDINGS, API_KEY),
        _ => ("/v1/chat/completions", CHAT, "sk-wrong-key"),
    };
    let request = http::Request::post(format!("http://{balancer}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    let record_id =
        response.headers().get("x-aegis-record-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    // The whole body, streams included: a record is final once the response is.
    let body =
        tokio::time::timeout(Duration::from_secs(30), response.into_body().collect()).await.ok()?.ok()?;
    if status == 200 && path.ends_with("completions") && body.to_bytes().is_empty() {
        return None;
    }
    Some(Answer { status, record_id })
}

/// A 5 MiB chat request (the gateway's chat limit is 4 MiB), sent through `balancer`.
async fn oversized(balancer: SocketAddr) -> Answer {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let filler = "a".repeat(5 * 1024 * 1024);
    let body = format!(r#"{{"model":"mock-1","messages":[{{"role":"user","content":"{filler}"}}]}}"#);
    let request = http::Request::post(format!("http://{balancer}/v1/chat/completions"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = client.request(request).await.expect("an answer to the oversized request");
    let record_id =
        response.headers().get("x-aegis-record-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    Answer { status: response.status().as_u16(), record_id }
}

/// Clients sending mixed requests through `balancer` until `stop`; returns what they saw and how
/// many requests got no answer from a gateway.
async fn traffic(balancer: SocketAddr, stop: Arc<AtomicBool>) -> (Vec<Answer>, usize) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut unanswered = 0;
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                match send(&client, balancer, n).await {
                    Some(answer) => answers.push(answer),
                    None => unanswered += 1,
                }
                n += 4;
            }
            (answers, unanswered)
        }));
    }
    let mut answers = Vec::new();
    let mut unanswered = 0;
    for worker in workers {
        let (mut seen, missed) = worker.await.expect("traffic worker");
        answers.append(&mut seen);
        unanswered += missed;
    }
    (answers, unanswered)
}

/// `deploy/<file>` with the gateways, the listen port and nothing else changed.
fn balancer_config(file: &str, gateways: &[&GatewayProcess], listen_from: &str, listen_to: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    let text = std::fs::read_to_string(&path).expect("deploy config");
    for token in ["gateway-1:8080", "gateway-2:8080", listen_from] {
        assert_eq!(text.matches(token).count(), 1, "{file} must name {token:?} exactly once");
    }
    text.replace("gateway-1:8080", &gateways[0].addr.to_string())
        .replace("gateway-2:8080", &gateways[1].addr.to_string())
        .replace(listen_from, listen_to)
}

fn start_nginx(dir: &Path, gateways: &[&GatewayProcess], port: u16) -> Process {
    let snippet = balancer_config(
        "nginx/aegis-gateways.conf",
        gateways,
        "listen 8000",
        &format!("listen 127.0.0.1:{port}"),
    );
    std::fs::write(dir.join("aegis-gateways.conf"), snippet).expect("write nginx snippet");
    let d = dir.display();
    let conf = format!(
        "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/client_body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  include {d}/aegis-gateways.conf;\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut command = Command::new(tool("nginx"));
    command.arg("-p").arg(dir).arg("-c").arg(&conf_path).arg("-e").arg(dir.join("nginx-error.log"));
    Process::spawn(command, &dir.join("nginx.log"))
}

fn start_haproxy(dir: &Path, gateways: &[&GatewayProcess], port: u16) -> Process {
    let config =
        balancer_config("haproxy/haproxy.cfg", gateways, "bind :8000", &format!("bind 127.0.0.1:{port}"));
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let mut command = Command::new(tool("haproxy"));
    command.arg("-f").arg(&path).arg("-db");
    Process::spawn(command, &dir.join("haproxy.log"))
}

/// A Debian package's binary, with a message that says how to get it.
fn tool(name: &str) -> String {
    let path = format!("/usr/sbin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{name} is not installed: `apt-get install -y nginx haproxy` (.ci/run and the README's setup do it)"
    );
    path
}

/// Every answered request has a record whose proof verifies and whose status is the client's.
async fn check_records(ledger: &LedgerCluster, answers: &[Answer]) -> (usize, Vec<String>) {
    let mut gateways = Vec::new();
    for answer in answers {
        let record_id = answer
            .record_id
            .as_ref()
            .unwrap_or_else(|| panic!("a {} answer without x-aegis-record-id", answer.status));
        let proof = ledger.proof(record_id).await;
        let note = proof
            .checkpoint
            .as_ref()
            .expect("a checkpoint with the proof")
            .to_note(&NoteLimits::default())
            .expect("a note");
        let checkpoint = mmr::Checkpoint::from_body(note.text()).expect("a checkpoint");
        let inclusion = InclusionProof::try_from(&proof).expect("a proof");
        inclusion.verify(&leaf_hash(&proof.record), &checkpoint.root).expect("the inclusion proof verifies");
        let record = v1::AuditRecord::decode(proof.record.as_slice()).expect("an audit record");
        assert_eq!(&record.record_id, record_id);
        assert_eq!(record.status_code, u32::from(answer.status), "the record states what the client saw");
        if !gateways.contains(&record.gateway_id) {
            gateways.push(record.gateway_id);
        }
    }
    (answers.len(), gateways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_behind_nginx_and_haproxy_lose_no_record_while_one_restarts() {
    let ledger = LedgerCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoints = ledger.endpoints();
    let mut gateway_1 = GatewayProcess::start(dir.path(), "gw-1", &gateway_config(), &endpoints).await;
    let gateway_2 = GatewayProcess::start(dir.path(), "gw-2", &gateway_config(), &endpoints).await;

    for balancer in ["nginx", "haproxy"] {
        let port = free_port().port();
        let balancer_dir = dir.path().join(balancer);
        std::fs::create_dir_all(&balancer_dir).expect("balancer dir");
        let process = match balancer {
            "nginx" => start_nginx(&balancer_dir, &[&gateway_1, &gateway_2], port),
            _ => start_haproxy(&balancer_dir, &[&gateway_1, &gateway_2], port),
        };
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_port(address, process.log()).await;

        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(traffic(address, Arc::clone(&stop)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = Instant::now();
        gateway_1.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        gateway_1.restart().await;
        let restart_took = restarted.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let (answers, unanswered) = load.await.expect("traffic");

        let refused = answers.iter().filter(|answer| answer.status == 401).count();
        let ok = answers.iter().filter(|answer| answer.status == 200).count();
        assert!(ok >= 40 && refused >= 10, "{balancer}: too little traffic: {ok} ok, {refused} refused");
        let bad: Vec<u16> = answers
            .iter()
            .map(|answer| answer.status)
            .filter(|status| ![200, 401].contains(status))
            .collect();
        assert!(
            bad.len() + unanswered <= answers.len() / 20,
            "{balancer}: {} error answers {bad:?} and {unanswered} unanswered of {}: the balancer should route around a \
             restarting gateway; log {}",
            bad.len(),
            answers.len(),
            process.log_text()
        );
        // A body over the gateway's limit gets the gateway's 413 through the balancer (not a
        // reset connection the balancer would turn into a 502), and is audited like any answer.
        let oversized = oversized(address).await;
        assert_eq!(oversized.status, 413, "{balancer}: an oversized body must get the gateway's 413");
        let mut answers = answers;
        answers.push(oversized);
        // 502/503/504 written by the balancer itself carry no record id; judge only the
        // gateways' answers.
        let from_gateways: Vec<Answer> =
            answers.into_iter().filter(|answer| answer.record_id.is_some()).collect();
        let (checked, gateways) = check_records(&ledger, &from_gateways).await;
        assert_eq!(gateways.len(), 2, "{balancer}: both gateways served: {gateways:?}");
        eprintln!(
            "{balancer}: {checked} answered requests, all proven; {unanswered} unanswered; gateway restart took {restart_took:?}"
        );
        // A clean stop: nginx and haproxy exit on SIGTERM (a single nginx process: no orphaned
        // workers keep the port).
        process.terminate(Duration::from_secs(10));
    }
    drop(gateway_2);
}
