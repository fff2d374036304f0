//! `audit` recomputes the whole tree of 10^5 entries, and names the first entry a node serves
//! that is not the signed tree's.

use chaos_tests::{LedgerCluster, free_port};
use proto::v1;
use tonic::{Request, Response};

use crate::support::{aegisctl, append_records, ledger_arg, pin};

#[tokio::test(flavor = "multi_thread")]
async fn audit_recomputes_a_hundred_thousand_entries() {
    const ENTRIES: u64 = 100_000;
    let cluster = LedgerCluster::start().await;
    // Several appenders at once, as gateways would.
    let mut appenders = Vec::new();
    let cluster = std::sync::Arc::new(cluster);
    for worker in 0..4 {
        let cluster = std::sync::Arc::clone(&cluster);
        appenders.push(tokio::spawn(async move {
            append_records(&cluster, 2, worker * ENTRIES / 4, ENTRIES / 4).await;
        }));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    cluster.wait_for_published(ENTRIES).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = pin(&cluster, dir.path());
    let audit =
        aegisctl(&["audit", "--ledger", &ledger_arg(&cluster), "--trust", trust.to_str().unwrap()]).ok();
    assert_eq!(audit["verified"], true);
    assert_eq!(audit["entries"], ENTRIES);
    assert_eq!(audit["recomputed_root"], audit["checkpoint"]["root"]);
    assert_eq!(audit["duplicate_record_ids"], 0);
    assert_eq!(audit["undecodable_records"], 0);
    let small_pages = aegisctl(&[
        "audit",
        "--ledger",
        &ledger_arg(&cluster),
        "--trust",
        trust.to_str().unwrap(),
        "--page",
        "4093",
    ]);
    assert_eq!(
        small_pages.code, 0,
        "pages that do not divide the tree still cover it: {}",
        small_pages.stderr
    );
}

/// A `Ledger` in front of a real node that serves one entry with a flipped byte: the entries no
/// longer match the signed tree, as if a node's storage had been altered under it.
struct TamperingLedger {
    node: proto::LedgerClient<tonic::transport::Channel>,
    altered_leaf: u64,
}

type EntryStream = std::pin::Pin<
    Box<
        dyn tonic::codegen::tokio_stream::Stream<Item = Result<v1::GetEntriesResponse, tonic::Status>> + Send,
    >,
>;
type CheckpointStream = std::pin::Pin<
    Box<
        dyn tonic::codegen::tokio_stream::Stream<Item = Result<v1::WatchCheckpointsResponse, tonic::Status>>
            + Send,
    >,
>;

#[tonic::async_trait]
impl proto::Ledger for TamperingLedger {
    type GetEntriesStream = EntryStream;
    type WatchCheckpointsStream = CheckpointStream;

    async fn append(
        &self,
        _: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("read-only"))
    }

    async fn get_checkpoint(
        &self,
        request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, tonic::Status> {
        self.node.clone().get_checkpoint(request.into_inner()).await
    }

    async fn get_entries(
        &self,
        request: Request<v1::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, tonic::Status> {
        use tonic::codegen::tokio_stream::StreamExt as _;
        let altered_leaf = self.altered_leaf;
        let stream = self.node.clone().get_entries(request.into_inner()).await?.into_inner();
        let altered = stream.map(move |entry| {
            entry.map(|mut entry| {
                if entry.leaf_index == altered_leaf {
                    let last = entry.record.len() - 1;
                    entry.record[last] ^= 0x01;
                }
                entry
            })
        });
        Ok(Response::new(Box::pin(altered)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::GetInclusionProofResponse>, tonic::Status> {
        self.node.clone().get_inclusion_proof(request.into_inner()).await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, tonic::Status> {
        self.node.clone().get_consistency_proof(request.into_inner()).await
    }

    async fn watch_checkpoints(
        &self,
        _: Request<v1::WatchCheckpointsRequest>,
    ) -> Result<Response<Self::WatchCheckpointsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not needed"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_names_the_first_entry_that_diverges_from_the_signed_tree() {
    let cluster = LedgerCluster::start().await;
    append_records(&cluster, 5, 0, 100).await;
    cluster.wait_for_published(100).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = pin(&cluster, dir.path());
    let proxy = free_port();
    let tampering = TamperingLedger { node: cluster.ledger(0), altered_leaf: 37 };
    tokio::spawn(
        tonic::transport::Server::builder().add_service(proto::LedgerServer::new(tampering)).serve(proxy),
    );
    chaos_tests::wait_for_port(proxy, dir.path()).await;
    let audit = aegisctl(&["audit", "--ledger", &proxy.to_string(), "--trust", trust.to_str().unwrap()]);
    assert_eq!(audit.code, 3, "{}", audit.json);
    let message = audit.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("first at leaf 37"), "{message}");
}
