//! `audit` recomputes the whole tree of 10^5 entries.

use chaos_tests::LedgerCluster;

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
