//! Bug: an error three spawns deep; its causal trace leads back through
//! every spawning task to the request span.

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let r = awaitscope_tui::demo::planted_bugs::error_three_spawns_deep(42).await;
    println!("{r:?}");
}
