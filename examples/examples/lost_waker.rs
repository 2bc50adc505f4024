//! Bug: a hand-written future returns `Pending` and drops its waker; its
//! task is never polled again (a `lost_waker` finding). Ends after 2 s.

use std::time::Duration;

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let h = awaitscope_tui::demo::planted_bugs::spawn_lost_waker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("the task is still pending: finished = {}", h.is_finished());
}
