//! Bug: `std::thread::sleep` inside async code blocks the worker thread
//! (a `long_poll` finding).

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let h = awaitscope::spawn_named(
        "report-export",
        awaitscope_tui::demo::planted_bugs::blocking_in_async(200),
    );
    let _ = h.await;
}
