//! Signed checkpoints: round trips, tampering and hostile notes.

use mmr::{
    Checkpoint, CheckpointError, CheckpointVerifier, Hash, NoteError, NoteLimits, NoteSigner, SignedNote,
    TreeSize, VerifierKey, VerifierPolicy,
};

use crate::vectors::{checkpoint, signers, verifier_keys};

const ORIGIN: &str = "ledger.example/audit/test";

fn verifier(keys: Vec<VerifierKey>, threshold: usize) -> CheckpointVerifier {
    CheckpointVerifier::new(
        ORIGIN,
        VerifierPolicy::new(keys, threshold).expect("valid policy"),
        NoteLimits::default(),
    )
}

/// The vector note with byte `index` altered.
fn altered(note: &str, index: usize) -> Vec<u8> {
    let mut bytes = note.as_bytes().to_vec();
    bytes[index] ^= 0x01;
    bytes
}

fn check_rejected(note: &[u8], expected: CheckpointError) {
    let keys = verifier_keys(&checkpoint());
    assert_eq!(verifier(keys, 2).open(note).map(|verified| verified.checkpoint), Err(expected));
}

#[test]
fn any_altered_body_byte_fails_under_every_policy() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let body_len = vector.note.find("\n\n").expect("blank line") + 1;
    let mut verifiers: Vec<_> = keys.iter().map(|key| verifier(vec![key.clone()], 1)).collect();
    verifiers.push(verifier(keys.clone(), 2));
    for index in 0..body_len {
        let note = altered(&vector.note, index);
        for verifier in &verifiers {
            assert!(verifier.open(&note).is_err(), "body byte {index} altered, still verifies");
        }
    }
}

#[test]
fn any_altered_signature_byte_fails_for_its_key() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let all_three = verifier(keys.clone(), 3);
    let signatures_start = vector.note.find("\n\n").expect("blank line") + 2;
    for index in signatures_start..vector.note.len() {
        let note = altered(&vector.note, index);
        assert!(all_three.open(&note).is_err(), "signature byte {index} altered, 3-of-3 still verifies");
        // The line the byte is in belongs to one key: a policy of that key alone must fail.
        let line = newlines(&vector.note.as_bytes()[signatures_start..index]);
        if let Some(key) = keys.get(line) {
            assert!(
                verifier(vec![key.clone()], 1).open(&note).is_err(),
                "byte {index} of {}'s signature altered, still verifies",
                key.key_name()
            );
        }
    }
}

fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&byte| byte == b'\n').count()
}

#[test]
fn invalid_signature_by_a_trusted_key_is_reported_as_such() {
    let vector = checkpoint();
    // Flip the last base64 character of ledger-1's signature (a signature byte, not the key id).
    let line_end = vector.note.find("\n\u{2014} ledger-2").expect("second signature line");
    let mut note = vector.note.clone().into_bytes();
    note[line_end - 2] = if note[line_end - 2] == b'A' { b'B' } else { b'A' };
    let keys = verifier_keys(&vector);
    match verifier(keys, 1).open(&note) {
        Err(CheckpointError::Note(NoteError::InvalidSignature { key_name })) => {
            assert_eq!(key_name, "ledger-1")
        }
        other => panic!("expected an invalid signature, got {other:?}"),
    }
}

#[test]
fn unknown_signatures_are_ignored_but_do_not_count() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let mut note = SignedNote::parse(vector.note.as_bytes(), &NoteLimits::default()).expect("parses");
    let witness = NoteSigner::from_seed("witness.example", &[9; 32]).expect("signer");
    note.sign(&witness).expect("witness cosigns");
    let verified =
        verifier(keys[..2].to_vec(), 2).open(note.to_string().as_bytes()).expect("2 known signatures");
    let names: Vec<_> = verified.signed_by.iter().map(VerifierKey::key_name).collect();
    assert_eq!(names, ["ledger-1", "ledger-2"]);

    let only_witness = SignedNote::parse(vector.note.as_bytes(), &NoteLimits::default()).expect("parses");
    let other = VerifierPolicy::new(vec![witness.verifier_key()], 1).expect("policy");
    let result = CheckpointVerifier::new(ORIGIN, other, NoteLimits::default()).verify(only_witness);
    assert_eq!(result.map(|v| v.checkpoint), Err(NoteError::PolicyNotMet { valid: 0, threshold: 1 }.into()));
}

#[test]
fn sign_parse_verify_round_trip_with_extensions() {
    let vector = checkpoint();
    let signers = signers(&vector);
    let mut checkpoint = Checkpoint::new(ORIGIN, TreeSize(123_456), Hash([7; 32]));
    checkpoint.extensions = vec!["timestamp 1700000000".to_owned(), "ext two".to_owned()];
    let note = checkpoint.sign(&[&signers[0], &signers[2]]).expect("sign");
    let keys = verifier_keys(&vector);
    let verified = verifier(keys, 2).open(note.to_string().as_bytes()).expect("verifies");
    assert_eq!(verified.checkpoint, checkpoint);
    assert_eq!(verified.note, note);
}

#[test]
fn wrong_origin_is_refused() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let other_log = CheckpointVerifier::new(
        "other.example/log",
        VerifierPolicy::new(keys, 1).expect("policy"),
        NoteLimits::default(),
    );
    assert_eq!(
        other_log.open(vector.note.as_bytes()).map(|v| v.checkpoint),
        Err(CheckpointError::WrongOrigin {
            expected: "other.example/log".to_owned(),
            found: ORIGIN.to_owned()
        })
    );
}

/// A note with `body` signed by the vector's three keys.
fn signed(body: &str) -> String {
    let mut note = SignedNote::new(body.to_owned()).expect("valid note text");
    for signer in signers(&checkpoint()) {
        note.sign(&signer).expect("sign");
    }
    note.to_string()
}

#[test]
fn malformed_bodies_are_refused_even_when_signed() {
    let root = "7UlJFcZArM3fl7Emz8BTCtceBpZ0mKlEui+OT5G84aI=";
    let cases: &[(&str, CheckpointError)] = &[
        (&format!("{ORIGIN}\n"), CheckpointError::MissingLine("tree size")),
        (&format!("{ORIGIN}\n70\n"), CheckpointError::MissingLine("root hash")),
        (&format!("\n70\n{root}\n"), CheckpointError::EmptyOrigin),
        (&format!("{ORIGIN}\nseventy\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n070\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n-70\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n+70\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n 70\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n18446744073709551616\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n\n{root}\n"), CheckpointError::BadSize),
        (&format!("{ORIGIN}\n70\nnot base64!\n"), CheckpointError::BadRoot),
        (&format!("{ORIGIN}\n70\n7UlJFcZArM3fl7Emz8BTCtceBpZ0mKlEui+OT5G84aI\n"), CheckpointError::BadRoot),
        (&format!("{ORIGIN}\n70\nAAAA\n"), CheckpointError::BadRoot),
    ];
    for (body, expected) in cases {
        check_rejected(signed(body).as_bytes(), expected.clone());
    }
    // A blank extension line would be read as the end of the text: the note is malformed.
    assert!(SignedNote::new(format!("{ORIGIN}\n70\n{root}\n\next\n")).is_ok());
    assert_eq!(
        Checkpoint::from_body(&format!("{ORIGIN}\n70\n{root}\n\next\n")),
        Err(CheckpointError::EmptyExtension)
    );
}

#[test]
fn malformed_notes_are_refused() {
    let vector = checkpoint();
    let note = vector.note.as_str();
    let body_end = note.find("\n\n").expect("blank line") + 1;
    let body = &note[..body_end];
    let first_signature = &note[body_end + 1..note.find("\n\u{2014} ledger-2").expect("second line") + 1];
    let cases: Vec<(String, NoteError)> = vec![
        (body.to_owned(), NoteError::NoSignatures),
        (format!("{body}\n"), NoteError::NoSignatures),
        (
            note.trim_end_matches('\n').to_owned(),
            NoteError::BadSignatureLine("the last signature line has no newline"),
        ),
        (
            note.replacen('\u{2014}', "-", 1),
            NoteError::BadSignatureLine("must start with an em dash and a space"),
        ),
        (format!("{body}\n\u{2014} ledger-1\n"), NoteError::BadSignatureLine("expected <name> <base64>")),
        (
            format!("{body}\n\u{2014} ledger-1 !!!!\n"),
            NoteError::BadSignatureLine("signature is not valid base64"),
        ),
        (
            format!("{body}\n\u{2014} ledger-1 AAAA\n"),
            NoteError::BadSignatureLine("signature is shorter than a key id and one byte"),
        ),
        (format!("{body}\n\u{2014} led+ger AAAAAAAA\n"), NoteError::BadKeyName),
        (
            format!("{body}\n{first_signature}{first_signature}"),
            NoteError::DuplicateSignature { key_name: "ledger-1".to_owned() },
        ),
        (note.replacen('\n', "\r\n", 1), NoteError::ControlCharacter),
        (note.replacen("test", "te\u{7}st", 1), NoteError::ControlCharacter),
    ];
    let keys = verifier_keys(&vector);
    for (note, expected) in cases {
        assert_eq!(
            verifier(keys.clone(), 1).open(note.as_bytes()).map(|v| v.checkpoint),
            Err(expected.into()),
            "{note:?}"
        );
    }
    let leading_blank_line = format!("\n{note}");
    check_rejected(leading_blank_line.as_bytes(), CheckpointError::EmptyOrigin);
    let mut invalid_utf8 = note.as_bytes().to_vec();
    invalid_utf8[3] = 0xFF;
    check_rejected(&invalid_utf8, NoteError::NotUtf8.into());
}

#[test]
fn limits_are_enforced_before_parsing() {
    let vector = checkpoint();
    let keys = verifier_keys(&vector);
    let limits = NoteLimits::default();

    let oversized = format!("{}{}", vector.note, "x".repeat(limits.note_bytes_max));
    let error = NoteError::TooLarge { len: oversized.len(), max: limits.note_bytes_max };
    check_rejected(oversized.as_bytes(), error.into());

    let long_origin = "o".repeat(limits.line_bytes_max + 1);
    let body = format!("{long_origin}\n70\n7UlJFcZArM3fl7Emz8BTCtceBpZ0mKlEui+OT5G84aI=\n");
    check_rejected(
        signed(&body).as_bytes(),
        NoteError::LineTooLong { len: long_origin.len(), max: limits.line_bytes_max }.into(),
    );

    let many_lines = format!(
        "{ORIGIN}\n70\n7UlJFcZArM3fl7Emz8BTCtceBpZ0mKlEui+OT5G84aI=\n{}",
        "ext\n".repeat(limits.text_lines_max)
    );
    check_rejected(
        signed(&many_lines).as_bytes(),
        NoteError::TooManyLines { max: limits.text_lines_max }.into(),
    );

    let mut crowded = SignedNote::parse(vector.note.as_bytes(), &limits).expect("parses");
    for i in 0..limits.signatures_max {
        let signer = NoteSigner::from_seed(&format!("witness-{i}"), &[u8::try_from(i).expect("small"); 32])
            .expect("signer");
        crowded.sign(&signer).expect("sign");
    }
    let tight = NoteLimits { note_bytes_max: 1 << 20, ..limits };
    let verifier = CheckpointVerifier::new(ORIGIN, VerifierPolicy::new(keys, 2).expect("policy"), tight);
    assert_eq!(
        verifier.open(crowded.to_string().as_bytes()).map(|v| v.checkpoint),
        Err(NoteError::TooManySignatures { max: limits.signatures_max }.into())
    );
}

#[test]
fn verifier_keys_parse_strictly() {
    let good = &checkpoint().keys[0].verifier_key;
    assert_eq!(good.parse::<VerifierKey>().expect("parses").to_string(), *good);
    let (name, rest) = good.split_once('+').expect("name");
    let (id, key) = rest.split_once('+').expect("id");
    let cases = [
        (format!("{name}+{id}"), NoteError::BadKey("expected <name>+<hex key id>+<base64 key>")),
        (format!("{good}+extra"), NoteError::BadKey("key is not valid base64")),
        (format!("+{id}+{key}"), NoteError::BadKeyName),
        (format!("other+{id}+{key}"), NoteError::BadKey("key id does not match the name and key")),
        (
            format!("{name}+{}+{key}", id.to_uppercase()),
            NoteError::BadKey("key id must be 8 lowercase hex digits"),
        ),
        (format!("{name}+{id}0+{key}"), NoteError::BadKey("key id must be 8 lowercase hex digits")),
        (format!("{name}+{id}+{}", &key[1..]), NoteError::BadKey("key is not valid base64")),
        (format!("{name}+{id}+AQ=="), NoteError::BadKey("an Ed25519 public key is 32 bytes")),
        (format!("{name}+{id}+Ag=="), NoteError::BadKey("unsupported key algorithm (only Ed25519, 0x01)")),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<VerifierKey>(), Err(expected), "{text}");
    }
}

#[test]
fn policies_must_be_satisfiable_and_distinct() {
    let keys = verifier_keys(&checkpoint());
    assert!(VerifierPolicy::new(keys.clone(), 0).is_err());
    assert!(VerifierPolicy::new(keys.clone(), 4).is_err());
    assert!(VerifierPolicy::new(vec![keys[0].clone(), keys[0].clone()], 1).is_err());
    assert!(VerifierPolicy::new(Vec::new(), 0).is_err());
    assert_eq!(VerifierPolicy::new(keys, 3).expect("3 of 3").threshold(), 3);
}

#[test]
fn signer_key_names_and_private_keys_are_checked() {
    assert_eq!(NoteSigner::from_seed("", &[1; 32]).map(|_| ()), Err(NoteError::BadKeyName));
    assert_eq!(NoteSigner::from_seed("a b", &[1; 32]).map(|_| ()), Err(NoteError::BadKeyName));
    let signer = NoteSigner::from_seed("node-1", &[1; 32]).expect("signer");
    let private = signer.to_private_key_string();
    assert!(private.starts_with("PRIVATE+KEY+node-1+"));
    assert!(!format!("{signer:?}").contains(&private[private.rfind('+').expect("plus") + 1..]));
    let tampered = private.replace("node-1", "node-2");
    assert!(tampered.parse::<NoteSigner>().is_err());
}
