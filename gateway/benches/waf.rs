//! The WAF's cost per prompt, all rules on (built-in rule set, enforce mode): the whole
//! inspection of a chat request (JSON parse, text extraction, normalization, injection matching
//! on two views, sensitive-data detectors) for prompts of 1, 4 and 32 KiB of ordinary text with
//! a few findings, plus adversarial 32 KiB inputs that must stay linear. The baseline is the
//! naive approach: one `str::contains` per phrase over the lowercased text.
//!
//! Run: `cargo bench -p gateway --bench waf`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::config::{WafConfig, WafTenantConfig};
use gateway::upstream::Api;
use gateway::waf::rules::RuleSet;
use gateway::waf::{Policy, Waf};

/// About 1 KiB of ordinary prompt text with an e-mail address in it.
const PARAGRAPH: &str = "Our quarterly review covers revenue, churn and the hiring plan for the platform team. \
Please summarise the main risks for the board, compare them with last quarter, and suggest three \
concrete actions with owners and dates. The finance lead (reach her at jane.doe@example.com) asked \
for numbers in EUR, rounded to thousands, and for a short note on the cloud bill, which grew 12% \
while traffic grew 9%. Keep the tone neutral, avoid jargon, and flag anything that needs a decision \
before the next planning cycle. Where data is missing, say so instead of guessing, and list the \
questions we should ask the regional managers. Finally, propose a one-paragraph summary we can send \
to all staff without confidential details, in plain language suitable for a newsletter update. ";

fn prompt(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + PARAGRAPH.len());
    while text.len() < bytes {
        text.push_str(PARAGRAPH);
    }
    text.truncate(bytes);
    text
}

fn chat(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .expect("json")
}

fn waf(criterion: &mut Criterion) {
    let waf = Waf::new(&WafConfig::default()).expect("built-in rules");
    let policy = Policy::new(&WafTenantConfig::default(), 1 << 20);
    let phrases: Vec<String> =
        RuleSet::builtin().injection.iter().flat_map(|rule| rule.phrases.clone()).collect();
    let mut group = criterion.benchmark_group("waf");
    for kib in [1usize, 4, 32] {
        let text = prompt(kib * 1024);
        let body = chat(&text);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("inspect", format!("{kib}KiB")), &body, |bench, body| {
            bench.iter(|| {
                waf.inspect_request(Api::ChatCompletions, black_box(body), &policy).expect("inspects")
            });
        });
        group.bench_with_input(
            BenchmarkId::new("naive_contains", format!("{kib}KiB")),
            &text,
            |bench, text| {
                bench.iter(|| {
                    let lower = black_box(text).to_lowercase();
                    phrases.iter().filter(|phrase| lower.contains(phrase.as_str())).count()
                });
            },
        );
    }
    // Adversarial shapes: must cost about what ordinary text of the same size costs.
    let adversarial = [
        ("spaced_letters", "a b c d e f g h ".repeat(2048)),
        ("base64_like", "QUJDREVGR0hJSktMTU5PUA== ".repeat(1311)),
        ("percent_signs", "%41%42%4".repeat(3641)),
        ("zero_width", "a\u{200B}".repeat(8192)),
        ("digits", "4111 1111 1111 111 ".repeat(1724)),
    ];
    for (name, text) in adversarial {
        let body = chat(&text);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("adversarial", name), &body, |bench, body| {
            bench.iter(|| {
                waf.inspect_request(Api::ChatCompletions, black_box(body), &policy).expect("inspects")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, waf);
criterion_main!(benches);
