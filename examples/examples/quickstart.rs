//! The smallest instrumented service: a request fans out to three backends
//! in parallel, one of which fails inside a task spawned for it.
//!
//! ```text
//! AWAITSCOPE_RECORD=quickstart.rec cargo run --example quickstart
//! ```

use std::time::Duration;

use tracing::instrument;

#[instrument]
async fn backend(name: &'static str, delay_ms: u64) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    if name == "reviews" {
        tracing::error!(backend = name, "reviews service refused connection");
        return Err(format!("{name}: connection refused"));
    }
    Ok(delay_ms as u32)
}

#[instrument]
async fn product_page(id: u32) -> u32 {
    let reviews = awaitscope::spawn_named("reviews-fetch", backend("reviews", 15));
    let (inventory, pricing) = tokio::join!(backend("inventory", 10), backend("pricing", 20));
    let reviews = reviews.await.expect("task did not panic");
    inventory.unwrap_or(0) + pricing.unwrap_or(0) + reviews.unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let mut handles = Vec::new();
    for id in 0..20 {
        handles.push(awaitscope::spawn_named("http-request", product_page(id)));
    }
    for h in handles {
        h.await.unwrap();
    }
}
