//! `hash-key`: the hash the gateway's `key_sha256` setting takes.

use crate::support::aegisctl_with_stdin;

#[test]
fn api_keys_hash_as_the_gateway_expects() {
    // printf %s sk-test-alpha | sha256sum
    let expected = "5a44ee831beb11795ca9e062551a912f66aaa8043e59ded9eaf05a337784dec8";
    let hashed = aegisctl_with_stdin(&["hash-key"], Some("sk-test-alpha\n")).ok();
    assert_eq!(hashed["key_sha256"], expected, "a trailing newline is not part of the key");

    let generated = aegisctl_with_stdin(&["hash-key", "--generate"], None).ok();
    let key = generated["api_key"].as_str().unwrap();
    assert!(key.starts_with("sk-aegis-") && key.len() > 40, "{key}");
    let rehashed = aegisctl_with_stdin(&["hash-key"], Some(key)).ok();
    assert_eq!(rehashed["key_sha256"], generated["key_sha256"]);

    let empty = aegisctl_with_stdin(&["hash-key"], Some("\n"));
    assert_eq!(empty.code, 1, "no key, no hash");
    let huge = "k".repeat(2000);
    assert_eq!(aegisctl_with_stdin(&["hash-key"], Some(&huge)).code, 1, "keys have a length limit");
}
