//! A job queue: signup requests enqueue jobs with their context; workers
//! retry failures, and a job failing for good logs an error whose causal
//! trace names the signup request that enqueued it.

use std::time::Duration;

use awaitscope_tui::demo::jobs;

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let q = jobs::start(2);
    for user in 0..30 {
        jobs::handle_signup(&q, user).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}
