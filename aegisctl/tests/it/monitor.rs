//! `monitor` trusts on first use, follows honest growth, and catches a fork: a second cluster
//! that signs with the first one's keys but holds other records (what a compromised majority
//! could serve to some clients).

use chaos_tests::{ClusterOptions, LedgerCluster};
use serde_json::Value;

use crate::support::{aegisctl, append_records, ledger_arg, pin};

#[tokio::test(flavor = "multi_thread")]
async fn monitor_follows_growth_and_catches_forks_and_rollbacks() {
    let honest = LedgerCluster::start().await;
    append_records(&honest, 3, 0, 10).await;
    honest.wait_for_published(10).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = pin(&honest, dir.path());
    let trust = trust.to_str().unwrap();
    let state = dir.path().join("state");
    let evidence = dir.path().join("evidence");
    let monitor = |ledger: &str| {
        aegisctl(&[
            "monitor",
            "--ledger",
            ledger,
            "--trust",
            trust,
            "--state-dir",
            state.to_str().unwrap(),
            "--evidence-dir",
            evidence.to_str().unwrap(),
        ])
    };
    let honest_ledger = ledger_arg(&honest);

    let first = monitor(&honest_ledger).ok();
    assert_eq!(first["trusted"]["tree_size"], 10);
    assert!(first["observations"][0]["outcome"].as_str().unwrap().contains("first use"), "{first}");
    append_records(&honest, 3, 10, 5).await;
    honest.wait_for_published(15).await;
    let grown = monitor(&honest_ledger).ok();
    assert_eq!(grown["trusted"]["tree_size"], 15);
    let outcomes: Vec<&str> =
        grown["observations"].as_array().unwrap().iter().map(|o| o["outcome"].as_str().unwrap()).collect();
    assert!(
        outcomes.iter().all(|outcome| outcome.contains("extension") || outcome.contains("same")),
        "{outcomes:?}"
    );

    // The fork: the same origin and keys, other records.
    let keys: Vec<_> = honest.nodes().iter().map(|node| node.signing_key_file()).collect();
    let forked =
        LedgerCluster::start_with(ClusterOptions { signing_keys: keys, ..ClusterOptions::default() }).await;
    let forked_ledger = forked.client_addrs()[0].clone();
    append_records(&forked, 4, 0, 10).await;
    forked.wait_for_published(10).await;

    // Smaller than trusted, and nobody can prove it a prefix: a rollback.
    let rollback = monitor(&forked_ledger);
    assert_eq!(rollback.code, 4, "{}", rollback.json);
    let file = evidence_file(&rollback.json);
    assert_eq!(file["kind"], "rollback");
    assert!(file["trusted_checkpoint"].as_str().unwrap().contains("\n15\n"));
    assert!(file["observed_checkpoint"].as_str().unwrap().contains("\n10\n"));

    // Same size, other root: a fork, with both signed checkpoints as evidence.
    append_records(&forked, 4, 10, 5).await;
    forked.wait_for_published(15).await;
    let fork = monitor(&forked_ledger);
    assert_eq!(fork.code, 4, "{}", fork.json);
    let file = evidence_file(&fork.json);
    assert_eq!(file["kind"], "fork");
    let trusted_note = file["trusted_checkpoint"].as_str().unwrap();
    let observed_note = file["observed_checkpoint"].as_str().unwrap();
    assert!(trusted_note.contains("\n15\n") && observed_note.contains("\n15\n"));
    assert_ne!(trusted_note, observed_note);
    for note in [trusted_note, observed_note] {
        assert!(
            signed_under_policy(note, trust),
            "evidence holds checkpoints validly signed by the trusted keys"
        );
    }

    // Larger, but not an extension: the consistency proof fails, and it is kept as evidence.
    append_records(&forked, 4, 15, 5).await;
    forked.wait_for_published(20).await;
    let diverged = monitor(&forked_ledger);
    assert_eq!(diverged.code, 4, "{}", diverged.json);
    let file = evidence_file(&diverged.json);
    assert_eq!(file["kind"], "fork");
    assert_eq!(file["consistency_proof"]["old_size"], 15);
    assert_eq!(file["consistency_proof"]["new_size"], 20);

    // Evidence never moved the trusted state: the honest cluster still checks out.
    let after = monitor(&honest_ledger).ok();
    assert_eq!(after["trusted"]["tree_size"], 15);
    // Both clusters at once: caught even though each alone looks fine to a fresh monitor.
    let both = format!("{},{}", honest_ledger, forked_ledger);
    let fresh_state = dir.path().join("fresh");
    let run = aegisctl(&[
        "monitor",
        "--ledger",
        &both,
        "--trust",
        trust,
        "--state-dir",
        fresh_state.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 4, "{}", run.json);
}

/// The evidence file a failed monitor run named, parsed.
fn evidence_file(output: &Value) -> Value {
    let path = output["error"]["evidence"].as_str().expect("the failure names its evidence file");
    serde_json::from_str(&std::fs::read_to_string(path).expect("evidence file")).expect("evidence is JSON")
}

/// Whether `note` is a checkpoint validly signed under the trust file's policy (checked with
/// the `mmr` crate directly, independently of aegisctl).
fn signed_under_policy(note: &str, trust: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct TrustFile {
        origin: String,
        quorum: usize,
        keys: Vec<String>,
    }
    let trust: TrustFile = toml::from_str(&std::fs::read_to_string(trust).unwrap()).unwrap();
    let keys: Vec<mmr::VerifierKey> = trust.keys.iter().map(|key| key.parse().unwrap()).collect();
    let policy = mmr::VerifierPolicy::new(keys, trust.quorum).unwrap();
    let verifier = mmr::CheckpointVerifier::new(trust.origin, policy, mmr::NoteLimits::default());
    verifier.open(note.as_bytes()).is_ok()
}
