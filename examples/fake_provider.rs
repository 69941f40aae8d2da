// A fake Anthropic / OpenAI-compatible provider for trying tollgate locally.
//
//   cargo run --example fake_provider -- --port 9999 [--scenario text]
//
// then point tollgate at it:
//
//   TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL=http://127.0.0.1:9999 TOLLGATE_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:9999/v1 tollgate proxy
//
// Pick the behaviour per request with the `x-fake-scenario` header (text,
// tool_use, thinking, openrouter, error-400/401/429/500/529, midstream-error,
// slow, cut, big, hang) and set usage with `x-fake-usage: input=100,output=20`.
// `GET /_fake/requests` lists what arrived; `POST /_fake/clear` forgets it.

//! Runs the in-repo fake LLM provider (see `tests/support/fake_provider.rs`).

#[path = "../tests/support/fake_provider.rs"]
mod fake_provider;

use std::io::Write;

use clap::Parser;
use fake_provider::{FakeProvider, SCENARIOS};

/// Fake Anthropic / OpenAI-compatible LLM provider for local testing.
#[derive(Debug, Parser)]
#[command(name = "fake_provider")]
struct Args {
    /// Port to listen on (127.0.0.1); 0 picks an ephemeral port.
    #[arg(long, default_value_t = 9999)]
    port: u16,
    /// Scenario for requests without an `x-fake-scenario` header.
    #[arg(long, value_parser = parse_scenario)]
    scenario: Option<String>,
}

fn parse_scenario(name: &str) -> Result<String, String> {
    if fake_provider::is_known_scenario(name) {
        Ok(name.to_owned())
    } else {
        Err(format!("unknown scenario; known: {}", SCENARIOS.join(", ")))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let fake = FakeProvider::start_on(listener, args.scenario).await;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "fake provider listening on {}", fake.base_url())?;
    stdout.flush()?;
    drop(stdout);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
