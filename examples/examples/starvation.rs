//! Bug: CPU-bound tasks on a one-thread runtime keep a ticker from being
//! polled (`starvation` and `long_poll` findings).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _guard = awaitscope::init();
    awaitscope_tui::demo::planted_bugs::starvation(5).await;
}
