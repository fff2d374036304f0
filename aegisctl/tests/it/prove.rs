//! `checkpoint`, `prove` and `verify`, including bundles tampered with in every part.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chaos_tests::{LedgerCluster, record_id};
use serde_json::Value;

use crate::support::{aegisctl, append_records, ledger_arg, origin, pin};

/// Changes one part of a bundle.
type Tamper = Box<dyn Fn(&mut Value)>;

#[tokio::test(flavor = "multi_thread")]
async fn records_are_proven_and_bundles_verify_offline_unless_tampered_with() {
    let cluster = LedgerCluster::start().await;
    append_records(&cluster, 1, 0, 20).await;
    cluster.wait_for_published(20).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = pin(&cluster, dir.path());
    let trust = trust.to_str().unwrap();
    let ledger = ledger_arg(&cluster);

    let checkpoint = aegisctl(&["checkpoint", "--ledger", &ledger, "--trust", trust]).ok();
    assert_eq!(checkpoint["verified"], true);
    assert_eq!(checkpoint["origin"], origin());
    assert_eq!(checkpoint["tree_size"], 20);
    assert!(checkpoint["signers"].as_array().unwrap().len() >= 2, "a majority signed: {checkpoint}");
    let wrong_origin =
        aegisctl(&["checkpoint", "--ledger", &ledger, "--trust", trust, "--origin", "other.example/log"]);
    assert_eq!(wrong_origin.code, 3, "a checkpoint of another log is refused");
    assert_eq!(wrong_origin.json["error"]["kind"], "verification_failed");

    let id = record_id(1, 7);
    let bundle = dir.path().join("proof.json");
    let proven =
        aegisctl(&["prove", &id, "--ledger", &ledger, "--trust", trust, "--out", bundle.to_str().unwrap()])
            .ok();
    assert_eq!(proven["verified"], true);
    assert_eq!(proven["leaf_index"], 7);
    assert_eq!(proven["record"]["record_id"], id.as_str());
    assert_eq!(proven["record"]["tenant"], "acme");
    assert_eq!(proven["record"]["trace_id"], "4b".repeat(16), "prove shows the record's trace id");
    assert_eq!(proven["checkpoint"]["tree_size"], 20);

    let by_index = aegisctl(&["prove", "--index", "3", "--ledger", &ledger, "--trust", trust]).ok();
    assert_eq!(by_index["record"]["record_id"], record_id(1, 3).as_str());

    let verified = aegisctl(&["verify", bundle.to_str().unwrap(), "--trust", trust]).ok();
    assert_eq!(verified["verified"], true);
    assert_eq!(verified["leaf_index"], 7);
    assert_eq!(verified["record"]["record_id"], id.as_str());

    let original: Value = serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let tampered_cases: Vec<(&str, Tamper)> = vec![
        (
            "a flipped record byte",
            Box::new(|bundle: &mut Value| {
                let mut record = BASE64.decode(bundle["record"].as_str().unwrap()).unwrap();
                let last = record.len() - 1;
                record[last] ^= 1;
                bundle["record"] = BASE64.encode(record).into();
            }),
        ),
        (
            "a changed proof hash",
            Box::new(|bundle: &mut Value| {
                bundle["inclusion_path"][0] = BASE64.encode([7u8; 32]).into();
            }),
        ),
        ("another leaf index", Box::new(|bundle: &mut Value| bundle["leaf_index"] = 6.into())),
        ("another tree size", Box::new(|bundle: &mut Value| bundle["tree_size"] = 21.into())),
        (
            "an edited checkpoint",
            Box::new(|bundle: &mut Value| {
                let note = bundle["checkpoint"].as_str().unwrap().replacen("\n20\n", "\n19\n", 1);
                bundle["checkpoint"] = note.into();
            }),
        ),
        (
            "a checkpoint without signatures",
            Box::new(|bundle: &mut Value| {
                let note = bundle["checkpoint"].as_str().unwrap();
                let body = &note[..note.find("\n\n").unwrap() + 1];
                bundle["checkpoint"] = body.into();
            }),
        ),
    ];
    for (what, tamper) in tampered_cases {
        let mut bundle_json = original.clone();
        tamper(&mut bundle_json);
        let path = dir.path().join("tampered.json");
        std::fs::write(&path, bundle_json.to_string()).unwrap();
        let run = aegisctl(&["verify", path.to_str().unwrap(), "--trust", trust]);
        assert_eq!(run.code, 3, "a bundle with {what} must be rejected: {}", run.json);
    }
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    assert_eq!(aegisctl(&["verify", garbage.to_str().unwrap(), "--trust", trust]).code, 1);

    // A policy of other keys does not accept the cluster's signatures.
    let stranger = dir.path().join("stranger.key");
    let other_key = aegisctl(&["keygen", "--name", "stranger", "--out", stranger.to_str().unwrap()]).ok();
    let other_key = other_key["verifier_key"].as_str().unwrap();
    let run = aegisctl(&["verify", bundle.to_str().unwrap(), "--origin", origin(), "--key", other_key]);
    assert_eq!(run.code, 3, "{}", run.json);

    let unknown =
        aegisctl(&["prove", &record_id(9, 1), "--ledger", &ledger, "--trust", trust, "--wait-ms", "300"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("NotFound"), "{}", unknown.stderr);
    let malformed = aegisctl(&["prove", "not-a-record-id", "--ledger", &ledger, "--trust", trust]);
    assert_eq!(malformed.code, 1);
    assert!(malformed.stderr.contains("not a record id"), "{}", malformed.stderr);
}
