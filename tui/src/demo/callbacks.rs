//! A callback API (as offered by C libraries or older SDKs) bridged into
//! async code with a oneshot channel.

use std::time::Duration;

use awaitscope::AwaitPoint;
use tokio::sync::oneshot;
use tracing::instrument;

/// The callback-style API: runs on its own thread, then calls `done`.
pub fn legacy_lookup(key: u32, done: Box<dyn FnOnce(Result<String, String>) + Send>) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2 + u64::from(key % 7)));
        if key % 11 == 5 {
            done(Err(format!("key {key}: not found")));
        } else {
            done(Ok(format!("value-{key}")));
        }
    });
}

/// The async bridge: the callback completes a oneshot the task awaits.
#[instrument]
pub async fn lookup(key: u32) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    legacy_lookup(
        key,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await_point("legacy callback")
        .await
        .map_err(|_| "callback dropped".to_string())?
}
