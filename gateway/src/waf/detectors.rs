//! Sensitive-data detectors for the Aegis WAF: PII, payment card numbers and secrets.
//!
//! [`Detectors::scan`] returns byte spans of sensitive data in a prompt or response;
//! [`Detectors::redact`] replaces them with typed placeholders such as `[REDACTED:EMAIL]`.
//!
//! # Detectors
//!
//! | kind | rule ids | match | validation |
//! |---|---|---|---|
//! | [`DetectorKind::Email`] | `pii.email` | `local@domain.tld`: local part of `[A-Za-z0-9_%+-]` words joined by single dots (plus Latin/Greek/Cyrillic letters, e.g. `jürgen@…`), dotted ASCII domain labels, alphabetic TLD of 2+ letters | local part at most 64 bytes; not glued to a word, `@` or `]`; not an scp-style git remote (`git@host:path`); a greedy match that swallowed the next token (`a@x.com.sk-…`) falls back to a shorter domain |
//! | [`DetectorKind::Phone`] | `pii.phone` | `+` international numbers (E.164 compact or with ` `, `.`, `-`, `(..)` separators), North American `(555) 123-4567` / `555-123-4567` / `1-800-555-1234`, trunk-prefixed national numbers `020 7946 0958` / `06 12 34 56 78` | 9–15 digits (8–15 for the compact `+` form); bare digit runs without `+`, parentheses or separators never match (order numbers, Unix timestamps, cards); NANP area code 2–9; trunk forms use one separator throughout (`01.01.2024 10` is no phone); balanced parentheses |
//! | [`DetectorKind::Iban`] | `pii.iban` | two upper-case letters, two check digits, BBAN; a single space allowed after every 4 characters | country in the length table (80+ countries: all SEPA and the other registry members) with the exact length; ISO 7064 MOD 97-10 remainder 1 |
//! | [`DetectorKind::CardNumber`] | `pci.card` | 13–19 digits, contiguous or grouped with one consistent separator (space or dash; first group 4 digits, inner groups 4–6) | Luhn; known IIN with a length valid for the brand (Visa 4; Mastercard 51–55, 2221–2720; Amex 34/37; Discover 6011/65/644–649; JCB 3528–3589; Diners 36/38/300–305; UnionPay 62); a trailing group after a valid number (an expiry date) stays outside the span |
//! | [`DetectorKind::UsSsn`] | `pii.us_ssn` | `AAA-GG-SSSS`, or with single spaces (one separator used consistently) | area not 000, 666 or 900–999; group not 00; serial not 0000 |
//! | [`DetectorKind::IpV4`] | `pii.ipv4` | dotted quad | octets 0–255 without leading zeros; not part of a longer dotted number (`1.2.3.4.5`) or glued to a word (`v1.2.3.4`) |
//! | [`DetectorKind::IpV6`] | `pii.ipv6` | full, compressed and IPv4-embedded forms | parsed by [`std::net::Ipv6Addr`]; must contain a decimal digit (so `dead::beef` and `a::b` code paths don't fire); not glued to a word (`f32::E`) |
//! | [`DetectorKind::ApiKey`] | `secret.openai_key`, `secret.anthropic_key`, `secret.aws_access_key_id`, `secret.github_token`, `secret.slack_token`, `secret.google_api_key`, `secret.stripe_key`, `secret.jwt`, `secret.private_key` | OpenAI `sk-`/`sk-proj-`, Anthropic `sk-ant-`, AWS `AKIA`/`ASIA`, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`/`github_pat_`, Slack `xox[abposr]-`, Google `AIza`, Stripe `sk_live_`/`rk_live_`, JWT (JWS and JWE), PEM private keys | exact lengths where the format fixes them; `sk-` bodies need a digit and a letter (prose like `sk-learn-style-names` doesn't fire); Slack tokens need a digit; a JWT header must base64url-decode to a JSON object naming `alg`/`typ`/`kid`; a PEM finding spans the block through its `-----END …-----` line (or the base64 body that follows a cut-off header) |
//!
//! All detectors require token boundaries: a finding never starts or ends inside a word (ASCII
//! letters, digits, `_`; other non-ASCII text is a boundary, so `电话555-123-4567` is found), and
//! numeric findings do not continue a longer dotted, dashed or space-grouped number. `[` and `]`
//! count as word characters for these checks, so the placeholders written by
//! [`Detectors::redact`] never turn a neighbour into a new finding: rescanning redacted output
//! finds nothing (checked by property tests).
//!
//! When candidates overlap, the longest wins, then the more specific kind (API key, card, IBAN,
//! SSN, email, IPv6, IPv4, phone, in that order), then the earlier start. Detectors whose grammar allows
//! several lengths at one start (card, phone, email) offer all valid lengths, so a shorter valid
//! reading survives when its longest reading loses to a finding of another kind.
//!
//! # How the scan runs, and why it is linear
//!
//! * Secrets: one regex alternation. Every alternative starts with a literal prefix, so the
//!   [`regex`] crate runs a SIMD literal prefilter and only confirms at the few hits.
//! * Emails: one regex, skipped entirely when the text has no `@`; the crate's reverse-inner
//!   strategy searches for the `@` literal first.
//! * Numeric family (SSN, card, IPv4, phone, IBAN, IPv6): one hand-written pass over the bytes that
//!   stops only at word starts and at `+`, `(`, `:`. A bounded look-ahead counts digits and dots
//!   of the numeric run there and calls only the validators that could succeed; phone shapes come
//!   from an anchored regex. This loop replaced a combined regex of the same necessary conditions
//!   (whose lazy-DFA pass alone cost more than the whole scan does now) and made the scan about
//!   2.5× faster; that regex is kept under `cfg(test)` as an oracle the byte loop must agree with.
//!
//! The [`regex`] crate guarantees `O(m · n)` matching without backtracking. Every validator looks
//! at a bounded window (at most 64 bytes for numbers, 45 for IPv6) or at its own match only, the
//! IPv6 check visits each hex/colon run once, and after a rejected secret or email the search
//! resumes past the part of the match where no other candidate can start. Total work is therefore
//! linear in the input (plus sorting the candidates, of which there are few); `examples/time.rs --adversarial` shows flat ns/KiB from 64 KiB to 1 MiB
//! on inputs such as `1 1 1 …`, `a::a::…`, `sk-sk-…`, `a@a@…` and repeated PEM headers.
//!
//! All patterns are ASCII and the byte loop only stops on ASCII bytes, so every span starts and
//! ends on a `char` boundary of the input.

#![forbid(unsafe_code)]
#![warn(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use regex::bytes::Regex;

/// The family of a finding; also selects the placeholder used by redaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectorKind {
    Email,
    Phone,
    Iban,
    CardNumber,
    UsSsn,
    IpV4,
    IpV6,
    ApiKey,
}

impl DetectorKind {
    /// Tie-break rank on overlaps of equal length: higher is more specific.
    fn specificity(self) -> u8 {
        match self {
            DetectorKind::ApiKey => 7,
            DetectorKind::CardNumber => 6,
            DetectorKind::Iban => 5,
            DetectorKind::UsSsn => 4,
            DetectorKind::Email => 3,
            DetectorKind::IpV6 => 2,
            DetectorKind::IpV4 => 1,
            DetectorKind::Phone => 0,
        }
    }
}

/// The typed placeholder that [`Detectors::redact`] writes for `kind`.
pub fn placeholder(kind: DetectorKind) -> &'static str {
    match kind {
        DetectorKind::Email => "[REDACTED:EMAIL]",
        DetectorKind::Phone => "[REDACTED:PHONE]",
        DetectorKind::Iban => "[REDACTED:IBAN]",
        DetectorKind::CardNumber => "[REDACTED:CARD]",
        DetectorKind::UsSsn => "[REDACTED:SSN]",
        DetectorKind::IpV4 => "[REDACTED:IPV4]",
        DetectorKind::IpV6 => "[REDACTED:IPV6]",
        DetectorKind::ApiKey => "[REDACTED:API_KEY]",
    }
}

/// One piece of sensitive data: `text[start..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    pub kind: DetectorKind,
    /// Stable identifier of the rule that fired, e.g. `"pii.email"`, `"secret.aws_access_key_id"`.
    pub rule_id: &'static str,
    /// Byte offset of the first byte (on a char boundary).
    pub start: usize,
    /// Byte offset one past the last byte (on a char boundary).
    pub end: usize,
}

impl Finding {
    fn new(kind: DetectorKind, rule_id: &'static str, start: usize, end: usize) -> Self {
        Finding { kind, rule_id, start, end }
    }

    /// The matched text, if the span is valid for `text`.
    pub fn text<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.start..self.end)
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns. Everything is ASCII and written with explicit classes so the regex crate can use its
// lazy DFA (Unicode `\d`/`\b` would blow up the automaton or force the slow PikeVM).

/// E.164 / international numbers: `+`, country code, then optionally separated groups.
const PHONE_INTL: &str = r"\+[1-9][0-9]{0,5}(?:[ .-]?\(?[0-9]{1,6}\)?){0,7}";
/// North American numbers, optional leading `1`.
const PHONE_NANP: &str = r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}";
/// National numbers with a trunk `0` (UK, DE, FR, ...), groups always separated.
const PHONE_TRUNK: &str = r"\(?0[1-9][0-9]{0,3}\)?(?:[ .-][0-9]{2,8}){1,4}";

/// Necessary conditions for the numeric family, combined into one trigger regex. The scanner uses
/// a hand-written byte loop instead (faster); the regex is the test oracle for that loop.
#[cfg(test)]
const SSN_TRIGGER: &str = r"[0-9]{3}[- ][0-9]{2}[- ][0-9]{4}";
#[cfg(test)]
const CARD_TRIGGER: &str = r"[0-9](?:[ -]?[0-9]){12,18}";
#[cfg(test)]
const IPV4_TRIGGER: &str = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}";
#[cfg(test)]
const IBAN_TRIGGER: &str = r"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}";
/// An IPv6 address contains two colons and (we require) a decimal digit.
#[cfg(test)]
const IPV6_TRIGGER: &str =
    r"[0-9A-Fa-f]{0,3}[0-9][0-9A-Fa-f]{0,3}:[0-9A-Fa-f]{0,4}:|:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*[0-9]";

const EMAIL: &str =
    r"[A-Za-z0-9_%+'-]+(?:\.[A-Za-z0-9_%+'-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}";

const SECRETS: &[&str] = &[
    r"sk-ant-[A-Za-z0-9_-]{20,}",
    r"sk-[A-Za-z0-9_-]{20,}",
    r"(?:AKIA|ASIA)[A-Z0-9]{16}",
    r"gh[pousr]_[A-Za-z0-9]{36}",
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",
    r"AIza[A-Za-z0-9_-]{35}",
    r"[sr]k_live_[A-Za-z0-9]{10,}",
    // JWS (3 segments) or JWE (5 segments).
    r"eyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?",
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
];

/// Maximum textual length of an IPv6 address (with embedded IPv4).
const IPV6_MAX: usize = 45;

/// Compiled detectors. Build once with [`Detectors::new`] and share (`Send + Sync`; cloning is
/// cheap because the compiled regexes are reference counted).
#[derive(Clone, Debug)]
pub struct Detectors {
    /// Anchored phone grammar, run at candidate starts.
    phone: Regex,
    email: Regex,
    secrets: Regex,
}

impl Default for Detectors {
    fn default() -> Self {
        Self::new()
    }
}

fn compile(pattern: &str) -> Regex {
    // The patterns are compile-time constants covered by tests; failure is a programming error.
    Regex::new(pattern).expect("detector pattern must compile")
}

impl Detectors {
    pub fn new() -> Self {
        Detectors {
            phone: compile(&format!("^(?:{PHONE_INTL}|{PHONE_NANP}|{PHONE_TRUNK})")),
            email: compile(EMAIL),
            secrets: compile(&SECRETS.join("|")),
        }
    }

    /// All findings in `text`, sorted by start, non-overlapping (on overlap the longer finding
    /// wins, then the more specific kind).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        self.scan_where(text, |_| true)
    }

    /// Like [`Detectors::scan`], considering only the kinds `keep` accepts: overlaps are
    /// resolved among those alone, so a kind left out cannot hide one kept.
    pub fn scan_where(&self, text: &str, keep: impl Fn(DetectorKind) -> bool) -> Vec<Finding> {
        let t = text.as_bytes();
        let mut cands = Vec::new();
        self.scan_secrets(t, &mut cands);
        if t.contains(&b'@') {
            self.scan_emails(t, &mut cands);
        }
        self.scan_numeric(t, &mut cands);
        cands.retain(|candidate| keep(candidate.kind));
        resolve(cands)
    }

    /// Replaces each finding with its [`placeholder`]. Findings are expected sorted and
    /// non-overlapping as returned by [`Detectors::scan`]; any finding that overlaps an earlier
    /// one, is out of range, or is not on char boundaries is ignored (never panics).
    pub fn redact(text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut cursor = 0;
        for f in findings {
            if f.start < cursor
                || f.start >= f.end
                || !text.is_char_boundary(f.start)
                || !text.is_char_boundary(f.end)
            {
                continue;
            }
            let (Some(before), Some(_)) = (text.get(cursor..f.start), text.get(f.start..f.end)) else {
                continue;
            };
            out.push_str(before);
            out.push_str(placeholder(f.kind));
            cursor = f.end;
        }
        out.push_str(text.get(cursor..).unwrap_or_default());
        out
    }

    fn scan_secrets(&self, t: &[u8], out: &mut Vec<Finding>) {
        let mut pos = 0;
        while pos < t.len() {
            let Some(m) = self.secrets.find_at(t, pos) else { break };
            match validate_secret(t, m.start(), m.end()) {
                Some(f) => {
                    pos = f.end;
                    out.push(f);
                }
                // Every other start inside a rejected match is preceded by a token byte and would
                // be rejected too, except right after a JWT segment dot. Skipping keeps the scan
                // linear on inputs like `sk-sk-sk-…`.
                None => {
                    let (s, e) = (m.start(), m.end());
                    pos = t[s..e].iter().position(|&b| b == b'.').map_or(e, |d| s + d.max(1));
                }
            }
        }
    }

    fn scan_emails(&self, t: &[u8], out: &mut Vec<Finding>) {
        let mut pos = 0;
        while pos < t.len() {
            let Some(m) = self.email.find_at(t, pos) else { break };
            email_spans(t, m.start(), m.end(), out);
            // Any other start inside this match is preceded by a local-part or domain character.
            pos = m.end();
        }
    }

    /// Numeric family (SSN, card, IPv4, phone, IBAN, IPv6) in one pass over the bytes. Every
    /// detector starts a token (its previous byte is not a word byte), so the loop visits word
    /// starts and a few punctuation bytes only, and a cheap look-ahead over the numeric run decides
    /// which validators can possibly succeed (see the module docs for the regex it replaced).
    fn scan_numeric(&self, t: &[u8], out: &mut Vec<Finding>) {
        let n = t.len();
        let mut ipv6_done = 0;
        let mut i = 0;
        while i < n {
            let b = t[i];
            if is_word(b) {
                if b.is_ascii_digit() {
                    self.numeric_at(t, i, out);
                } else if b.is_ascii_uppercase()
                    && t.get(i + 2).is_some_and(u8::is_ascii_digit)
                    && let Some(e) = iban_at(t, i)
                {
                    out.push(Finding::new(DetectorKind::Iban, "pii.iban", i, e));
                }
                i += 1;
                while i < n && is_word(t[i]) {
                    i += 1;
                }
                continue;
            }
            match b {
                b'+' | b'('
                    if t.get(i + 1).is_some_and(u8::is_ascii_digit)
                        && numeric_left_ok(t, i, Grouping::Grouped)
                        && numeric_run(t, i + 1).0 >= 8 =>
                {
                    self.phone_at(t, i, out);
                }
                // Every IPv6 address contains a colon; examine each hex/colon run once.
                b':' if i >= ipv6_done => ipv6_done = ipv6_check(t, i, out),
                _ => {}
            }
            i += 1;
        }
    }

    /// All digit-started detectors at word start `s`, gated on what the numeric run can hold.
    fn numeric_at(&self, t: &[u8], s: usize, out: &mut Vec<Finding>) {
        // Cheap boundary checks first: they reject most starts inside long numbers.
        if !numeric_left_ok(t, s, Grouping::Dotted) {
            return;
        }
        if !numeric_left_ok(t, s, Grouping::Grouped) {
            if let Some(e) = ipv4_at(t, s) {
                out.push(Finding::new(DetectorKind::IpV4, "pii.ipv4", s, e));
            }
            return;
        }
        let (digits, dots) = numeric_run(t, s);
        if digits >= 4
            && dots >= 3
            && let Some(e) = ipv4_at(t, s)
        {
            out.push(Finding::new(DetectorKind::IpV4, "pii.ipv4", s, e));
        }
        if digits >= 9 {
            if let Some(e) = ssn_at(t, s) {
                out.push(Finding::new(DetectorKind::UsSsn, "pii.us_ssn", s, e));
            }
            self.phone_at(t, s, out);
        }
        if digits >= 13 {
            card_at(t, s, out);
        }
    }

    /// Phone numbers starting at `s`: the anchored grammar gives the longest shape; every span of
    /// it that ends after a digit group and validates is a candidate (`+44 20 7946 0958(…`), and
    /// overlap resolution keeps the longest that survives.
    fn phone_at(&self, t: &[u8], s: usize, out: &mut Vec<Finding>) {
        if !numeric_left_ok(t, s, Grouping::Grouped) {
            return;
        }
        let Some(m) = self.phone.find(&t[s..]) else { return };
        let e = s + m.end();
        for i in s + 1..=e {
            let group_end =
                (t[i - 1].is_ascii_digit() || t[i - 1] == b')') && (i == e || !t[i].is_ascii_digit());
            if group_end && phone_valid(t, s, i) {
                out.push(Finding::new(DetectorKind::Phone, "pii.phone", s, i));
            }
        }
    }
}

fn phone_valid(t: &[u8], s: usize, e: usize) -> bool {
    let span = &t[s..e];
    let count = |f: fn(&u8) -> bool| span.iter().filter(|b| f(b)).count();
    let digits = count(u8::is_ascii_digit);
    let opens = count(|&b| b == b'(');
    let closes = count(|&b| b == b')');
    let mut seps = span.iter().filter(|b| matches!(b, b' ' | b'.' | b'-'));
    let no_seps = seps.clone().next().is_none();
    let compact = span[0] == b'+' && no_seps && opens == 0;
    let min = if compact { 8 } else { 9 };
    if !(min..=15).contains(&digits) || opens != closes || opens > 1 {
        return false;
    }
    if opens == 1 && span.iter().position(|&b| b == b'(') > span.iter().position(|&b| b == b')') {
        return false;
    }
    // Trunk-prefixed national numbers: one separator style throughout.
    let trunk = span[0] == b'0' || span.starts_with(b"(0");
    if trunk
        && let Some(first) = seps.next()
        && seps.any(|b| b != first)
    {
        return false;
    }
    // Without `+` or parentheses a phone needs separators (bare digit runs are not phones).
    if span[0] != b'+' && opens == 0 && no_seps {
        return false;
    }
    numeric_right_ok(t, e, Grouping::Grouped)
}

/// Keep a non-overlapping subset of the candidates: longest first, then the more specific kind,
/// then the earlier start; a candidate is kept when it overlaps nothing kept so far. (A sweep that
/// only compares neighbours could drop a short finding because of a long one that later loses to
/// an even longer one, leaking the short one.)
fn resolve(mut cands: Vec<Finding>) -> Vec<Finding> {
    if cands.len() <= 1 {
        return cands;
    }
    cands.sort_unstable_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(b.kind.specificity().cmp(&a.kind.specificity()))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: BTreeMap<usize, Finding> = BTreeMap::new();
    for c in cands {
        // Kept spans are disjoint, so only the last one starting before `c.end` can overlap `c`.
        let overlaps = kept.range(..c.end).next_back().is_some_and(|(_, k)| k.end > c.start);
        if !overlaps {
            kept.insert(c.start, c);
        }
    }
    kept.into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Boundaries. `[`/`]` are treated as word characters so placeholders are inert neighbours.

/// ASCII letters, digits and `_`, as a table: the scan loop tests this for every byte.
static WORD: [bool; 256] = {
    let mut table = [false; 256];
    let mut c: u8 = 0;
    loop {
        table[c as usize] = c.is_ascii_alphanumeric() || c == b'_';
        if c == u8::MAX {
            break table;
        }
        c += 1;
    }
};

fn is_word(b: u8) -> bool {
    WORD[usize::from(b)]
}

fn is_word_left(b: u8) -> bool {
    is_word(b) || b == b']'
}

fn is_word_right(b: u8) -> bool {
    is_word(b) || b == b'['
}

fn prev(t: &[u8], s: usize) -> Option<u8> {
    s.checked_sub(1).and_then(|i| t.get(i).copied())
}

/// How far a numeric token looks at its neighbours to decide it is not a continuation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Grouping {
    /// Phone, card, SSN: dashes and spaces also join digit groups (`8 045 311 447`, `ORD-2024-…`).
    Grouped,
    /// IPv4: only dots continue (`10.0.0.1-10.0.0.9` and `a 10.0.0.1 10.0.0.2` are separate).
    Dotted,
}

/// Numeric tokens must not continue a word or a longer number (`v1.2`, `1.2.3.4.5`, `8 045 311`).
fn numeric_left_ok(t: &[u8], s: usize, g: Grouping) -> bool {
    match prev(t, s) {
        None => true,
        Some(b) if is_word_left(b) => false,
        Some(b'.') => !prev(t, s - 1).is_some_and(is_word_left),
        Some(b'-') if g == Grouping::Grouped => !prev(t, s - 1).is_some_and(is_word_left),
        // A space after a short digit group (thousands style) or after a placeholder.
        // A short group right after a short digit group is a thousands-style continuation
        // (`8 045 311 447`); a placeholder before the space counts as such a group.
        Some(b' ') if g == Grouping::Grouped => {
            let own = t[s..].iter().take(4).take_while(|b| b.is_ascii_digit()).count();
            let run = t[..s - 1].iter().rev().take(4).take_while(|b| b.is_ascii_digit()).count();
            let standalone = (1..=3).contains(&run) && !prev(t, s - 1 - run).is_some_and(is_word);
            !((1..=3).contains(&own) && (standalone || prev(t, s - 1) == Some(b']')))
        }
        Some(_) => true,
    }
}

fn numeric_right_ok(t: &[u8], e: usize, g: Grouping) -> bool {
    match t.get(e) {
        None => true,
        Some(&b) if is_word_right(b) => false,
        Some(b'.') => !t.get(e + 1).is_some_and(|&b| b.is_ascii_digit() || b == b'['),
        Some(b'-') if g == Grouping::Grouped => {
            !t.get(e + 1).is_some_and(|&b| b.is_ascii_digit() || b == b'[')
        }
        Some(_) => true,
    }
}

/// Longest span any numeric detector can cover (an IPv6 address with embedded IPv4 is 45 bytes,
/// a phone with every separator allowed by its grammar stays below this too).
const NUMERIC_RUN_MAX: usize = 64;

/// Digits and dots in the run of numeric-token bytes starting at `s` (bounded look-ahead).
fn numeric_run(t: &[u8], s: usize) -> (usize, usize) {
    let (mut digits, mut dots) = (0, 0);
    for &b in t.iter().skip(s).take(NUMERIC_RUN_MAX) {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            b' ' | b'-' | b'(' | b')' => {}
            _ => break,
        }
    }
    (digits, dots)
}

/// IPv6 at the hex/colon run around the colon at `i`, if the run can hold one (two colons and a
/// decimal digit). Returns the end of the run so its other colons are not examined again.
fn ipv6_check(t: &[u8], i: usize, out: &mut Vec<Finding>) -> usize {
    // The whole run is measured (no cap): the caller skips past it, so each byte of a run is
    // visited a bounded number of times and long runs cost linear time overall.
    let mut a = i;
    while a > 0 && (t[a - 1].is_ascii_hexdigit() || t[a - 1] == b':') {
        a -= 1;
    }
    let (mut colons, mut digit, mut e) = (0, false, a);
    while e < t.len() && is_ipv6_byte(t[e]) {
        colons += usize::from(t[e] == b':');
        digit |= t[e].is_ascii_digit();
        e += 1;
    }
    if colons >= 2
        && digit
        && e - a <= 2 * IPV6_MAX
        && let Some((start, end)) = ipv6_around(t, i)
    {
        out.push(Finding::new(DetectorKind::IpV6, "pii.ipv6", start, end));
    }
    e.max(i + 1)
}

// ---------------------------------------------------------------------------------------------
// Numeric family validators. Each looks at a bounded window starting at `s`.

fn digit_at(t: &[u8], i: usize) -> Option<u32> {
    t.get(i).filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0'))
}

fn ssn_at(t: &[u8], s: usize) -> Option<usize> {
    if !numeric_left_ok(t, s, Grouping::Grouped) {
        return None;
    }
    let sep = *t.get(s + 3)?;
    if !matches!(sep, b'-' | b' ') || t.get(s + 6) != Some(&sep) {
        return None;
    }
    let num = |from: usize, n: usize| -> Option<u32> {
        (from..from + n).try_fold(0u32, |acc, i| Some(acc * 10 + digit_at(t, i)?))
    };
    let (area, group, serial) = (num(s, 3)?, num(s + 4, 2)?, num(s + 7, 4)?);
    let e = s + 11;
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    if !numeric_right_ok(t, e, Grouping::Grouped)
        || (sep == b' '
            && t.get(e) == Some(&b' ')
            && t.get(e + 1).is_some_and(|&b| b.is_ascii_digit() || b == b'['))
    {
        return None;
    }
    Some(e)
}

fn ipv4_at(t: &[u8], s: usize) -> Option<usize> {
    if !numeric_left_ok(t, s, Grouping::Dotted) {
        return None;
    }
    let mut i = s;
    for octet in 0..4 {
        if octet > 0 {
            if t.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut value = 0u32;
        while let Some(d) = digit_at(t, i) {
            if i - start == 3 {
                return None;
            }
            value = value * 10 + d;
            i += 1;
        }
        let len = i - start;
        if len == 0 || value > 255 || (len > 1 && t[start] == b'0') {
            return None;
        }
    }
    numeric_right_ok(t, i, Grouping::Dotted).then_some(i)
}

/// Luhn checksum over ASCII digits.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Known issuer prefix with a length valid for that brand. `digits` are values 0–9.
pub(crate) fn iin_valid(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| digits.iter().take(k).fold(0u32, |acc, &d| acc * 10 + u32::from(d));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    let visa = p1 == 4 && matches!(n, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16;
    let amex = matches!(p2, 34 | 37) && n == 15;
    let discover = (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3)) && (16..=19).contains(&n);
    let jcb = (3528..=3589).contains(&p4) && (16..=19).contains(&n);
    let diners = (p2 == 36 || p2 == 38 || (300..=305).contains(&p3)) && (14..=19).contains(&n);
    let unionpay = p2 == 62 && (16..=19).contains(&n);
    visa || mastercard || amex || discover || jcb || diners || unionpay
}

/// Card numbers starting at `s`: every valid end (the whole token, or a grouped prefix followed
/// by more groups such as an expiry date) is a candidate; overlap resolution keeps the longest.
fn card_at(t: &[u8], s: usize, out: &mut Vec<Finding>) {
    if !numeric_left_ok(t, s, Grouping::Grouped) {
        return;
    }
    let mut digits = [0u8; 19];
    let mut n = 0;
    // (end offset, cumulative digit count, group length) for each group.
    let mut groups: [(usize, usize, usize); 19] = [(0, 0, 0); 19];
    let mut ng = 0;
    let mut sep: Option<u8> = None;
    let mut i = s;
    let mut overflow = false;
    loop {
        let gstart = i;
        while let Some(d) = t.get(i).filter(|b| b.is_ascii_digit()) {
            if n == 19 {
                overflow = true;
                break;
            }
            digits[n] = d - b'0';
            n += 1;
            i += 1;
        }
        groups[ng] = (i, n, i - gstart);
        ng += 1;
        if overflow || ng == groups.len() {
            break;
        }
        match (t.get(i), t.get(i + 1)) {
            (Some(&c @ (b' ' | b'-')), Some(d)) if d.is_ascii_digit() && sep.is_none_or(|x| x == c) => {
                sep = Some(c);
                i += 1;
            }
            _ => break,
        }
    }
    for j in (0..ng).rev() {
        let (end, count, _) = groups[j];
        if !(13..=19).contains(&count) {
            continue;
        }
        if j > 0 {
            let shape_ok = groups[0].2 == 4
                && groups[1..j].iter().all(|g| (4..=6).contains(&g.2))
                && (1..=6).contains(&groups[j].2);
            if !shape_ok {
                continue;
            }
        }
        let last = j + 1 == ng;
        // The whole token must end at a boundary; a prefix ends before a separator by construction.
        if last && (overflow || !numeric_right_ok(t, end, Grouping::Grouped)) {
            continue;
        }
        let d = &digits[..count];
        if luhn_valid(d) && iin_valid(d) {
            out.push(Finding::new(DetectorKind::CardNumber, "pci.card", s, end));
        }
    }
}

/// Total IBAN length for a country code, per the SWIFT IBAN registry.
fn iban_length(country: [u8; 2]) -> Option<usize> {
    let len = match &country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(len)
}

/// ISO 7064 MOD 97-10 over a compact upper-case IBAN: valid when the remainder is 1.
pub(crate) fn iban_checksum_valid(compact: &[u8]) -> bool {
    if compact.len() < 5 {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

fn iban_at(t: &[u8], s: usize) -> Option<usize> {
    if prev(t, s).is_some_and(is_word_left) {
        return None;
    }
    let len = iban_length([*t.get(s)?, *t.get(s + 1)?])?;
    if digit_at(t, s + 2).is_none() || digit_at(t, s + 3).is_none() {
        return None;
    }
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < len {
        let c = *t.get(i)?;
        if c == b' '
            && n.is_multiple_of(4)
            && n > 0
            && t.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric())
        {
            i += 1;
            continue;
        }
        if !(c.is_ascii_digit() || c.is_ascii_uppercase()) {
            return None;
        }
        compact[n] = c;
        n += 1;
        i += 1;
    }
    if t.get(i).is_some_and(|&b| is_word_right(b)) {
        return None;
    }
    iban_checksum_valid(&compact[..n]).then_some(i)
}

fn is_ipv6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// IPv6 candidate around a trigger at `s`: extend left over hex digits and colons to the token
/// start, right over hex digits, colons and dots (embedded IPv4), then parse.
fn ipv6_around(t: &[u8], s: usize) -> Option<(usize, usize)> {
    let mut a = s;
    while a > 0 && (t[a - 1].is_ascii_hexdigit() || t[a - 1] == b':') {
        if s - a >= IPV6_MAX {
            return None;
        }
        a -= 1;
    }
    if prev(t, a).is_some_and(|b| is_word_left(b) || b == b'.') {
        return None;
    }
    let mut e = s;
    while e < t.len() && is_ipv6_byte(t[e]) {
        if e - a >= IPV6_MAX {
            return None;
        }
        e += 1;
    }
    if t.get(e).is_some_and(|&b| is_word_right(b)) {
        return None;
    }
    // Sentence punctuation: drop trailing dots, and a single trailing colon (`::` is meaningful).
    while e > a && t[e - 1] == b'.' {
        e -= 1;
    }
    let parse = |e: usize| -> bool {
        std::str::from_utf8(&t[a..e]).ok().and_then(|s| s.parse::<Ipv6Addr>().ok()).is_some()
    };
    let mut ok = parse(e);
    if !ok && e >= a + 2 && t[e - 1] == b':' && t[e - 2] != b':' {
        e -= 1;
        ok = parse(e);
    }
    if !ok || !t[a..e].iter().any(u8::is_ascii_digit) || t.get(e).is_some_and(|&b| is_word_right(b)) {
        return None;
    }
    // `addr:word` / `addr.word` is a longer token, not an address followed by punctuation.
    if matches!(t.get(e), Some(b':' | b'.')) && t.get(e + 1).is_some_and(|&b| is_word_right(b)) {
        return None;
    }
    Some((a, e))
}

// ---------------------------------------------------------------------------------------------
// Emails and secrets.

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// The character ending at byte `i` (exclusive), decoded from at most 4 bytes.
fn char_before(t: &[u8], i: usize) -> Option<(char, usize)> {
    let mut a = i.checked_sub(1)?;
    while a > 0 && i - a < 4 && (t[a] & 0xC0) == 0x80 {
        a -= 1;
    }
    let c = std::str::from_utf8(&t[a..i]).ok()?.chars().next()?;
    Some((c, a))
}

/// Validates an email match and pushes its span. A local part written in Latin, Greek or
/// Cyrillic letters (`jürgen.x@…`) is extended to its first letter, since the pattern is ASCII.
/// The greedy match may have swallowed a following token as a last label (`a@example.com.sk-…`),
/// so shorter domains that still end in a valid TLD are candidates too.
fn email_spans(t: &[u8], s: usize, e: usize, out: &mut Vec<Finding>) {
    let mut a = s;
    while let Some((c, at)) = char_before(t, a) {
        let letter = !c.is_ascii() && c.is_alphanumeric() && u32::from(c) < 0x0530;
        if !(letter || (a < s && c.is_ascii() && is_local_byte(t[at]))) || s - at > 64 {
            break;
        }
        a = at;
    }
    // Quotes delimit addresses in code (`'a@b.io'`) but also occur inside names (`o'brien@…`).
    while a < e && matches!(t[a], b'.' | b'\'') {
        a += 1;
    }
    let Some(at) = t[a..e].iter().position(|&b| b == b'@').map(|i| a + i) else { return };
    // Starts: the whole local part, and every point right after an inner quote (`0958'a@b.co`
    // may really be a phone number followed by `'a@b.co`). Local parts are at most 64 bytes
    // (RFC 5321), and `---` only occurs where the "local part" is really a PEM armour line.
    let whole = !prev(t, a).is_some_and(|b| is_local_byte(b) || b == b']' || b == b'@');
    let starts = (a.max(at.saturating_sub(64))..at).filter(|&q| {
        let boundary = if q == a { whole } else { t[q - 1] == b'\'' && !matches!(t[q], b'\'' | b'.') };
        boundary && !t[q..at].windows(3).any(|w| w == b"---")
    });
    let right_ok = |e: usize| match t.get(e) {
        Some(&b) if is_word_right(b) || b == b'-' || b == b'@' => false,
        // scp-style remotes such as `git@github.com:org/repo.git` are addresses of repositories.
        Some(b':') => !t.get(e + 1).is_some_and(|&b| is_word_right(b) || b == b'/' || b == b'~'),
        _ => true,
    };
    // Ends: the match end and shorter domains that still end in a valid TLD; domains are at most
    // 255 bytes (RFC 1035), which also bounds the number of candidates per match.
    let mut e = e;
    let mut tld_ok = true;
    loop {
        if tld_ok && e - at <= 256 && right_ok(e) {
            for start in starts.clone() {
                out.push(Finding::new(DetectorKind::Email, "pii.email", start, e));
            }
        }
        let Some(dot) = t[at..e].iter().rposition(|&b| b == b'.').map(|i| at + i) else { return };
        let Some(tld_start) = t[at..dot].iter().rposition(|&b| b == b'.').map(|i| at + i + 1) else {
            return;
        };
        let tld = &t[tld_start..dot];
        tld_ok = tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
        e = dot;
    }
}

fn is_token_byte(b: u8) -> bool {
    is_word(b) || b == b'-'
}

fn validate_secret(t: &[u8], s: usize, e: usize) -> Option<Finding> {
    let m = &t[s..e];
    let api = |rule: &'static str, end: usize| Some(Finding::new(DetectorKind::ApiKey, rule, s, end));
    if m.starts_with(b"-----BEGIN") {
        return api("secret.private_key", pem_end(t, e));
    }
    if prev(t, s).is_some_and(|b| is_token_byte(b) || b == b']') {
        return None;
    }
    let next_ok = !t.get(e).is_some_and(|&b| is_token_byte(b) || b == b'[');
    if !next_ok {
        return None;
    }
    let has_digit_and_letter =
        |b: &[u8]| b.iter().any(u8::is_ascii_digit) && b.iter().any(u8::is_ascii_alphabetic);
    if let Some(body) = m.strip_prefix(b"sk-ant-") {
        return has_digit_and_letter(body).then(|| api("secret.anthropic_key", e)).flatten();
    }
    if let Some(body) = m.strip_prefix(b"sk-") {
        return has_digit_and_letter(body).then(|| api("secret.openai_key", e)).flatten();
    }
    if m.starts_with(b"AKIA") || m.starts_with(b"ASIA") {
        return api("secret.aws_access_key_id", e);
    }
    if m.starts_with(b"gh") || m.starts_with(b"github_pat_") {
        return api("secret.github_token", e);
    }
    if m.starts_with(b"xox") {
        return m.iter().any(u8::is_ascii_digit).then(|| api("secret.slack_token", e)).flatten();
    }
    if m.starts_with(b"AIza") {
        return api("secret.google_api_key", e);
    }
    if m.starts_with(b"sk_live_") || m.starts_with(b"rk_live_") {
        return api("secret.stripe_key", e);
    }
    if m.starts_with(b"eyJ") {
        if t.get(e) == Some(&b'.') && t.get(e + 1).is_some_and(|&b| is_token_byte(b) || b == b'[') {
            return None;
        }
        let header = m.split(|&b| b == b'.').next()?;
        return jwt_header_ok(header).then(|| api("secret.jwt", e)).flatten();
    }
    None
}

/// The header of a JWT must decode to a JSON object naming one of the usual header fields.
fn jwt_header_ok(header: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(header.len() * 3 / 4 + 1);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in header {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return false,
        };
        acc = ((acc << 6) | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            decoded.push((acc >> bits).to_le_bytes()[0]);
        }
    }
    let has = |needle: &[u8]| decoded.windows(needle.len()).any(|w| w == needle);
    decoded.starts_with(b"{\"") && (has(b"\"alg\"") || has(b"\"typ\"") || has(b"\"kid\""))
}

/// End of a PEM private key block whose header ends at `e`: through the `-----END …-----` line if
/// the body leads to one, otherwise through the base64 body that follows the header.
fn pem_end(t: &[u8], e: usize) -> usize {
    let is_body = |b: u8| b.is_ascii_alphanumeric() || b"+/=\r\n\t :,-".contains(&b);
    let mut i = e;
    while i < t.len() && is_body(t[i]) {
        if t[i..].starts_with(b"-----") {
            if t[i..].starts_with(b"-----END") {
                let mut j = i + 8;
                while j < t.len() && (t[j].is_ascii_uppercase() || t[j].is_ascii_digit() || t[j] == b' ') {
                    j += 1;
                }
                let label = &t[i + 8..j];
                if t[j..].starts_with(b"-----")
                    && (label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
                {
                    return j + 5;
                }
            }
            break;
        }
        i += 1;
    }
    // No END line: take the base64 body (whitespace and base64 alphabet), trimmed.
    let mut j = e;
    while j < t.len() && (t[j].is_ascii_alphanumeric() || b"+/=\r\n\t ".contains(&t[j])) {
        j += 1;
    }
    while j > e && t[j - 1].is_ascii_whitespace() {
        j -= 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The numeric family found the slow, obviously complete way: a combined regex of necessary
    /// conditions locates every possible start, and all validators run there.
    fn scan_numeric_reference(d: &Detectors, t: &[u8]) -> Vec<Finding> {
        static TRIGGER: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
        let trigger = TRIGGER.get_or_init(|| {
            compile(
                &[
                    SSN_TRIGGER,
                    CARD_TRIGGER,
                    IPV4_TRIGGER,
                    IBAN_TRIGGER,
                    IPV6_TRIGGER,
                    PHONE_INTL,
                    PHONE_NANP,
                    PHONE_TRUNK,
                ]
                .join("|"),
            )
        });
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(m) = trigger.find_at(t, pos) {
            let s = m.start();
            let c = t[s];
            if c.is_ascii_digit() {
                if let Some(e) = ssn_at(t, s) {
                    out.push(Finding::new(DetectorKind::UsSsn, "pii.us_ssn", s, e));
                }
                card_at(t, s, &mut out);
                if let Some(e) = ipv4_at(t, s) {
                    out.push(Finding::new(DetectorKind::IpV4, "pii.ipv4", s, e));
                }
            }
            if c.is_ascii_digit() || c == b'+' || c == b'(' {
                d.phone_at(t, s, &mut out);
            }
            if c.is_ascii_uppercase()
                && let Some(e) = iban_at(t, s)
            {
                out.push(Finding::new(DetectorKind::Iban, "pii.iban", s, e));
            }
            if (c.is_ascii_hexdigit() || c == b':')
                && let Some((a, e)) = ipv6_around(t, s)
            {
                out.push(Finding::new(DetectorKind::IpV6, "pii.ipv6", a, e));
            }
            pos = s + 1;
        }
        resolve(out)
    }

    fn numeric_soup() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "(555) 123-4567",
            "555-123-4567",
            "+44 20 7946 0958",
            "+14155552671",
            "01 23 45 67 89",
            "123-45-6789",
            "123 45 6789",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "10.0.0.1",
            "192.168.1.1",
            "2001:db8::1",
            "::1",
            "fe80::",
            "::ffff:10.0.0.1",
            " ",
            ".",
            "-",
            ":",
            "(",
            ")",
            "+",
            "[",
            "]",
            "x",
            "é",
            "0",
            "12",
            "2024",
        ]);
        let piece = prop_oneof![
            3 => pieces.prop_map(str::to_owned),
            1 => "[0-9 .:()+-]{1,10}",
            1 => "[0-9a-fA-F:.]{1,10}",
        ];
        prop::collection::vec(piece, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
            ..ProptestConfig::default()
        })]

        /// The fast byte loop finds exactly what the exhaustive regex-triggered scan finds.
        #[test]
        fn numeric_loop_matches_regex_oracle(text in numeric_soup()) {
            static D: std::sync::OnceLock<Detectors> = std::sync::OnceLock::new();
            let d = D.get_or_init(Detectors::new);
            let t = text.as_bytes();
            let mut fast = Vec::new();
            d.scan_numeric(t, &mut fast);
            prop_assert_eq!(resolve(fast), scan_numeric_reference(d, t));
        }
    }

    #[test]
    fn luhn_and_iin() {
        let d = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn_valid(&d("4111111111111111")) && iin_valid(&d("4111111111111111")));
        assert!(luhn_valid(&d("378282246310005")) && iin_valid(&d("378282246310005")));
        assert!(!luhn_valid(&d("4111111111111112")));
        assert!(!iin_valid(&d("9111111111111111")));
        assert!(luhn_valid(&d("5500000000000004")) && iin_valid(&d("5500000000000004")));
    }

    #[test]
    fn mod97() {
        assert!(iban_checksum_valid(b"GB82WEST12345698765432"));
        assert!(iban_checksum_valid(b"DE89370400440532013000"));
        assert!(!iban_checksum_valid(b"GB83WEST12345698765432"));
        assert!(!iban_checksum_valid(b"DE"));
    }

    #[test]
    fn jwt_header() {
        assert!(jwt_header_ok(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!jwt_header_ok(b"eyJmb28iOiJiYXIifQ"));
    }
}
