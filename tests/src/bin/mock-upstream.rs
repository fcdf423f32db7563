//! The mock LLM upstream (`keygate_e2e::upstream`) as a process, for the end-to-end tests
//! and `make demo`. Prints `mock-upstream listening on ADDR` once bound.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Mock OpenAI/Anthropic/Gemini upstream with deterministic usage")]
struct Args {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, env = "MOCK_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "mock-upstream listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    axum::serve(listener, keygate_e2e::upstream::router())
        .with_graceful_shutdown(shutdown())
        .await
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
