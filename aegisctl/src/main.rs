//! `aegisctl`, the command-line tool: parses the command line, runs it (see the library) and
//! maps the outcome to output and an exit status.

use std::process::ExitCode;

use aegisctl::cli::Cli;
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aegisctl: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(aegisctl::run(cli)) {
        Ok(report) => {
            report.print(json);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            failure.print(json);
            ExitCode::from(failure.exit_code())
        }
    }
}
