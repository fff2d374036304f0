//! Property tests: scanning never panics, spans are well formed, and redaction is idempotent.

use std::sync::OnceLock;

use gateway::waf::detectors::{Detectors, Finding};
use proptest::prelude::*;

fn det() -> &'static Detectors {
    static D: OnceLock<Detectors> = OnceLock::new();
    D.get_or_init(Detectors::new)
}

/// Pieces that, glued together in random order, exercise detector boundaries and overlaps.
fn fragment() -> impl Strategy<Value = String> {
    let fixed: Vec<&'static str> = vec![
        "john.doe@example.com",
        "a@b.co",
        "4111 1111 1111 1111",
        "4111111111111111",
        "5500-0000-0000-0004",
        "378282246310005",
        "(555) 123-4567",
        "555-123-4567",
        "+44 20 7946 0958",
        "+14155552671",
        "01 23 45 67 89",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "123-45-6789",
        "123 45 6789",
        "192.168.1.1",
        "10.0.0.1",
        "2001:db8::1",
        "::1",
        "::ffff:10.0.0.1",
        "fe80::",
        "sk-abcdEFGH1234ijklMNOP5678",
        "AKIAIOSFODNN7EXAMPLE",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        "[REDACTED:EMAIL]",
        "[REDACTED:CARD]",
        " ",
        ".",
        "-",
        ":",
        "::",
        "@",
        "[",
        "]",
        "(",
        ")",
        "+",
        "\n",
        "_",
        "é",
        "日本",
        "v",
        "version ",
        "[REDACTED:PHONE]",
        "-----END PRIVATE KEY-----",
        "xoxb-123456789012-abcDEF",
        "ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "@example.com",
        ".com",
        "0",
        "1-",
        "(0)",
        "::ffff:",
        "%",
        ",",
        "/",
        "=",
        "\"",
        "\t",
        "ü",
    ];
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(str::to_owned),
        2 => "[0-9]{1,20}",
        2 => "[a-zA-Z0-9._:@+\\-\\[\\] ]{0,8}",
        1 => "[A-Z]{2}[0-9]{2}[A-Z0-9]{0,20}",
        1 => "[0-9a-f:]{1,12}",
        1 => "\\PC{0,6}",
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..16).prop_map(|v| v.concat())
}

fn assert_well_formed(text: &str, found: &[Finding]) -> Result<(), TestCaseError> {
    for f in found {
        prop_assert!(f.start < f.end && f.end <= text.len(), "bad span {:?}", f);
        prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "{:?}", f);
    }
    prop_assert!(found.windows(2).all(|w| w[0].end <= w[1].start), "unsorted/overlap {:?}", found);
    Ok(())
}

fn check_text(text: &str) -> Result<(), TestCaseError> {
    let found = det().scan(text);
    assert_well_formed(text, &found)?;
    let redacted = Detectors::redact(text, &found);
    let again = det().scan(&redacted);
    prop_assert!(
        again.is_empty(),
        "rescan of {:?} found {:?}",
        redacted,
        again.iter().map(|f| (f.kind, &redacted[f.start..f.end])).collect::<Vec<_>>()
    );
    prop_assert_eq!(Detectors::redact(&redacted, &again), redacted.clone());
    Ok(())
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=<n> for longer soak runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics_and_redaction_is_idempotent(text in any::<String>()) {
        check_text(&text)?;
    }

    #[test]
    fn fragment_soup_spans_valid_and_redaction_idempotent(text in soup()) {
        check_text(&text)?;
    }

    #[test]
    fn redact_never_panics_on_arbitrary_findings(
        text in "\\PC{0,40}",
        spans in prop::collection::vec((0usize..50, 0usize..50), 0..6),
    ) {
        let findings: Vec<Finding> = spans
            .into_iter()
            .map(|(start, end)| Finding {
                kind: gateway::waf::detectors::DetectorKind::Email,
                rule_id: "pii.email",
                start,
                end,
            })
            .collect();
        let _ = Detectors::redact(&text, &findings);
    }
}
