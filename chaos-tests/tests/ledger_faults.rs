//! Regression tests for what the chaos suite found in the ledger node, in a form quick enough for
//! every test run: a node whose disk fills up exits (it used to stay up serving a frozen state,
//! never recovering), and a node whose sled file was damaged refuses to serve (it used to rejoin
//! with a shorter log, which made the leader panic).

use std::time::Duration;

use chaos_tests::{ClusterOptions, LedgerCluster, audit_record, record_id};
use proto::v1;
use tokio::time::Instant;

/// Appends `count` records (through node `via`, forwarded to the leader) numbered from `first`,
/// retrying for up to 30 s while no leader is known (just started, or electing a new one).
async fn append_eventually(cluster: &LedgerCluster, via: usize, run: u32, first: u64, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = (first..first + count).map(|n| audit_record(&record_id(run, n), "faults")).collect();
        match cluster.ledger(via).append(v1::AppendRequest { records }).await {
            Ok(_) => return,
            Err(status) => assert!(Instant::now() < deadline, "appends did not resume within 30 s: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_exits_and_rejoins_once_space_returns() {
    let mut cluster = LedgerCluster::start_with(ClusterOptions {
        small_disk: Some((1, 64 << 20)),
        ..ClusterOptions::default()
    })
    .await;
    append_eventually(&cluster, 1, 1, 0, 10).await;
    let filler = cluster.small_disk().fill();

    // Appends go on through the other two nodes; node 1 fails to write its log and must exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 10;
    while !cluster.has_exited(0) {
        assert!(Instant::now() < deadline, "node 1 still runs on a full disk:\n{}", cluster.log_tail(0, 20));
        if cluster
            .ledger(1)
            .append(v1::AppendRequest { records: vec![audit_record(&record_id(1, next), "faults")] })
            .await
            .is_ok()
        {
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cluster.log_tail(0, 50);
    assert!(log.contains("Raft stopped on a fatal error"), "node 1 says why it exits:\n{log}");
    assert!(log.contains("No space left on device"), "and names the disk error:\n{log}");

    // The other two go on (electing a new leader if node 1 led); node 1 comes back once space
    // returns and catches up.
    append_eventually(&cluster, 1, 1, next, 5).await;
    // A supervisor restarting it while the disk is still full must not make things worse:
    // whatever the node does then (exit again, or serve until its first write fails), the
    // tree it serves once space returns is the cluster's.
    cluster.reap(0);
    cluster.start_node(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.reap(0);
    std::fs::remove_file(filler).expect("free the space");
    cluster.restart(0).await;
    // It catches up to node 2's latest published checkpoint and serves the same one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let latest = v1::GetCheckpointRequest { tree_size: None };
        let published = cluster.ledger(1).get_checkpoint(latest).await.expect("node 2 serves its checkpoint");
        let published = published.into_inner().checkpoint.expect("a checkpoint");
        let same_size = v1::GetCheckpointRequest { tree_size: Some(published.tree_size) };
        if published.tree_size >= next + 5
            && let Ok(served) = cluster.ledger(0).get_checkpoint(same_size).await
        {
            let served = served.into_inner().checkpoint.expect("a checkpoint");
            assert_eq!(
                served.root, published.root,
                "node 1 serves the same tree at {} leaves",
                published.tree_size
            );
            break;
        }
        assert!(Instant::now() < deadline, "node 1 serves no checkpoint of node 2's latest after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_sled_file_lost_durable_entries_refuses_to_serve() {
    let mut cluster = LedgerCluster::start().await;
    append_eventually(&cluster, 0, 2, 0, 200).await;
    for batch in 0..20 {
        append_eventually(&cluster, 0, 2, 200 + batch * 10, 10).await;
    }
    cluster.wait_applied(2, 400).await;

    // Node 3's sled file loses its tail, as sled's recovery does with a damaged record: cut the
    // data file in half (everything after the cut is gone at the next start).
    cluster.kill(2);
    let db = cluster.nodes()[2].data_dir.join("sled").join("db");
    let length = std::fs::metadata(&db).expect("sled's data file").len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).expect("open");
    file.set_len(length / 2).expect("truncate");
    drop(file);

    cluster.start_node(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.healthz(2).await != Some(503) {
        assert!(
            Instant::now() < deadline,
            "node 3 does not report itself unhealthy:\n{}",
            cluster.log_tail(2, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.try_status(2).await.is_none(), "node 3 must not serve its damaged ledger");
    let log = cluster.log_tail(2, 20);
    assert!(log.contains("sled's data files are damaged"), "node 3 says why:\n{log}");
    // The other two go on.
    append_eventually(&cluster, 0, 2, 400, 5).await;
}
