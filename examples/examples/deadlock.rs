//! Bug: two tasks take two mutexes in opposite order (a `deadlock`
//! finding with the cycle). Ends after 2 s.

use std::time::Duration;

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let (a, b) = awaitscope_tui::demo::planted_bugs::spawn_deadlock().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("deadlocked: {} {}", !a.is_finished(), !b.is_finished());
}
