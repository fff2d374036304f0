//! The WAF: inspects every text a model will read (and, for redaction, every text it wrote)
//! and decides per tenant policy: block (403), redact (typed placeholders) or log. Injection
//! rules run on the normalized text (`normalize.rs`), sensitive-data detectors on the text as
//! sent (`detectors.rs`), so redactions replace exactly the characters the client wrote.
//! Everything is linear time, bounded by a per-request byte budget, and fails closed unless the
//! tenant chose fail-open. The matched text itself is never kept: only rule ids, actions,
//! counts and locations, which go into the audit record.

pub mod detectors;
pub mod extract;
pub mod normalize;
pub mod rules;
pub mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::Value;

use self::detectors::{DetectorKind, Detectors, Finding};
use self::normalize::{NormalizeLimits, normalize};
use self::rules::{Action, RuleSet};
use crate::config::{FailureMode, WafConfig, WafMode, WafTenantConfig};
use crate::upstream::Api;

/// The WAF shared by all requests: the current rule set (swapped on reload) and the detectors.
#[derive(Debug)]
pub struct Waf {
    rules: RwLock<Arc<RuleSet>>,
    detectors: Detectors,
    normalize_limits: NormalizeLimits,
    /// The rule file watched for changes; `None` for the built-in rules.
    rules_file: Option<PathBuf>,
}

/// One tenant's WAF policy, resolved from its configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: WafMode,
    pub on_error: FailureMode,
    /// Text bytes inspected per request at most; more is an error (fail closed by default).
    pub inspect_bytes_max: usize,
    /// Actions overriding the rule file's, by rule id or category.
    pub actions: HashMap<String, Action>,
}

/// One rule that matched, as the audit record states it.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub rule_id: String,
    pub category: String,
    pub action: Action,
    pub count: u32,
    pub location: String,
}

/// What the request may do.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Allow,
    /// Refused because of this rule.
    Block {
        rule_id: String,
    },
    /// Go on with this body instead (sensitive data replaced by placeholders).
    Redacted(Bytes),
}

/// The outcome of inspecting one body.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    pub hits: Vec<Hit>,
    pub verdict: Verdict,
    /// True in shadow mode: the hits are recorded, the verdict is always `Allow`.
    pub shadow: bool,
}

/// Why a body could not be inspected. The tenant's `on_error` decides what happens.
#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("the request carries {bytes} bytes of text, more than the WAF inspects ({bytes_max})")]
    Budget { bytes: usize, bytes_max: usize },
    #[error("the body is not JSON the WAF can read: {0}")]
    Body(String),
}

impl Waf {
    /// Loads the configured rule file, or the built-in rules.
    pub fn new(config: &WafConfig) -> Result<Self, anyhow::Error> {
        let rules = match &config.rules_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    anyhow::anyhow!("cannot read the WAF rule file {}: {error}", path.display())
                })?;
                RuleSet::from_toml(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?
            }
            None => RuleSet::builtin(),
        };
        tracing::info!(version = %rules.version, "WAF rules loaded");
        Ok(Self {
            rules: RwLock::new(Arc::new(rules)),
            detectors: Detectors::new(),
            normalize_limits: NormalizeLimits {
                decoded_bytes_max: config.decoded_bytes_max,
                decode_depth_max: config.decode_depth_max,
                output_bytes_max: config.normalized_bytes_max,
            },
            rules_file: config.rules_file.clone(),
        })
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().clone()
    }

    /// Inspects a request body and decides.
    pub fn inspect_request(&self, api: Api, body: &[u8], policy: &Policy) -> Result<Inspection, WafError> {
        self.inspect(api, body, policy, Side::Request)
    }

    /// Inspects a non-streamed response body: only redactions apply (the response exists
    /// already); other matches are recorded.
    pub fn inspect_response(&self, api: Api, body: &[u8], policy: &Policy) -> Result<Inspection, WafError> {
        self.inspect(api, body, policy, Side::Response)
    }

    /// The findings in `text` that `policy` redacts in a response (redact, or block, which on a
    /// response means redact), sorted by position.
    pub fn redactable_findings(&self, text: &str, policy: &Policy) -> Vec<Finding> {
        if policy.mode != WafMode::Enforce {
            return Vec::new();
        }
        let rules = self.rules();
        self.scan_for_policy(&rules, text, policy)
            .into_iter()
            .filter(|finding| {
                let rule_id = detector_rule_id(finding.kind);
                rules.detectors.get(rule_id).is_some_and(|rule| {
                    policy.action_for(rule_id, &rule.category, rule.default_action) != Action::Log
                })
            })
            .collect()
    }

    /// The findings in `text` under `policy`: overlaps are resolved among the kinds the policy
    /// acts on (block or redact) first, so a kind it only logs cannot hide one it acts on; the
    /// logged kinds' findings follow. One scan when nothing logged is found.
    fn scan_for_policy(&self, rules: &RuleSet, text: &str, policy: &Policy) -> Vec<Finding> {
        let acts = |kind: DetectorKind| {
            let rule_id = detector_rule_id(kind);
            rules.detectors.get(rule_id).is_some_and(|rule| {
                policy.action_for(rule_id, &rule.category, rule.default_action) != Action::Log
            })
        };
        let all = self.detectors.scan(text);
        if all.iter().all(|finding| acts(finding.kind)) {
            return all;
        }
        let mut findings = self.detectors.scan_where(text, acts);
        findings.extend(all.into_iter().filter(|finding| !acts(finding.kind)));
        findings
    }

    /// Whether `policy` redacts anything in responses, so streams need the redactor.
    pub fn redacts_responses(&self, policy: &Policy) -> bool {
        policy.mode == WafMode::Enforce
            && self
                .rules()
                .detectors
                .values()
                .any(|rule| policy.action_for(&rule.id, &rule.category, rule.default_action) != Action::Log)
    }

    /// Redacts sensitive data in one text (a streamed window) under `policy`; returns the text
    /// to send and the hits.
    pub fn redact_text(&self, text: &str, policy: &Policy, location: &str) -> (String, Vec<Hit>) {
        let rules = self.rules();
        let findings = self.detectors.scan(text);
        let mut hits = Vec::new();
        let mut redact = Vec::new();
        for (rule_id, group) in group_findings(&findings) {
            let Some(rule) = rules.detectors.get(rule_id) else { continue };
            let action = policy.action_for(rule_id, &rule.category, rule.default_action);
            if action == Action::Redact && policy.mode == WafMode::Enforce {
                redact.extend(group.iter().map(|finding| **finding));
            }
            hits.push(Hit {
                rule_id: rule_id.to_owned(),
                category: rule.category.clone(),
                action: if action == Action::Redact { Action::Redact } else { Action::Log },
                count: u32::try_from(group.len()).unwrap_or(u32::MAX),
                location: location.to_owned(),
            });
        }
        redact.sort_by_key(|finding| finding.start);
        let text = if redact.is_empty() { text.to_owned() } else { Detectors::redact(text, &redact) };
        (text, hits)
    }

    fn inspect(&self, api: Api, body: &[u8], policy: &Policy, side: Side) -> Result<Inspection, WafError> {
        let shadow = policy.mode == WafMode::Shadow;
        if policy.mode == WafMode::Off {
            return Ok(Inspection { hits: Vec::new(), verdict: Verdict::Allow, shadow });
        }
        let mut document: Value =
            serde_json::from_slice(body).map_err(|error| WafError::Body(error.to_string()))?;
        let rules = self.rules();
        let texts = match side {
            Side::Request => extract::request_texts(api, &document),
            Side::Response => extract::response_texts(api, &document),
        };
        let bytes: usize = texts.iter().map(|text| text.text.len()).sum();
        // A response already exists (bounded by the upstream's response_bytes_max): it is
        // always inspected for redaction, whatever its size.
        if side == Side::Request && bytes > policy.inspect_bytes_max {
            return Err(WafError::Budget { bytes, bytes_max: policy.inspect_bytes_max });
        }
        let mut hits = Vec::new();
        let mut injection_counts = vec![0u32; rules.injection.len()];
        let mut injection_locations: Vec<Option<String>> = vec![None; rules.injection.len()];
        let mut redactions: Vec<(String, Vec<Finding>)> = Vec::new();
        let side_name = side.name();
        for text in &texts {
            // Injection rules: on the leetspeak view of the normalized text. Phrases hold no
            // leet characters (the rule file is checked for that), and folding leet characters
            // leaves every other character in place, so the leet view contains every phrase the
            // plain view does, and those spelled in leetspeak too: one scan instead of two.
            // Injection rules only matter for what a model is asked to read and follow: not for
            // responses, nor for embedding inputs (which are only encoded).
            if side == Side::Request && api != Api::Embeddings {
                let normalized = normalize(text.text, &self.normalize_limits);
                if normalized.truncated {
                    // Part of the text was not normalized (it expanded past the normalization or
                    // decoding budget): an attack could hide there, so this is an inspection failure.
                    return Err(WafError::Budget { bytes, bytes_max: policy.inspect_bytes_max });
                }
                let mut counts = vec![0u32; rules.injection.len()];
                rules.count_injection(&normalized.leet, &mut counts);
                for (index, count) in counts.iter().enumerate() {
                    if *count > 0 {
                        injection_counts[index] = injection_counts[index].saturating_add(*count);
                        injection_locations[index]
                            .get_or_insert_with(|| extract::location(side_name, &text.pointer));
                    }
                }
            }
            // Sensitive data: on the text as sent, with spans for redaction.
            let findings = self.scan_for_policy(&rules, text.text, policy);
            let mut redact = Vec::new();
            for (rule_id, group) in group_findings(&findings) {
                let Some(rule) = rules.detectors.get(rule_id) else { continue };
                let mut action = policy.action_for(rule_id, &rule.category, rule.default_action);
                if side == Side::Response && action == Action::Block {
                    // A response cannot be un-sent; what would block a request is redacted.
                    action = Action::Redact;
                }
                if action == Action::Redact {
                    redact.extend(group.iter().map(|finding| **finding));
                }
                hits.push(Hit {
                    rule_id: rule_id.to_owned(),
                    category: rule.category.clone(),
                    action,
                    count: u32::try_from(group.len()).unwrap_or(u32::MAX),
                    location: extract::location(side_name, &text.pointer),
                });
            }
            if !redact.is_empty() {
                redact.sort_by_key(|finding| finding.start);
                redactions.push((text.pointer.clone(), redact));
            }
        }
        let score: f64 = rules
            .injection
            .iter()
            .zip(&injection_counts)
            .filter(|(_, count)| **count > 0)
            .map(|(rule, _)| rule.weight)
            .sum();
        for (index, rule) in rules.injection.iter().enumerate() {
            if injection_counts[index] == 0 {
                continue;
            }
            let default =
                if score >= rules.threshold && side == Side::Request { Action::Block } else { Action::Log };
            let action = match policy.action_for(&rule.id, &rule.category, default) {
                // Below the threshold a rule only ever logs: the score decides, not one phrase.
                Action::Block if score < rules.threshold => Action::Log,
                Action::Redact => Action::Log,
                action => action,
            };
            hits.push(Hit {
                rule_id: rule.id.clone(),
                category: rule.category.clone(),
                action,
                count: injection_counts[index],
                location: injection_locations[index].take().unwrap_or_default(),
            });
        }
        if shadow {
            return Ok(Inspection { hits, verdict: Verdict::Allow, shadow });
        }
        if let Some(blocking) = hits.iter().find(|hit| hit.action == Action::Block) {
            let verdict = Verdict::Block { rule_id: blocking.rule_id.clone() };
            return Ok(Inspection { hits, verdict, shadow });
        }
        if redactions.is_empty() {
            return Ok(Inspection { hits, verdict: Verdict::Allow, shadow });
        }
        drop(texts);
        for (pointer, findings) in redactions {
            if let Some(Value::String(text)) = document.pointer_mut(&pointer) {
                *text = Detectors::redact(text, &findings);
            }
        }
        let body = serde_json::to_vec(&document).map_err(|error| WafError::Body(error.to_string()))?;
        Ok(Inspection { hits, verdict: Verdict::Redacted(Bytes::from(body)), shadow })
    }

    /// Reloads the rule file whenever its modification time changes, every `interval`, until
    /// the process ends. A file that fails to load is logged and the previous rules stay.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let Some(path) = self.rules_file.clone() else { return };
        let waf = Arc::downgrade(self);
        tokio::spawn(async move {
            let modified =
                |path: &PathBuf| std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
            let mut seen: Option<SystemTime> = modified(&path);
            let mut failed: Option<SystemTime> = None;
            loop {
                tokio::time::sleep(interval).await;
                let Some(waf) = waf.upgrade() else { return };
                let path_for_read = path.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let now = modified(&path_for_read);
                    let text = std::fs::read_to_string(&path_for_read);
                    (now, text)
                })
                .await;
                let Ok((now, text)) = loaded else { continue };
                if now == seen {
                    continue;
                }
                // `seen` moves only when a file loads: a file caught half-written is read again
                // on the next tick even if its modification time does not change any more.
                match text
                    .map_err(|error| error.to_string())
                    .and_then(|text| RuleSet::from_toml(&text).map_err(|error| error.to_string()))
                {
                    Ok(rules) => {
                        tracing::info!(version = %rules.version, path = %path.display(), "WAF rules reloaded");
                        *waf.rules.write() = Arc::new(rules);
                        seen = now;
                        failed = None;
                    }
                    Err(error) => {
                        if failed != now {
                            tracing::error!(
                                path = %path.display(),
                                %error,
                                "the changed WAF rule file is invalid; the previous rules stay in force"
                            );
                            failed = now;
                        }
                    }
                }
            }
        });
    }
}

impl Policy {
    pub fn new(config: &WafTenantConfig, inspect_bytes_max: usize) -> Self {
        Self {
            mode: config.mode,
            on_error: config.on_error,
            inspect_bytes_max,
            actions: config.actions.clone(),
        }
    }

    /// The action for a rule: the tenant's override by rule id, else by category, else the
    /// rule's default.
    pub fn action_for(&self, rule_id: &str, category: &str, default: Action) -> Action {
        self.actions.get(rule_id).or_else(|| self.actions.get(category)).copied().unwrap_or(default)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
        }
    }
}

/// The rule id of a detector finding.
pub fn detector_rule_id(kind: DetectorKind) -> &'static str {
    match kind {
        DetectorKind::Email => "pii.email",
        DetectorKind::Phone => "pii.phone",
        DetectorKind::Iban => "pii.iban",
        DetectorKind::UsSsn => "pii.us_ssn",
        DetectorKind::IpV4 | DetectorKind::IpV6 => "pii.ip_address",
        DetectorKind::CardNumber => "pci.card",
        DetectorKind::ApiKey => "secret.api_key",
    }
}

/// Findings grouped by rule id, in first-seen order.
fn group_findings(findings: &[Finding]) -> Vec<(&'static str, Vec<&Finding>)> {
    let mut groups: Vec<(&'static str, Vec<&Finding>)> = Vec::new();
    for finding in findings {
        let rule_id = detector_rule_id(finding.kind);
        match groups.iter_mut().find(|(id, _)| *id == rule_id) {
            Some((_, group)) => group.push(finding),
            None => groups.push((rule_id, vec![finding])),
        }
    }
    groups
}
