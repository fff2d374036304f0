//! Data-driven tests for the sensitive-data detectors.

use std::sync::OnceLock;

use gateway::waf::detectors::{DetectorKind, DetectorKind::*, Detectors, Finding, placeholder};

fn det() -> &'static Detectors {
    static D: OnceLock<Detectors> = OnceLock::new();
    D.get_or_init(Detectors::new)
}

/// Scans `input` and asserts the findings are exactly `expected`, in order, as (kind, matched text).
/// Also checks every span is a valid, char-boundary, sorted, non-overlapping range.
#[track_caller]
fn check(input: &str, expected: &[(DetectorKind, &str)]) -> Vec<Finding> {
    let found = det().scan(input);
    let got: Vec<(DetectorKind, &str)> = found
        .iter()
        .map(|f| {
            assert!(f.start < f.end && f.end <= input.len(), "bad span {f:?} in {input:?}");
            assert!(input.is_char_boundary(f.start) && input.is_char_boundary(f.end));
            (f.kind, &input[f.start..f.end])
        })
        .collect();
    assert!(found.windows(2).all(|w| w[0].end <= w[1].start), "overlap/unsorted: {found:?}");
    assert_eq!(got, expected, "input: {input:?}");
    found
}

/// Test-only secrets are assembled at run time so this file holds no scanner-bait literals.
fn key(prefix: &str, body: &str) -> String {
    format!("{prefix}{body}")
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

// ----------------------------------------------------------------------------- true positives

#[test]
fn email_positives() {
    check("contact john.doe@example.com today", &[(Email, "john.doe@example.com")]);
    check("<jane_smith+news@mail.example.co.uk>", &[(Email, "jane_smith+news@mail.example.co.uk")]);
    check("mailto:ops-team@corp-mail.io.", &[(Email, "ops-team@corp-mail.io")]);
    check("a@b.co, c.d%e@f-g.h.museum", &[(Email, "a@b.co"), (Email, "c.d%e@f-g.h.museum")]);
    check("(User123@Example.ORG)", &[(Email, "User123@Example.ORG")]);
    check(
        "ping o'brien@example.ie or 'quoted@example.com'",
        &[(Email, "o'brien@example.ie"), (Email, "quoted@example.com")],
    );
}

#[test]
fn phone_positives() {
    check("call (555) 123-4567 now", &[(Phone, "(555) 123-4567")]);
    check("call 555-123-4567.", &[(Phone, "555-123-4567")]);
    check("or 555.123.4567 or 555 123 4567", &[(Phone, "555.123.4567"), (Phone, "555 123 4567")]);
    check("toll free 1-800-555-1234", &[(Phone, "1-800-555-1234")]);
    check("UK office +44 20 7946 0958", &[(Phone, "+44 20 7946 0958")]);
    check("E.164: +14155552671", &[(Phone, "+14155552671")]);
    check("US +1 (555) 123-4567", &[(Phone, "+1 (555) 123-4567")]);
    check("Paris 01 23 45 67 89, Berlin 030 12345678", &[(Phone, "01 23 45 67 89"), (Phone, "030 12345678")]);
    check("London 020 7946 0958", &[(Phone, "020 7946 0958")]);
    check("DE +49 (0)30 1234567", &[(Phone, "+49 (0)30 1234567")]);
}

#[test]
fn iban_positives() {
    check("IBAN GB82 WEST 1234 5698 7654 32 (GBP)", &[(Iban, "GB82 WEST 1234 5698 7654 32")]);
    check("pay to DE89370400440532013000.", &[(Iban, "DE89370400440532013000")]);
    check("DE89 3704 0044 0532 0130 00", &[(Iban, "DE89 3704 0044 0532 0130 00")]);
    check("FR14 2004 1010 0505 0001 3M02 606", &[(Iban, "FR14 2004 1010 0505 0001 3M02 606")]);
    check(
        "NL91ABNA0417164300 and NO9386011117947",
        &[(Iban, "NL91ABNA0417164300"), (Iban, "NO9386011117947")],
    );
    check("CH9300762011623852957", &[(Iban, "CH9300762011623852957")]);
}

#[test]
fn card_positives() {
    check("card 4111 1111 1111 1111 exp 12/27", &[(CardNumber, "4111 1111 1111 1111")]);
    check("mc 5500-0000-0000-0004", &[(CardNumber, "5500-0000-0000-0004")]);
    check("amex 378282246310005", &[(CardNumber, "378282246310005")]);
    check("amex 3782 822463 10005", &[(CardNumber, "3782 822463 10005")]);
    check("visa:4111111111111111;", &[(CardNumber, "4111111111111111")]);
    check("discover 6011111111111117", &[(CardNumber, "6011111111111117")]);
    check(
        "mc2 2223003122003222, jcb 3530111333300000",
        &[(CardNumber, "2223003122003222"), (CardNumber, "3530111333300000")],
    );
    check("diners 3056 9309 0259 04", &[(CardNumber, "3056 9309 0259 04")]);
    check("unionpay 6200000000000005", &[(CardNumber, "6200000000000005")]);
    // A trailing group (expiry) after a valid grouped number stays outside the span.
    check("4111 1111 1111 1111 12/27", &[(CardNumber, "4111 1111 1111 1111")]);
    check("4111111111111111 2027", &[(CardNumber, "4111111111111111")]);
    check("qty 12 4111111111111111", &[(CardNumber, "4111111111111111")]);
    check(
        "two cards 4111111111111111 5500000000000004",
        &[(CardNumber, "4111111111111111"), (CardNumber, "5500000000000004")],
    );
}

#[test]
fn ssn_positives() {
    check("SSN 123-45-6789.", &[(UsSsn, "123-45-6789")]);
    check("ssn: 123 45 6789", &[(UsSsn, "123 45 6789")]);
    check("(078-05-1120)", &[(UsSsn, "078-05-1120")]);
}

#[test]
fn ip_positives() {
    check("host 192.168.1.1 up", &[(IpV4, "192.168.1.1")]);
    check("http://10.0.0.1:8080/x", &[(IpV4, "10.0.0.1")]);
    check("0.0.0.0 and 255.255.255.255.", &[(IpV4, "0.0.0.0"), (IpV4, "255.255.255.255")]);
    check("range 10.0.0.1-10.0.0.254", &[(IpV4, "10.0.0.1"), (IpV4, "10.0.0.254")]);
    check("v6 2001:db8::8a2e:370:7334 ok", &[(IpV6, "2001:db8::8a2e:370:7334")]);
    check(
        "full 2001:0db8:0000:0000:0000:ff00:0042:8329",
        &[(IpV6, "2001:0db8:0000:0000:0000:ff00:0042:8329")],
    );
    check("loopback [::1]:8080", &[(IpV6, "::1")]);
    check("link-local fe80::1ff:fe23:4567:890a%eth0", &[(IpV6, "fe80::1ff:fe23:4567:890a")]);
    check("mapped ::ffff:192.0.2.128.", &[(IpV6, "::ffff:192.0.2.128")]);
    check("abcd:ef01:2345:6789:abcd:ef01:2345:6789", &[(IpV6, "abcd:ef01:2345:6789:abcd:ef01:2345:6789")]);
}

#[test]
fn secret_positives() {
    let openai = key("sk-", "abcdEFGH1234ijklMNOP5678qrstUVWX");
    let proj = key("sk-proj-", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_-Q");
    let anthropic = key("sk-ant-", "api03-AbCdEf0123456789GhIjKlMnOpQrStUv-wxyzAA");
    let aws = key("AKIA", "IOSFODNN7EXAMPLE");
    let aws_sts = key("ASIA", "ABCDEFGH12345678");
    let gh = key("ghp_", &"a1B2".repeat(9));
    let gho = key("gho_", &"Z9y8".repeat(9));
    let pat = key("github_pat_", "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH");
    let slack = key("xoxb-", "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx");
    let google = key("AIza", "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q");
    let stripe = key("sk_live_", "4eC39HqLyjWDarjtT1zdp7dc");
    let stripe_r = key("rk_live_", "51H8abcdEFGH1234");
    let jwt = JWT.to_string();
    let cases: Vec<(String, &String, &str)> = vec![
        (format!("OPENAI_API_KEY={openai}"), &openai, "secret.openai_key"),
        (format!("key: \"{proj}\""), &proj, "secret.openai_key"),
        (format!("x-api-key: {anthropic}"), &anthropic, "secret.anthropic_key"),
        (format!("aws_access_key_id = {aws}"), &aws, "secret.aws_access_key_id"),
        (format!("{aws_sts}\n"), &aws_sts, "secret.aws_access_key_id"),
        (format!("token {gh}"), &gh, "secret.github_token"),
        (format!("token={gho}"), &gho, "secret.github_token"),
        (format!("GH_TOKEN={pat}"), &pat, "secret.github_token"),
        (format!("SLACK={slack}"), &slack, "secret.slack_token"),
        (format!("maps?key={google}&v=3"), &google, "secret.google_api_key"),
        (format!("stripe {stripe}"), &stripe, "secret.stripe_key"),
        (format!("stripe ({stripe_r})"), &stripe_r, "secret.stripe_key"),
        (format!("Authorization: Bearer {JWT}"), &jwt, "secret.jwt"),
    ];
    for (input, secret, rule) in &cases {
        let found = check(input, &[(ApiKey, secret.as_str())]);
        assert_eq!(found[0].rule_id, *rule, "{input}");
    }
}

#[test]
fn jwt_variants() {
    // JWE compact serialization: five segments.
    let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGeipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDbSv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaVmqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je81860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi6UklfCpIMfIjf7iGdXKHzg.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ";
    check(&format!("token {jwe}."), &[(ApiKey, jwe)]);
    // Unsigned JWS (`alg: none`): empty signature segment.
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.";
    check(&format!("({unsigned})"), &[(ApiKey, unsigned)]);
    // Four segments is neither a JWS nor a JWE.
    check(&format!("{JWT}.extra"), &[]);
}

#[test]
fn pem_private_key() {
    let body = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\naGVsbG8gd29ybGQ=";
    let block = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----");
    let input = format!("here is my key:\n{block}\nthanks");
    let found = check(&input, &[(ApiKey, &block)]);
    assert_eq!(found[0].rule_id, "secret.private_key");
    // Truncated block: header plus the base64 body that follows.
    let cut = format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{body}");
    check(&format!("{cut}\n\n"), &[(ApiKey, &cut)]);
    check("-----BEGIN PRIVATE KEY-----", &[(ApiKey, "-----BEGIN PRIVATE KEY-----")]);
}

// ----------------------------------------------------------------------------- true negatives

#[test]
fn card_negatives() {
    check("4111 1111 1111 1112", &[]); // Luhn-invalid
    check("4111111111111112", &[]);
    check("1234 5678 9012 3456", &[]); // no IIN / Luhn
    check("9111111111111111", &[]);
    check("18446744073709551615", &[]); // u64::MAX, 20 digits
    check("ms timestamp 1705312200123", &[]);
    check("41111111111111110", &[]); // valid prefix but 17 digits
    check("x4111111111111111", &[]); // glued to a word
    check("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", &[]); // not a card grouping
}

#[test]
fn iban_negatives() {
    check("GB83 WEST 1234 5698 7654 32", &[]); // wrong check digits
    check("DE88370400440532013000", &[]);
    check("DE8937040044053201300", &[]); // too short for DE
    check("XX89370400440532013000", &[]); // unknown country
    check("ISO27001 and SHA256 and AB12 CDEF", &[]);
    check("de89370400440532013000", &[]); // lower case is not matched
}

#[test]
fn ssn_negatives() {
    for s in ["000-12-3456", "666-12-3456", "900-12-3456", "999-99-9999", "123-00-4567", "123-45-0000"] {
        check(s, &[]);
    }
    check("123-45-67890", &[]);
    check("123-45-6789-1", &[]);
    check("A123-45-6789", &[]);
    check("123-45 6789", &[]);
}

#[test]
fn phone_negatives() {
    for s in [
        "2024-01-15",
        "on 2024-01-15 10:30:00",
        "15/01/2024",
        "01.01.2024 10:30",
        "v1.2.3.4",
        "5551234567",
        "abc555-123-4567",
        "order 1234567890",
        "PO 77812-0091",
        "ext. 4421",
        "555-1234",
        "123-456-7890",
        "1 000 000 000",
        "i+1",
        "x = a+12345678",
        "f(555) 123-4567",
    ] {
        check(s, &[]);
    }
    // A bare four-part version is indistinguishable from an address: IPv4, never a phone.
    check("1.2.3.4", &[(IpV4, "1.2.3.4")]);
}

#[test]
fn ip_negatives() {
    for s in [
        "1.2.3.4.5",
        "v1.2.3.4",
        "version 1.2.3",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.04",
        "10.0.0.1.5",
        "12:30:45",
        "00:1a:2b:3c:4d:5e",
        "std::net::Ipv6Addr",
        "f32::EPSILON and u64::MAX and i32::MIN",
        "dead::beef",
        "::",
        "Foo::bar::<u8>()",
        "x :: Int -> Int",
    ] {
        check(s, &[]);
    }
}

#[test]
fn secret_negatives() {
    for s in [
        "OpenAI keys start with sk- and must stay secret",
        "we use sk-learn-style-pipelines-for-everything here",
        "task-abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIA1234",
        "ghp_short",
        "the AIza prefix marks Google keys",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "eyJfoo.bar.baz",
        "eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig", // decodes to {"foo":"bar"}: no JWT header fields
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----",
        "xoxb-not-a-token-at-all",
    ] {
        check(s, &[]);
    }
    let glued = key("xAKIA", "IOSFODNN7EXAMPLE");
    check(&glued, &[]);
    let too_long = key("AKIA", "IOSFODNN7EXAMPLEX");
    check(&too_long, &[]);
}

#[test]
fn email_negatives() {
    for s in [
        "send an email to the team",
        "@decorator and @app.route('/x')",
        "git@github.com:org/repo.git",
        "user@localhost",
        "npm i lodash@4.17.21",
        "x@y.z",
        "image@sha256:abcdef",
        "a@b.com9",
    ] {
        check(s, &[]);
    }
}

#[test]
fn misc_negatives() {
    for s in [
        "price $1,299.99 or €1.299,00",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "sha e83c5163316f89bfbde7d9ab23ca2e25604af290",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b",
        "unix 1705312200",
        "ISBN 978-0-306-40615-7",
        "pi 3.14159265358979323846",
        "2024-01-15T10:30:00.123456Z",
    ] {
        check(s, &[]);
    }
}

// ----------------------------------------------------------------------------- overlaps

#[test]
fn overlaps() {
    // Card digits inside an email: the longer email wins.
    check("4111111111111111@example.com", &[(Email, "4111111111111111@example.com")]);
    // Phone-looking local part.
    check("555-123-4567@vtext.com", &[(Email, "555-123-4567@vtext.com")]);
    // IPv4 embedded in IPv6.
    check("::ffff:10.0.0.1", &[(IpV6, "::ffff:10.0.0.1")]);
    // Secret inside an email-ish token: the email is longer.
    let k = key("sk-", "abcdEFGH1234ijklMNOP5678");
    check(&format!("{k}@corp.example.com"), &[(Email, &format!("{k}@corp.example.com"))]);
    // Adjacent kinds separated by punctuation are all reported.
    check(
        "a@b.co,10.0.0.1;4111111111111111",
        &[(Email, "a@b.co"), (IpV4, "10.0.0.1"), (CardNumber, "4111111111111111")],
    );
    // SSN beside a phone.
    check("123-45-6789 / (555) 123-4567", &[(UsSsn, "123-45-6789"), (Phone, "(555) 123-4567")]);
}

// ----------------------------------------------------------------------------- redaction

#[test]
fn redaction_output() {
    let cases = [
        ("mail john@example.com now", "mail [REDACTED:EMAIL] now"),
        ("card 4111 1111 1111 1111, ssn 123-45-6789", "card [REDACTED:CARD], ssn [REDACTED:SSN]"),
        ("call +44 20 7946 0958", "call [REDACTED:PHONE]"),
        ("IBAN GB82 WEST 1234 5698 7654 32.", "IBAN [REDACTED:IBAN]."),
        ("ip 10.0.0.1 / 2001:db8::1", "ip [REDACTED:IPV4] / [REDACTED:IPV6]"),
        ("nothing here", "nothing here"),
        ("", ""),
    ];
    for (input, want) in cases {
        let out = Detectors::redact(input, &det().scan(input));
        assert_eq!(out, want);
        assert!(det().scan(&out).is_empty());
    }
    let k = key("AKIA", "IOSFODNN7EXAMPLE");
    let input = format!("export AWS_ACCESS_KEY_ID={k}");
    assert_eq!(Detectors::redact(&input, &det().scan(&input)), "export AWS_ACCESS_KEY_ID=[REDACTED:API_KEY]");
    assert_eq!(placeholder(ApiKey), "[REDACTED:API_KEY]");
}

/// Inputs where a finding sits right next to text that must not become a finding once the
/// neighbour is replaced by a placeholder (each one was a property-test counterexample).
#[test]
fn redaction_is_idempotent_on_tricky_neighbours() {
    let cases = [
        "0::ffff:10.0.0.1::",
        "GB82 WEST 1234 5698 7654 32::ffff:10.0.0.1-",
        "john.doe@example.com.sk-abcdEFGH1234ijklMNOP5678",
        "4111 1111 1111 1111@john.doe@example.com",
        "+44 20 7946 0958(4111 1111 1111 1111",
        "john.doe@example.com:01 23 45 67 89",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----sk-abcdEFGH1234ijklMNOP5678AA00john.doe@example.coma",
        "john.doe@example.com.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "2001:db8::1.DE89370400440532013000",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----0 4111 1111 1111 1111",
        "(555) 123-4567-192.168.1.1",
        "john.doe@example.com+123 45 6789 4111 1111 1111 1111 ",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln.GB82 WEST 1234 5698 7654 32",
        "2001:db8::1..01 23 45 67 89+44 20 7946 0958",
        "0101 23 45 67 89::ffff:10.0.0.1",
        "+44 20 7946 0958'a@b.co ",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----'john.doe@example.com+44 20 7946 0958",
    ];
    for input in cases {
        let redacted = Detectors::redact(input, &det().scan(input));
        assert_ne!(redacted, input, "something should be redacted in {input:?}");
        assert_eq!(det().scan(&redacted), vec![], "rescan of {redacted:?} (from {input:?})");
    }
}

#[test]
fn redact_ignores_bad_findings() {
    let bad = [
        Finding { kind: Email, rule_id: "pii.email", start: 2, end: 100 },
        Finding { kind: Email, rule_id: "pii.email", start: 1, end: 2 }, // 'é' is 2 bytes at 0..2
        Finding { kind: Phone, rule_id: "pii.phone", start: 3, end: 3 },
    ];
    assert_eq!(Detectors::redact("éabc", &bad), "éabc");
    let overlapping = [
        Finding { kind: Email, rule_id: "pii.email", start: 0, end: 3 },
        Finding { kind: Phone, rule_id: "pii.phone", start: 1, end: 4 },
    ];
    assert_eq!(Detectors::redact("abcdef", &overlapping), "[REDACTED:EMAIL]def");
}

#[test]
fn non_ascii_spans() {
    let input = "Grüße, schreib an jürgen.x@beispiel.de — Karte 4111 1111 1111 1111 ✓ IP 10.0.0.1 日本";
    let found = check(
        input,
        &[(Email, "jürgen.x@beispiel.de"), (CardNumber, "4111 1111 1111 1111"), (IpV4, "10.0.0.1")],
    );
    assert_eq!((found[0].start, found[0].end), (20, 41)); // "Grüße, schreib an " is 18 chars, 20 bytes

    let out = Detectors::redact(input, &found);
    assert_eq!(out, "Grüße, schreib an [REDACTED:EMAIL] — Karte [REDACTED:CARD] ✓ IP [REDACTED:IPV4] 日本");
    // Non-ASCII glued directly to a token is not a word character for boundaries.
    check("电话555-123-4567。", &[(Phone, "555-123-4567")]);
    check("📧a@b.io📧", &[(Email, "a@b.io")]);
}

#[test]
fn detectors_are_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + Default>() {}
    assert_traits::<Detectors>();
    let d = det().clone();
    assert_eq!(d.scan("a@b.io").len(), 1);
}

/// Pathological inputs finish quickly (the scan is linear); the example `time --adversarial`
/// measures the per-KiB cost at two sizes.
#[test]
fn adversarial_inputs_finish() {
    for unit in ["1", "1 ", "1.", "12-", "1:", "a::", "a@", "a.b", "sk-", "eyJaaaaaaaa.", "+1", "GB82", "é日"]
    {
        let text = unit.repeat(128 * 1024 / unit.len());
        let found = det().scan(&text);
        assert!(found.windows(2).all(|w| w[0].end <= w[1].start));
    }
    let pem = "-----BEGIN PRIVATE KEY-----\n".repeat(4096);
    assert_eq!(det().scan(&pem).len(), 4096);
}

// ----------------------------------------------------------------------------- benign corpus

const BENIGN: &[&str] = &[
    "Can you refactor this function to use iterators?\n\nfn sum(v: &[u64]) -> u64 {\n    let mut s = 0;\n    for i in 0..v.len() { s += v[i]; }\n    s\n}",
    "use std::collections::HashMap;\nuse std::net::Ipv6Addr;\nlet m: HashMap<String, u32> = HashMap::new();\nlet max = u64::MAX; let eps = f32::EPSILON;",
    "In Python, @dataclass and @property are decorators. What does @app.route('/users/<int:id>') do in Flask?",
    "Solve for x: 3x + 5 = 20, then compute 2^31 - 1 = 2147483647 and explain overflow.",
    "The Fibonacci sequence starts 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987.",
    "Our Q3 2024 revenue was $12.4M, up 18% YoY; EBITDA margin 23.5%. Forecast for FY2025: $51,300,000.",
    "Please draft an email to the team about the offsite on 2024-03-15 at 10:30, room 4B.",
    "Compare numpy 1.26.4 with 2.0.0 and pandas 2.2.1; we pin requests==2.31.0 and urllib3<2.",
    "The build failed at commit e83c5163316f89bfbde7d9ab23ca2e25604af290 (tag v1.2.3.4, release 2024.01.15).",
    "Generate a UUID like 550e8400-e29b-41d4-a716-446655440000 for each new order.",
    "Order #1234567890 shipped on 15/01/2024; invoice INV-2024-00123, PO 77812-0091, SKU AB-1234-XYZ.",
    "Explain the difference between a::b paths in Rust and x :: Int type annotations in Haskell.",
    "SELECT id, total FROM orders WHERE created_at >= '2024-01-01 00:00:00' AND total > 1000.50 LIMIT 25;",
    "{\"id\": 42, \"price\": 19.99, \"qty\": 3, \"ts\": 1705312200, \"ratio\": 0.618033988749895}",
    "Unix time 1705312200123 in milliseconds corresponds to 2024-01-15T10:30:00.123Z.",
    "pi = 3.14159265358979323846 and e = 2.718281828459045; sqrt(2) ~ 1.4142135623730951.",
    "Our OpenAI keys start with sk- and our Stripe keys with sk_live_; never paste them into chat.",
    "Rotate the AWS credentials (the ones starting with AKIA) every 90 days per policy SEC-7.",
    "Write a regex that validates email addresses and phone numbers, without using lookbehind.",
    "The meeting is at 14:30:00 UTC; the previous one lasted 1:45:30 and ended at 16:15.",
    "ISBN 978-0-306-40615-7 and ISSN 2049-3630 are cited in the bibliography on page 123-145.",
    "Matrix [[1, 2, 3], [4, 5, 6], [7, 8, 9]] has determinant 0; its rank is 2.",
    "docker pull nginx:1.25.3 && docker run -p 8080:80 nginx; image digest sha256:abcdef0123456789",
    "git clone git@github.com:rust-lang/regex.git && cargo add regex@1 && npm i lodash@4.17.21",
    "The population grew from 7 888 000 000 to 8 045 311 447 between 2021 and 2023.",
    "Ticket ABC-12345: users see error code 0x80070005 when saving; see KB5034441 for details.",
    "Sales by region: North 1,234,567.89; South 987,654.32; East 2.5M; West 3,210,000.",
    "let hash = sha1(\"hello\"); // aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
    "Temperatures this week: 21.5, 22.0, 19.8, 18.4 and 20.1 degrees; humidity 45-60%.",
    "for (int i = 0; i < n; i++) { a[i+1] = a[i] * 2 + 1; } // O(n)",
    "The ratio 16:9 and 4:3 screens; resolution 1920x1080 at 144Hz; 3840×2160 for 4K.",
    "Chapter 3.2.1 covers IEEE 754 doubles; section 10.4.2.1.3 discusses denormals.",
    "Shipment weights: 12.5kg, 7.25kg, 100g. Tracking will be emailed once dispatched.",
    "My favourite constants: Avogadro 6.02214076e23, Planck 6.62607015e-34, c = 299792458 m/s.",
    "Grüße aus München! Die Rechnung Nr. 2024-0815 über 1.234,56 € ist am 31.01.2024 fällig.",
    "Kubernetes: kubectl scale deployment/web --replicas=3 -n prod; HPA targets 70% CPU.",
];

#[test]
fn benign_corpus_has_no_findings() {
    let mut false_positives = 0;
    for (i, text) in BENIGN.iter().enumerate() {
        let found = det().scan(text);
        for f in &found {
            eprintln!("FP in #{i}: {:?} {:?}", f.rule_id, &text[f.start..f.end]);
        }
        false_positives += found.len();
    }
    eprintln!("benign corpus: {} prompts, {false_positives} false positives", BENIGN.len());
    assert!(BENIGN.len() >= 30);
    assert_eq!(false_positives, 0);
}
