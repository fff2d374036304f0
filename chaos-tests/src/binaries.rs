//! Finding (and if need be building) the workspace's binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The packages that build each binary a test may run.
const PACKAGES: &[(&str, &str)] = &[
    ("aegis-ledger", "ledger-node"),
    ("aegis-ledger-loadgen", "ledger-node"),
    ("aegis-gateway", "gateway"),
    ("aegis-mock-upstream", "gateway"),
    ("aegis-gateway-loadgen", "gateway"),
    ("aegisctl", "aegisctl"),
];

/// The path of the workspace binary `name`: in `AEGIS_BIN_DIR` when set (CI points it at a
/// release build), else in the calling test's own target directory (`cargo test --workspace`
/// builds every binary there), built on demand with `cargo build` when missing.
///
/// # Panics
///
/// If `name` is not a workspace binary or cannot be built: a test cannot run without it.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("AEGIS_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        assert!(path.exists(), "AEGIS_BIN_DIR is set but holds no {name}: {}", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    if !path.exists() {
        // Tests of one binary run in parallel: build once.
        static BUILD: Mutex<()> = Mutex::new(());
        let _once = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !path.exists() {
            let package = PACKAGES
                .iter()
                .find_map(|(binary, package)| (*binary == name).then_some(*package))
                .unwrap_or_else(|| panic!("{name} is not a binary of this workspace"));
            let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
            build.args(["build", "--package", package, "--bin", name]);
            if profile_dir.file_name().is_some_and(|profile| profile == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building {name} failed");
        }
    }
    path
}
