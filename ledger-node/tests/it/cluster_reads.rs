//! The rest of the client and admin API on a live cluster: entries, watched checkpoints,
//! status, node removal.

use std::collections::BTreeSet;
use std::time::Duration;

use mmr::{ConsistencyProof, TreeSize, leaf_hash};
use proto::v1;
use tokio_stream::StreamExt as _;

use crate::cluster::{Cluster, admin, append, client, eventually, published};
use crate::support::record_bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stream_the_exact_records_and_refuse_bad_ranges() {
    let cluster = Cluster::start(3, |_| {}).await;
    let verifier = cluster.verifier(&[1, 2, 3]);
    let node = &cluster.nodes[&2];
    append(&mut client(node).await, 0..40).await;
    let checkpoint = published(node, &verifier, 40).await;

    let mut client = client(node).await;
    let mut stream =
        client.get_entries(v1::GetEntriesRequest { start: 5, end: 40 }).await.expect("entries").into_inner();
    let mut leaves = Vec::new();
    while let Some(entry) = stream.next().await {
        let entry = entry.expect("entry");
        leaves.push((entry.leaf_index, leaf_hash(&entry.record)));
    }
    assert_eq!(leaves.iter().map(|(index, _)| *index).collect::<Vec<_>>(), (5..40).collect::<Vec<_>>());
    // The records are the ones appended, in index order: rebuilding the tree from every entry
    // gives the published root.
    let mut all = vec![];
    let mut stream =
        client.get_entries(v1::GetEntriesRequest { start: 0, end: 40 }).await.expect("entries").into_inner();
    while let Some(entry) = stream.next().await {
        all.push(entry.expect("entry").record);
    }
    let mut mmr = mmr::Mmr::new(mmr::MemStore::new());
    for record in &all {
        mmr.append(record).expect("append");
    }
    assert_eq!(mmr.root(), checkpoint.checkpoint.root);
    let appended: BTreeSet<Vec<u8>> = (0..40).map(record_bytes).collect();
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), appended);

    for (start, end, code) in [
        (10, 10, tonic::Code::InvalidArgument),
        (20, 10, tonic::Code::InvalidArgument),
        (0, 1_000, tonic::Code::OutOfRange),
        (0, 20_000, tonic::Code::InvalidArgument),
    ] {
        let status = client.get_entries(v1::GetEntriesRequest { start, end }).await.expect_err("refused");
        assert_eq!(status.code(), code, "{start}..{end}: {}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_checkpoints_grow_and_stay_consistent() {
    let cluster = Cluster::start(3, |_| {}).await;
    let verifier = cluster.verifier(&[1, 2, 3]);
    let node = &cluster.nodes[&3];
    let mut writer = client(node).await;
    append(&mut writer, 0..10).await;
    published(node, &verifier, 10).await;

    let mut watcher = client(node).await;
    let mut stream = watcher
        .watch_checkpoints(v1::WatchCheckpointsRequest { after_size: None })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    for batch in 1..4u64 {
        append(&mut writer, batch * 10..batch * 10 + 10).await;
        let target = batch * 10 + 10;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("a checkpoint arrives")
                .expect("the stream stays open")
                .expect("a checkpoint");
            let note = message.checkpoint.expect("checkpoint").note;
            let verified = verifier.open(note.as_bytes()).expect("watched checkpoints verify");
            seen.push(verified.checkpoint);
            if seen.last().is_some_and(|checkpoint| checkpoint.size.0 >= target) {
                break;
            }
        }
    }
    // Strictly growing, and each one consistent with the previous: what an auditor checks.
    for pair in seen.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        assert!(old.size < new.size, "sizes grow: {} then {}", old.size, new.size);
        let response = watcher
            .get_consistency_proof(v1::GetConsistencyProofRequest {
                old_size: old.size.0,
                new_size: Some(new.size.0),
            })
            .await
            .expect("consistency proof")
            .into_inner();
        let proof = ConsistencyProof::try_from(&response).expect("well-formed");
        proof.verify(&old.root, &new.root).expect("each checkpoint extends the previous one");
    }
    assert!(seen.last().is_some_and(|checkpoint| checkpoint.size >= TreeSize(40)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_roles_sizes_and_keys_and_a_removed_node_leaves() {
    let cluster = Cluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    append(&mut client(&cluster.nodes[&leader]).await, 0..25).await;
    let status = eventually("every node reports 25 applied leaves", || async {
        let status =
            admin(&cluster.nodes[&leader]).await.status(v1::StatusRequest {}).await.ok()?.into_inner();
        (status.applied_tree_size == 25 && status.published_tree_size == 25).then_some(status)
    })
    .await;
    assert_eq!(status.node_id, leader);
    assert_eq!(status.role, v1::NodeRole::Leader as i32);
    assert_eq!(status.leader_id, Some(leader));
    assert_eq!(status.origin, "aegis.test/ledger");
    assert!(status.healthy);
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|node| node.kind == v1::MemberKind::Voter as i32));
    let expected_keys: BTreeSet<String> =
        cluster.nodes.values().map(|node| node.info.verifier_key.clone()).collect();
    assert_eq!(status.verifier_keys.iter().cloned().collect::<BTreeSet<_>>(), expected_keys);
    assert_eq!(
        status.node.as_ref().map(|node| node.verifier_key.clone()),
        Some(cluster.nodes[&leader].info.verifier_key.clone())
    );
    eventually("followers' replication lag drains to 0", || async {
        let status =
            admin(&cluster.nodes[&leader]).await.status(v1::StatusRequest {}).await.ok()?.into_inner();
        status.nodes.iter().all(|node| node.lag_entries == Some(0)).then_some(())
    })
    .await;

    let removed = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    admin(&cluster.nodes[&leader])
        .await
        .remove_node(v1::RemoveNodeRequest { node_id: removed })
        .await
        .expect("remove a follower");
    let status =
        admin(&cluster.nodes[&leader]).await.status(v1::StatusRequest {}).await.expect("status").into_inner();
    assert!(status.nodes.iter().all(|node| node.node.as_ref().map(|node| node.node_id) != Some(removed)));
    // Two voters remain; a majority of two is both, and appends still commit.
    let response = append(&mut client(&cluster.nodes[&leader]).await, 25..30).await;
    assert_eq!(response.tree_size, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_beyond_the_concurrency_limit_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3, |config| config.limits.concurrent_appends_max = 2).await;
    let leader = &cluster.nodes[&cluster.leader().await];
    let writer = client(leader).await;
    let calls = (0..40u64).map(|call| {
        let mut writer = writer.clone();
        tokio::spawn(async move {
            let records = (call * 50..call * 50 + 50).map(record_bytes).collect();
            writer.append(v1::AppendRequest { records }).await
        })
    });
    let (mut acknowledged, mut refused) = (0u64, 0u64);
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("task") {
            Ok(response) => {
                assert!(response.get_ref().results.iter().all(|result| !result.already_present));
                acknowledged += 50;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{}", status.message());
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "40 concurrent calls against a limit of 2 must refuse some");
    assert!(acknowledged > 0);
    // Refused calls appended nothing: the tree holds exactly the acknowledged records.
    let applied = leader.applied.borrow().size;
    assert_eq!(applied, TreeSize(acknowledged));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_corrupted_ledger_refuses_to_serve_and_says_why() {
    let mut cluster = Cluster::start(1, |_| {}).await;
    append(&mut client(&cluster.nodes[&1]).await, 0..100).await;
    let config = cluster.configs[&1].clone();
    cluster.stop(1).await;

    // 100 leaves: the first peak (height 6) is node 126, in node block 0.
    {
        // The stopped node's last tasks release the database shortly after shutdown returns.
        let db = eventually("the stopped node releases its database", || async {
            sled::Config::new()
                .path(config.data_dir.join("sled"))
                .segment_size(ledger_node::storage::SLED_SEGMENT_BYTES)
                .open()
                .ok()
        })
        .await;
        let tree = db.open_tree("ledger").expect("tree");
        let key = [&[b'n'][..], &0u64.to_be_bytes()].concat();
        let mut block = tree.get(&key).expect("read").expect("node block 0").to_vec();
        block[126 * 32] ^= 1;
        tree.insert(&key, block).expect("corrupt a peak");
        db.flush().expect("flush");
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ledger_node::run(config.clone(), async move {
        let _ = stopped.await;
    }));
    let health = eventually("/healthz reports the corruption", || async {
        tokio::net::TcpStream::connect(config.metrics_listen).await.ok()?;
        let response = crate::config::http_get(config.metrics_listen, "/healthz").await;
        (response.status == 503).then_some(response.body)
    })
    .await;
    assert!(health.contains("root"), "{health}");
    // Nothing else is served: the client port is not listening.
    assert!(tokio::net::TcpStream::connect(config.client_listen).await.is_err());
    stop.send(()).expect("the node is waiting for shutdown");
    let error = running.await.expect("task").expect_err("the node refused to start");
    assert!(format!("{error:#}").contains("root"), "{error:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_the_configured_token() {
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token_file = token_dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token\n").expect("write token");
    let mut cluster = Cluster::start(1, |_| {}).await;
    let mut config = cluster.configs[&1].clone();
    cluster.stop(1).await;
    config.admin_token_file = Some(token_file);
    let node = eventually("the node restarts with a token", || {
        let config = config.clone();
        async move { ledger_node::LedgerNode::start(&config).await.ok() }
    })
    .await;

    let mut admin = admin(&node).await;
    let status = |token: Option<&str>| {
        let mut request = tonic::Request::new(v1::StatusRequest {});
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", token.parse().expect("ascii"));
        }
        request
    };
    for wrong in
        [None, Some("Bearer wrong-token"), Some("s3cret-admin-token"), Some("Bearer s3cret-admin-token ")]
    {
        let error = admin.status(status(wrong)).await.expect_err("refused without the right token");
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{wrong:?}");
    }
    let reply =
        admin.status(status(Some("Bearer s3cret-admin-token"))).await.expect("the right token is accepted");
    assert_eq!(reply.into_inner().node_id, 1);
    node.shutdown().await.expect("clean shutdown");
}
