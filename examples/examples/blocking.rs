//! Bug: async code calls a plain function that blocks (a password hash;
//! `std::thread::sleep` stands in for the CPU work) and holds its worker
//! thread for 300 ms: a `long_poll` finding whose trace names
//! `hash_password` and the line that blocked, then the async functions
//! that called it, innermost first.
//!
//! ```text
//! cargo run -p awaitscope-tui -- record -- cargo run -p awaitscope-examples --example blocking
//! ```

use std::time::Duration;

use tracing::instrument;

/// Stands in for a slow synchronous password hash (bcrypt, argon2): it
/// blocks whichever thread runs it. Not inlined, so that a release build's
/// native stack still names it.
#[inline(never)]
fn hash_password(password: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    password.bytes().map(u64::from).sum()
}

/// Charges the card: talks to the gateway, then hashes on the worker
/// thread (the bug: it should be `tokio::task::spawn_blocking`).
#[instrument]
async fn charge_card(order: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    hash_password("hunter2") + u64::from(order)
}

/// A checkout: charges the card, then sends the receipt.
#[instrument]
async fn checkout(order: u32) -> u64 {
    let receipt = charge_card(order).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    receipt
}

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let h = awaitscope::spawn_named("checkout", checkout(1));
    let _ = h.await;
}
