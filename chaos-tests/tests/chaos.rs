//! The chaos suite: under crashes, pauses, partitions, slow links and disk faults, no
//! acknowledged audit record is ever lost or duplicated, and the log never forks.
//!
//! Each scenario starts three ledger nodes (peer traffic through fault-injecting relays) and two
//! gateways on the mock upstream, runs concurrent clients (direct `Append`s, and chat requests
//! through the gateways in strict, durable and async audit mode), injects its fault, heals, and
//! checks with `mmr` verification (see `chaos_tests::checks`). A summary table closes the run.
//!
//! Runs when `AEGIS_CHAOS=1` (`.ci/run` sets it, with release binaries in `AEGIS_BIN_DIR`):
//!
//! ```text
//! AEGIS_CHAOS=1 cargo test --release -p chaos-tests --test chaos -- --nocapture
//! AEGIS_CHAOS_SEED=42 AEGIS_CHAOS_SCENARIOS=leader-kill,leader-pause ...   # reproduce
//! AEGIS_CHAOS_SOAK_SECS=3600 ...                                            # random faults for an hour
//! ```

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chaos_tests::checks::{Expect, Observer, Verdict, verify};
use chaos_tests::relay::Link;
use chaos_tests::workload::{
    Attempt, LoadShape, Outcome, Targets, Workload, first_success_after, gateway_config,
};
use chaos_tests::{ClusterOptions, GatewayProcess, LedgerCluster, Rng};
use tokio::time::Instant;

/// Every scenario, in the order the suite runs them. The first [`SOAK_FAULTS`] need no special
/// setup and leave every node running: the soak mode draws from them.
const SCENARIOS: &[&str] = &[
    "leader-kill",
    "follower-kill-restart",
    "leader-pause",
    "leader-isolated",
    "minority-partition",
    "one-way-link",
    "slow-links",
    "very-slow-links",
    "rolling-restart",
    "whole-cluster-restart",
    "disk-full",
    "flipped-byte",
    "fsync-eio",
    "follower-fsync-eio",
    "five-nodes-two-down",
    "gateway-killed-with-spool",
    "ledger-down",
];
/// How many of [`SCENARIOS`] the soak mode injects at random.
const SOAK_FAULTS: usize = 10;

/// Load before the fault, so that there is something to lose.
const WARM_UP: Duration = Duration::from_secs(2);
/// Load after the fault healed, so that recovery is exercised.
const COOL_DOWN: Duration = Duration::from_secs(3);
/// Longer than the ledger's maximum election timeout (2 s by default).
const PAUSE: Duration = Duration::from_millis(3500);

/// One line of the summary table.
struct Row {
    scenario: String,
    verdict: Verdict,
    recovered: Option<Duration>,
    max_ack_latency: Duration,
    note: String,
}

/// The processes of one scenario.
struct Stack {
    cluster: LedgerCluster,
    gateways: Vec<GatewayProcess>,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(options: ClusterOptions) -> Self {
        let cluster = LedgerCluster::start_with(ClusterOptions { relays: true, ..options }).await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let endpoints = cluster.endpoints();
        let mut gateways = Vec::new();
        for id in ["gw-1", "gw-2"] {
            gateways.push(GatewayProcess::start(dir.path(), id, &gateway_config(), &endpoints).await);
        }
        Self { cluster, gateways, _dir: dir }
    }

    fn targets(&self) -> Targets {
        Targets {
            ledger: self.cluster.nodes().iter().map(|node| node.client).collect(),
            gateways: self.gateways.iter().map(|gateway| gateway.addr).collect(),
        }
    }

    fn node_ids(&self) -> Vec<u64> {
        self.cluster.nodes().iter().map(|node| node.id).collect()
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leader) = self.cluster.leader_index().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn follower(&self) -> usize {
        let leader = self.leader().await;
        (leader + 1) % self.cluster.nodes().len()
    }
}

/// What a fault reports besides the oracle's verdict.
#[derive(Default)]
struct FaultReport {
    /// When the fault began, or for an outage (the whole ledger down) when it ended: recovery
    /// is measured from here.
    injected: Option<Instant>,
    /// A gateway was SIGKILLed (its async records in memory were never promised).
    gateway_killed: bool,
    /// Say in the note how many async records the kill took.
    count_async_missing: bool,
    /// Nodes that must not be part of the final comparison (e.g. refused to start on a corrupt
    /// file, as they must).
    excluded: Vec<usize>,
    note: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_record_is_lost_duplicated_or_forked_under_faults() {
    if std::env::var_os("AEGIS_CHAOS").is_none() {
        eprintln!("chaos suite skipped: set AEGIS_CHAOS=1 to run it (.ci/run does)");
        return;
    }
    let seed = std::env::var("AEGIS_CHAOS_SEED")
        .ok()
        .map(|seed| seed.parse::<u64>().expect("AEGIS_CHAOS_SEED is a number"))
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock");
            (u64::from(now.subsec_micros()) ^ now.as_secs()) % 1_000_000
        });
    let chosen: Vec<String> = match std::env::var("AEGIS_CHAOS_SCENARIOS") {
        Ok(list) => {
            list.split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect()
        }
        Err(_) => SCENARIOS.iter().map(|name| (*name).to_owned()).collect(),
    };
    for name in &chosen {
        assert!(SCENARIOS.contains(&name.as_str()), "unknown scenario {name:?}; known: {SCENARIOS:?}");
    }
    eprintln!("chaos seed {seed}; scenarios {chosen:?}");

    let mut rows = Vec::new();
    if let Some(seconds) =
        std::env::var("AEGIS_CHAOS_SOAK_SECS").ok().map(|s| s.parse::<u64>().expect("seconds"))
    {
        rows.push(soak(seed, Duration::from_secs(seconds)).await);
    } else {
        for (run, name) in chosen.iter().enumerate() {
            eprintln!(
                "== {name} (reproduce: AEGIS_CHAOS=1 AEGIS_CHAOS_SEED={seed} AEGIS_CHAOS_SCENARIOS={name} \
                 cargo test --release -p chaos-tests --test chaos -- --nocapture)"
            );
            let row = scenario(name, seed, u32::try_from(run).expect("few scenarios")).await;
            eprintln!("   {}", line(&row));
            rows.push(row);
        }
    }

    let summary = format!("seed {seed}\n{}", table(&rows));
    eprintln!("\n{summary}");
    if let Some(path) = std::env::var_os("AEGIS_CHAOS_SUMMARY") {
        std::fs::write(&path, &summary).expect("write the chaos summary");
    }
    let failures: Vec<String> = rows
        .iter()
        .filter(|row| {
            !row.verdict.lost.is_empty()
                || !row.verdict.duplicated.is_empty()
                || !row.verdict.violations.is_empty()
        })
        .map(|row| {
            format!(
                "{}: lost {:?}, duplicated {:?}, violations {:?}",
                row.scenario,
                first(&row.verdict.lost),
                first(&row.verdict.duplicated),
                row.verdict.violations
            )
        })
        .collect();
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}

fn first(ids: &[String]) -> &[String] {
    &ids[..ids.len().min(5)]
}

async fn scenario(name: &str, seed: u64, run: u32) -> Row {
    let mut rng = Rng::new(seed ^ u64::from(run).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let options = match name {
        "disk-full" => ClusterOptions { small_disk: Some((1, 96 << 20)), ..ClusterOptions::default() },
        "five-nodes-two-down" => ClusterOptions { nodes: 5, ..ClusterOptions::default() },
        _ => ClusterOptions::default(),
    };
    let mut stack = Stack::start(options).await;
    let workload = Workload::start(&stack.targets(), LoadShape::default(), 1000 + run, rng.next_u64());
    let observer = Observer::start(stack.targets().ledger);
    tokio::time::sleep(WARM_UP).await;

    let report = fault(name, &mut stack, &workload, &mut rng).await;
    tokio::time::sleep(COOL_DOWN).await;
    let recovered = report.injected.and_then(|at| workload.recovered_after(at));
    let (attempts, successes) = workload.stop().await;
    let recovered = recovered.or_else(|| report.injected.and_then(|at| first_success_after(&successes, at)));
    finish(name, stack, attempts, observer, report, recovered, &mut rng).await
}

/// Lets the gateways deliver what they hold, stops them cleanly, and runs the oracle.
async fn finish(
    name: &str,
    mut stack: Stack,
    attempts: Vec<Attempt>,
    observer: Observer,
    report: FaultReport,
    recovered: Option<Duration>,
    rng: &mut Rng,
) -> Row {
    for gateway in &mut stack.gateways {
        if gateway.is_running() {
            assert!(
                gateway.wait_drained(Duration::from_secs(90)).await,
                "{name}: gateway {} still holds audit records after 90 s: {}",
                gateway.id,
                gateway.log_text()
            );
            gateway.stop();
        }
    }
    for index in &report.excluded {
        stack.cluster.kill(*index);
    }
    let observations = observer.stop().await;
    let max_ack_latency = attempts
        .iter()
        .filter(|attempt| attempt.outcome == Outcome::Acked)
        .map(|attempt| attempt.latency)
        .max()
        .unwrap_or_default();
    let expect = Expect { async_may_be_lost: report.gateway_killed };
    let verdict = verify(&stack.cluster, &attempts, &observations, expect, rng).await;
    let mut note = report.note;
    if report.count_async_missing {
        note.push_str(&format!(
            ", {} async records in its memory lost (not promised)",
            verdict.async_missing
        ));
    }
    Row { scenario: name.to_owned(), verdict, recovered, max_ack_latency, note }
}

/// Injects `name`'s fault and heals it; every node runs and every link is up when it returns.
async fn fault(name: &str, stack: &mut Stack, workload: &Workload, rng: &mut Rng) -> FaultReport {
    let mut report = FaultReport::default();
    let ids = stack.node_ids();
    match name {
        "leader-kill" => {
            let leader = stack.leader().await;
            report.injected = Some(Instant::now());
            stack.cluster.kill(leader);
            wait_recovered(workload, report.injected).await;
            stack.cluster.restart(leader).await;
        }
        "follower-kill-restart" => {
            let follower = stack.follower().await;
            report.injected = Some(Instant::now());
            stack.cluster.kill(follower);
            tokio::time::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(4))).await;
            stack.cluster.restart(follower).await;
        }
        "leader-pause" => {
            let leader = stack.leader().await;
            report.injected = Some(Instant::now());
            stack.cluster.pause(leader);
            tokio::time::sleep(PAUSE).await;
            stack.cluster.resume(leader);
            report.note = format!("node {} paused {PAUSE:?}", leader + 1);
        }
        "leader-isolated" => {
            let leader = stack.leader().await;
            report.injected = Some(Instant::now());
            stack.cluster.network().isolate(ids[leader], ids.iter().copied());
            wait_recovered(workload, report.injected).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack.cluster.network().heal();
            report.note = format!("node {} isolated", leader + 1);
        }
        "minority-partition" => {
            let follower = stack.follower().await;
            report.injected = Some(Instant::now());
            stack.cluster.network().isolate(ids[follower], ids.iter().copied());
            tokio::time::sleep(Duration::from_secs(4)).await;
            stack.cluster.network().heal();
            report.note = format!("node {} cut off", follower + 1);
        }
        "one-way-link" => {
            // The leader's messages stop reaching one follower; the follower's still arrive.
            let leader = stack.leader().await;
            let follower = stack.follower().await;
            report.injected = Some(Instant::now());
            stack.cluster.network().set(ids[leader], ids[follower], Link::Down);
            tokio::time::sleep(Duration::from_secs(4)).await;
            stack.cluster.network().heal();
            report.note = format!("node {} -> node {} dropped", leader + 1, follower + 1);
        }
        "slow-links" => {
            // Within what the default timing tolerates: replication goes on, only slower.
            report.injected = Some(Instant::now());
            slow_links(stack, rng, Duration::from_millis(5), Duration::from_millis(40));
            tokio::time::sleep(Duration::from_secs(4)).await;
            let during = workload.recovered_after(report.injected.expect("just set"));
            stack.cluster.network().heal();
            assert!(during.is_some(), "no append was acknowledged over links of 5-40 ms");
            report.note = "5-40 ms per link, appends kept flowing".to_owned();
        }
        "very-slow-links" => {
            // Beyond it: a round trip over the heartbeat interval (openraft's AppendEntries
            // timeout) stalls replication. Nothing may be lost; recovery is measured from the heal.
            slow_links(stack, rng, Duration::from_millis(100), Duration::from_millis(150));
            tokio::time::sleep(Duration::from_secs(4)).await;
            report.injected = Some(Instant::now());
            stack.cluster.network().heal();
            report.note = "100-150 ms per link, then healed".to_owned();
        }
        "rolling-restart" => {
            report.injected = Some(Instant::now());
            for index in 0..ids.len() {
                assert!(stack.cluster.stop(index), "node {} did not stop cleanly on SIGTERM", index + 1);
                stack.cluster.restart(index).await;
                wait_caught_up(&stack.cluster, index).await;
            }
        }
        "whole-cluster-restart" => {
            report.injected = Some(Instant::now());
            stack.cluster.kill_all();
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.cluster.restart_all().await;
            wait_recovered(workload, report.injected).await;
        }
        "disk-full" => disk_full(stack, workload, &mut report).await,
        "flipped-byte" => flipped_byte(stack, rng, &mut report).await,
        "fsync-eio" => fsync_eio(stack, workload, &mut report, true).await,
        "follower-fsync-eio" => fsync_eio(stack, workload, &mut report, false).await,
        "five-nodes-two-down" => {
            // Five voters: the leader and a follower die at once; the other three elect and go on.
            let leader = stack.leader().await;
            let follower = stack.follower().await;
            report.injected = Some(Instant::now());
            stack.cluster.kill(leader);
            stack.cluster.kill(follower);
            wait_recovered(workload, report.injected).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack.cluster.restart(leader).await;
            stack.cluster.restart(follower).await;
            report.note = format!("nodes {} (leader) and {} killed of 5", leader + 1, follower + 1);
        }
        "gateway-killed-with-spool" => {
            // The ledger goes away, the gateways spool, gateway 1 is killed with records in
            // its spool, then everything comes back.
            stack.cluster.kill_all();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let spooled = stack.gateways[0].metric("aegis_gateway_audit_spool_records").await.unwrap_or(0.0);
            stack.gateways[0].kill();
            report.gateway_killed = true;
            report.note = format!("gateway killed with {spooled} records spooled");
            report.count_async_missing = true;
            // Recovery is measured from the restart: the outage itself is the scenario.
            report.injected = Some(Instant::now());
            stack.cluster.restart_all().await;
            stack.gateways[0].restart().await;
        }
        "ledger-down" => {
            let down = ledger_down_time();
            stack.cluster.kill_all();
            tokio::time::sleep(down).await;
            let spooled: f64 = {
                let mut total = 0.0;
                for gateway in &stack.gateways {
                    total += gateway.metric("aegis_gateway_audit_spool_records").await.unwrap_or(0.0);
                }
                total
            };
            report.injected = Some(Instant::now());
            stack.cluster.restart_all().await;
            report.note = format!("ledger down {down:?}, {spooled} records spooled");
        }
        other => panic!("no scenario {other}"),
    }
    report
}

/// Delays every link between `low` and `high` (each direction drawn on its own).
fn slow_links(stack: &Stack, rng: &mut Rng, low: Duration, high: Duration) {
    let ids = stack.node_ids();
    for &from in &ids {
        for &to in &ids {
            if from != to {
                stack.cluster.network().set(from, to, Link::Slow(rng.between(low, high)));
            }
        }
    }
}

/// 30 s, or `AEGIS_CHAOS_LEDGER_DOWN_SECS`.
fn ledger_down_time() -> Duration {
    let seconds =
        std::env::var("AEGIS_CHAOS_LEDGER_DOWN_SECS").ok().map_or(30, |s| s.parse().expect("seconds"));
    Duration::from_secs(seconds)
}

/// Waits (up to 30 s) until a direct append that started after `since` succeeded.
async fn wait_recovered(workload: &Workload, since: Option<Instant>) {
    let since = since.expect("the fault's start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while workload.recovered_after(since).is_none() {
        assert!(Instant::now() < deadline, "appends did not resume within 30 s of the fault");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `index` applied as much as the leader had when asked (up to 30 s to find
/// the leader, 30 s more to catch up).
async fn wait_caught_up(cluster: &LedgerCluster, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        if let Some(leader) = cluster.leader_index().await
            && let Some(status) = cluster.try_status(leader).await
        {
            break status.applied_tree_size;
        }
        assert!(Instant::now() < deadline, "no leader answered within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.wait_applied(index, target).await;
}

/// Node 1's data directory is on a small tmpfs, which fills up under load. It must stop
/// acknowledging rather than corrupt anything, and serve the same log again once space returns.
async fn disk_full(stack: &mut Stack, workload: &Workload, report: &mut FaultReport) {
    report.injected = Some(Instant::now());
    let filler = stack.cluster.small_disk().fill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_recovered(workload, report.injected).await;
    let exited = stack.cluster.has_exited(0);
    let log = std::fs::read_to_string(&stack.cluster.nodes()[0].log).unwrap_or_default();
    std::fs::remove_file(&filler).expect("give the space back");
    if exited {
        stack.cluster.reap(0);
        stack.cluster.restart(0).await;
    }
    wait_caught_up(&stack.cluster, 0).await;
    report.note = format!(
        "node 1 {} on ENOSPC{}",
        if exited { "exited" } else { "kept running" },
        if log.contains("No space left") || log.contains("ENOSPC") { " (logged)" } else { "" }
    );
}

/// A follower is killed, one byte of its sled data file is flipped, and it starts again. It
/// must refuse to serve what it cannot trust (exit, or stay up unhealthy with its client port
/// closed), or serve exactly the log the others serve (when the byte was dead space or the
/// damage repairable); the final checks compare it with the others then.
async fn flipped_byte(stack: &mut Stack, rng: &mut Rng, report: &mut FaultReport) {
    let follower = stack.follower().await;
    report.injected = Some(Instant::now());
    stack.cluster.kill(follower);
    let db = stack.cluster.nodes()[follower].data_dir.join("sled").join("db");
    let (offset, length) = flip_byte(&db, rng);
    stack.cluster.start_node(follower);
    let deadline = Instant::now() + Duration::from_secs(20);
    let verdict = loop {
        if stack.cluster.has_exited(follower) {
            break "exited";
        }
        if stack.cluster.healthz(follower).await == Some(503) {
            break "stayed unhealthy";
        }
        if stack.cluster.try_status(follower).await.is_some() {
            break "serves";
        }
        assert!(Instant::now() < deadline, "node {} neither serves nor refuses after 20 s", follower + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = follower + 1;
    if verdict == "serves" {
        wait_caught_up(&stack.cluster, follower).await;
        report.note = format!("byte {offset} of {length}: node {node} serves the same log");
    } else {
        assert!(
            stack.cluster.try_status(follower).await.is_none(),
            "node {node} {verdict} but answers on its client port"
        );
        let reason = stack.cluster.log_tail(follower, 50);
        let reason =
            reason.lines().find(|line| line.contains("ERROR")).unwrap_or("no ERROR line logged").to_owned();
        stack.cluster.reap(follower);
        report.excluded.push(follower);
        report.note = format!("byte {offset} of {length}: node {node} {verdict}");
        eprintln!("   node {node} refused its corrupted data: {reason}");
    }
}

/// Flips one byte of `file` at a seeded offset; returns (offset, file length).
fn flip_byte(file: &Path, rng: &mut Rng) -> (u64, u64) {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let mut handle =
        std::fs::OpenOptions::new().read(true).write(true).open(file).expect("open sled's db file");
    let length = handle.metadata().expect("metadata").len();
    assert!(length > 0, "{} is empty", file.display());
    let offset = rng.next_u64() % length;
    let mut byte = [0u8; 1];
    handle.seek(SeekFrom::Start(offset)).expect("seek");
    handle.read_exact(&mut byte).expect("read");
    byte[0] ^= 0x5a;
    handle.seek(SeekFrom::Start(offset)).expect("seek");
    handle.write_all(&byte).expect("write");
    handle.sync_all().expect("sync");
    (offset, length)
}

/// A node's fdatasync calls fail with EIO (injected with strace): the leader's, or a
/// follower's. It must stop acknowledging (its log can no longer be made durable): it exits, the
/// others go on (electing a new leader if it led), and once it is restarted on a working disk it
/// catches up.
async fn fsync_eio(stack: &mut Stack, workload: &Workload, report: &mut FaultReport, leader: bool) {
    let node = if leader { stack.leader().await } else { stack.follower().await };
    let pid = stack.cluster.pid(node).expect("the node runs");
    let log = stack.cluster.dir().join("strace.log");
    let mut strace = Strace::attach(pid, &log);
    report.injected = Some(Instant::now());
    // strace ends by itself only when the node exits (on the injected error).
    if let Err(problem) = strace.status(&log) {
        assert!(stack.cluster.has_exited(node), "strace could not attach to node {}: {problem}", node + 1);
    }
    wait_recovered(workload, report.injected).await;
    // Appends flow again; the failing node must be out of the way by now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.cluster.has_exited(node) {
        assert!(
            Instant::now() < deadline,
            "node {} still runs 10 s after its fdatasync failed:\n{}",
            node + 1,
            stack.cluster.log_tail(node, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    strace.detach();
    stack.cluster.reap(node);
    stack.cluster.restart(node).await;
    wait_caught_up(&stack.cluster, node).await;
    let role = if leader { "leader" } else { "follower" };
    report.note = format!("{role} node {} exited on EIO, rejoined", node + 1);
}

/// strace attached to a process, failing its fdatasync and fsync calls with EIO.
struct Strace {
    child: Child,
}

impl Strace {
    fn attach(pid: u32, log: &Path) -> Self {
        let strace = ["/usr/bin/strace", "/bin/strace"].into_iter().find(|path| Path::new(path).exists());
        let strace = strace.expect("strace is not installed: `apt-get install -y strace` (.ci/run does it)");
        let child = Command::new(strace)
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=fdatasync,fsync",
                "-e",
                "inject=fdatasync,fsync:error=EIO",
                "-o",
            ])
            .arg(log)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log.with_extension("err")).expect("strace's error file"))
            .spawn()
            .expect("start strace");
        // strace attaches to every thread before the first injection; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Self { child }
    }

    /// Whether strace is still running, and what it reported if it is not.
    fn status(&mut self, log: &Path) -> Result<(), String> {
        match self.child.try_wait().expect("strace's status") {
            None => Ok(()),
            Some(status) => Err(format!(
                "strace ended ({status}): {}",
                std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            )),
        }
    }

    fn detach(&mut self) {
        let _ =
            Command::new("kill").args(["-INT", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Random faults on one stack for `length`, checking everything at the end.
async fn soak(seed: u64, length: Duration) -> Row {
    let faults = &SCENARIOS[..SOAK_FAULTS];
    let mut rng = Rng::new(seed);
    let mut stack = Stack::start(ClusterOptions::default()).await;
    let workload = Workload::start(&stack.targets(), LoadShape::default(), 900, rng.next_u64());
    let observer = Observer::start(stack.targets().ledger);
    let started = Instant::now();
    let mut injected = Vec::new();
    while started.elapsed() < length {
        tokio::time::sleep(rng.between(Duration::from_secs(3), Duration::from_secs(15))).await;
        let name = faults[rng.below(faults.len())];
        eprintln!("soak {:?}: {name}", started.elapsed());
        fault(name, &mut stack, &workload, &mut rng).await;
        injected.push(name);
    }
    tokio::time::sleep(COOL_DOWN).await;
    let (attempts, _) = workload.stop().await;
    let report = FaultReport { note: format!("{} faults", injected.len()), ..FaultReport::default() };
    finish("soak", stack, attempts, observer, report, None, &mut rng).await
}

fn line(row: &Row) -> String {
    let verdict = &row.verdict;
    format!(
        "ops {} acked {} unknown {} lost {} duplicated {} violations {} recovered {} max ack {:.2}s size {} checkpoints {} {}",
        verdict.operations,
        verdict.acknowledged,
        verdict.unknown,
        verdict.lost.len(),
        verdict.duplicated.len(),
        verdict.violations.len(),
        row.recovered.map_or("-".to_owned(), |took| format!("{:.2}s", took.as_secs_f64())),
        row.max_ack_latency.as_secs_f64(),
        verdict.tree_size,
        verdict.checkpoints_seen,
        row.note
    )
}

fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:<26} {:>6} {:>6} {:>7} {:>5} {:>5} {:>9} {:>9}  {}\n",
        "scenario", "ops", "acked", "unknown", "lost", "dup", "recovery", "max ack", "note"
    );
    for row in rows {
        let verdict = &row.verdict;
        text.push_str(&format!(
            "{:<26} {:>6} {:>6} {:>7} {:>5} {:>5} {:>9} {:>8.2}s  {}{}\n",
            row.scenario,
            verdict.operations,
            verdict.acknowledged,
            verdict.unknown,
            verdict.lost.len(),
            verdict.duplicated.len(),
            row.recovered.map_or("-".to_owned(), |took| format!("{:.2}s", took.as_secs_f64())),
            row.max_ack_latency.as_secs_f64(),
            row.note,
            if verdict.violations.is_empty() {
                String::new()
            } else {
                format!(" VIOLATIONS: {}", verdict.violations.len())
            }
        ));
    }
    text
}
