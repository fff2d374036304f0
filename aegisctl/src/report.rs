//! What a command prints: text for people, or one JSON object for scripts.

use serde_json::Value;

/// A command's result, in both forms.
pub struct Report {
    pub text: String,
    pub json: Value,
}

impl Report {
    pub fn new(text: impl Into<String>, json: Value) -> Self {
        Self { text: text.into(), json }
    }

    #[allow(clippy::print_stdout, reason = "the CLI's output")]
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json);
        } else {
            print!("{}", self.text);
            if !self.text.ends_with('\n') {
                println!();
            }
        }
    }
}
