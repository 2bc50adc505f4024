//! A storefront over real loopback HTTP: product pages fan out to the
//! inventory, pricing and reviews backends in parallel; checkouts are a
//! waterfall. Stops after `--requests N` (default 200).
//!
//! ```text
//! awaitscope &            # the UI, listening on 127.0.0.1:6670
//! cargo run --example storefront -- --requests 500
//! ```

use std::time::Duration;

use awaitscope_tui::demo::shop;

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let n = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let addr = shop::serve().await.expect("bind the storefront");
    println!("storefront on http://{addr}, sending {n} requests");
    shop::load(addr, Some(n), Duration::from_millis(10)).await;
    println!(
        "{}",
        shop::request(addr, "GET", "/product/7".into())
            .await
            .unwrap_or_default()
    );
}
