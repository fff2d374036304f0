//! `init`, `status`, `add-node`, `remove-node`, `pin` and `keygen` on a cluster they set up.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use chaos_tests::{ClusterOptions, LedgerCluster};
use serde_json::Value;

use crate::support::{aegisctl, origin};

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_builds_grows_and_shrinks_a_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every node signs with a key made by `aegisctl keygen`.
    let mut keys = Vec::new();
    let mut verifier_keys = Vec::new();
    for id in 1..=4 {
        let path = dir.path().join(format!("node-{id}.key"));
        let name = format!("aegis-ledger-{id}");
        let made = aegisctl(&["keygen", "--name", &name, "--out", path.to_str().unwrap()]).ok();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a private key is readable by its owner only");
        verifier_keys.push(made["verifier_key"].as_str().unwrap().to_owned());
        keys.push(path);
    }
    let again = aegisctl(&["keygen", "--name", "x", "--out", keys[0].to_str().unwrap()]);
    assert_eq!(again.code, 1, "keygen never overwrites a key");

    let cluster = LedgerCluster::start_with(ClusterOptions {
        nodes: 4,
        signing_keys: keys,
        uninitialised: true,
        ..ClusterOptions::default()
    })
    .await;
    let addrs = cluster.client_addrs();
    let voters = addrs[..3].join(",");

    let init = aegisctl(&["init", "--nodes", &voters]).ok();
    assert_eq!(init["already_initialised"], false);
    assert_eq!(init["members"].as_array().unwrap().len(), 3);
    assert!(init["leader_id"].as_u64().is_some_and(|leader| (1..=3).contains(&leader)));
    let again = aegisctl(&["init", "--nodes", &voters]).ok();
    assert_eq!(again["already_initialised"], true, "init is safe to repeat");
    let other = aegisctl(&["init", "--nodes", &addrs[..2].join(",")]);
    assert_eq!(other.code, 1, "init refuses to re-form a running cluster differently");
    assert!(other.stderr.contains("already in a cluster"), "{}", other.stderr);

    let all = addrs.join(",");
    let status = aegisctl(&["status", "--ledger", &all]).ok();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let leaders = nodes[..3].iter().filter(|node| node["role"] == "leader").count();
    assert_eq!(leaders, 1, "{status}");
    for (node, key) in nodes.iter().zip(&verifier_keys) {
        assert_eq!(node["verifier_key"], key.as_str(), "each node signs with the key keygen made");
        assert_eq!(node["origin"], origin());
        assert_eq!(node["healthy"], true);
    }
    assert_eq!(nodes[0]["members"].as_array().unwrap().len(), 3);
    assert_eq!(nodes[3]["members"].as_array().unwrap().len(), 0, "node 4 is not a member yet");

    let added = aegisctl(&["add-node", "--ledger", &voters, "--node", &addrs[3]]).ok();
    assert_eq!(added["node_id"], 4);
    assert_eq!(added["kind"], "voter");
    wait_for_members(&voters, 4, 4).await;

    let removed = aegisctl(&["remove-node", "--ledger", &voters, "--node-id", "4"]).ok();
    assert_eq!(removed["removed"], 4);
    wait_for_members(&voters, 3, 3).await;

    let trust = dir.path().join("trust.toml");
    let pinned = aegisctl(&["pin", "--ledger", &voters, "--out", trust.to_str().unwrap()]).ok();
    assert_eq!(pinned["origin"], origin());
    assert_eq!(pinned["quorum"], 2, "a majority of three");
    let pinned_keys: Vec<&str> =
        pinned["keys"].as_array().unwrap().iter().map(|key| key.as_str().unwrap()).collect();
    let mut expected: Vec<&str> = verifier_keys[..3].iter().map(String::as_str).collect();
    let mut sorted = pinned_keys.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "the trust file holds exactly the voters' keys");
    let overwrite = aegisctl(&["pin", "--ledger", &voters, "--out", trust.to_str().unwrap()]);
    assert_eq!(overwrite.code, 1, "pin never overwrites a trust file");

    let unreachable = aegisctl(&["status", "--ledger", "127.0.0.1:1", "--timeout-ms", "500"]);
    assert_eq!(unreachable.code, 1);
    assert_eq!(unreachable.json["error"]["kind"], "error");
}

/// Waits until node 1 reports `members` members, `voters` of them voters.
async fn wait_for_members(ledger: &str, members: usize, voters: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = aegisctl(&["status", "--ledger", ledger]).ok();
        let seen: &Vec<Value> = status["nodes"][0]["members"].as_array().unwrap();
        let seen_voters = seen.iter().filter(|member| member["voter"] == true).count();
        if seen.len() == members && seen_voters == voters {
            return;
        }
        assert!(Instant::now() < deadline, "membership never became {members}/{voters}: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
