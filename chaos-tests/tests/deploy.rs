//! Everything in `deploy/` is what it claims to be: every configuration file loads with the real
//! binary's loader (`--check-config`), every YAML file parses, and the manifests hold what an
//! operator relies on.

use std::path::{Path, PathBuf};
use std::process::Command;

use chaos_tests::binary;
use yaml_rust2::{Yaml, YamlLoader};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_owned()
}

/// Every file under `dir` whose name ends with one of `extensions`.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            found.extend(files(&path, extensions));
        } else if extensions.iter().any(|extension| path.extension().is_some_and(|found| found == *extension))
        {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn check_config(binary_name: &str, config: &Path, extra: &[&str]) {
    let output = Command::new(binary(binary_name))
        .arg("--config")
        .arg(config)
        .arg("--check-config")
        .args(extra)
        .output()
        .expect("run the binary");
    assert!(
        output.status.success(),
        "{} rejects {}: {}",
        binary_name,
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_example_configuration_loads_with_the_real_loader() {
    let root = repository();
    let mut configs = files(&root.join("deploy"), &["toml"]);
    configs.push(root.join("ledger-node/ledger.example.toml"));
    configs.push(root.join("gateway/gateway.example.toml"));
    let data = tempfile::tempdir().expect("temp dir");
    let mut checked = (0, 0);
    for config in &configs {
        let name = config.file_name().and_then(|name| name.to_str()).expect("utf-8 name");
        if name.starts_with("ledger") {
            // What deployments give per node on the command line (compose, the StatefulSet).
            let data_dir = data.path().to_str().expect("utf-8 path");
            let flags = [
                "--node-id",
                "1",
                "--data-dir",
                data_dir,
                "--advertise-client-addr",
                "ledger-1.test:7400",
                "--advertise-peer-addr",
                "ledger-1.test:7401",
            ];
            check_config("aegis-ledger", config, &flags);
            checked.0 += 1;
        } else if name.starts_with("gateway") {
            check_config("aegis-gateway", config, &[]);
            checked.1 += 1;
        } else {
            panic!(
                "{}: is it a ledger or a gateway configuration? Name it ledger*.toml or gateway*.toml",
                config.display()
            );
        }
    }
    assert!(
        checked.0 >= 4 && checked.1 >= 4,
        "expected the example, deploy, compose and Kubernetes configs: {checked:?}"
    );

    let broken = data.path().join("gateway-broken.toml");
    std::fs::write(&broken, "gateway_id = \"gw\"\nlisten = \"not an address\"\n").expect("write");
    let output = Command::new(binary("aegis-gateway"))
        .args(["--config", broken.to_str().unwrap(), "--check-config"])
        .output()
        .expect("run");
    assert!(!output.status.success(), "--check-config must reject a broken file");
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).expect("read");
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not valid YAML: {error}", path.display()))
}

#[test]
fn every_manifest_parses_and_holds_what_operators_rely_on() {
    let deploy = repository().join("deploy");
    let yaml = files(&deploy, &["yaml", "yml"]);
    assert!(yaml.len() >= 10, "{yaml:?}");
    let mut kinds = Vec::new();
    for path in &yaml {
        let documents = load_yaml(path);
        assert!(!documents.is_empty(), "{} is empty", path.display());
        if path.starts_with(deploy.join("kubernetes")) {
            for document in documents {
                let kind = document["kind"].as_str().unwrap_or_else(|| panic!("{}: no kind", path.display()));
                assert!(document["apiVersion"].as_str().is_some(), "{}: no apiVersion", path.display());
                kinds.push(kind.to_owned());
            }
        }
    }
    for wanted in [
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
    ] {
        assert!(kinds.iter().any(|kind| kind == wanted), "no {wanted} in deploy/kubernetes: {kinds:?}");
    }

    let compose = &load_yaml(&deploy.join("compose/compose.yaml"))[0];
    let services = compose["services"].as_hash().expect("compose services");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for wanted in ["ledger-1", "ledger-2", "ledger-3", "gateway-1", "gateway-2", "nginx", "otel-collector"] {
        assert!(names.contains(&wanted), "compose has no {wanted}: {names:?}");
    }

    let statefulset = load_yaml(&deploy.join("kubernetes/ledger-statefulset.yaml"));
    let statefulset =
        statefulset.iter().find(|document| document["kind"].as_str() == Some("StatefulSet")).unwrap();
    assert_eq!(statefulset["spec"]["replicas"].as_i64(), Some(3));
    assert!(
        !statefulset["spec"]["volumeClaimTemplates"].is_badvalue(),
        "the ledger keeps its data on volumes"
    );
    let pod = &statefulset["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    let deployment = &load_yaml(&deploy.join("kubernetes/gateway-deployment.yaml"))[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));

    let dockerfile = std::fs::read_to_string(deploy.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.matches("FROM ").count() >= 2, "a multi-stage build");
    assert!(
        dockerfile.lines().any(|line| line.starts_with("USER ") && !line.contains("root")),
        "runs as non-root"
    );
}
