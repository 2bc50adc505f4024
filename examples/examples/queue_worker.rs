//! The worker of the Redis queue example (see `queue_api`): subscribes to
//! the welcome-email jobs and runs each in a task of its own, inside the
//! context the job's `traceparent` carries
//! (`awaitscope::Context::from_traceparent`). The email of user 3 fails on
//! purpose: its error's causal trace names `send_welcome_email` here, then
//! crosses into `queue_api`, to the `handle_signup` request that enqueued
//! the job.
//!
//! Prints `subscribed` once it listens, and ends at the `stop` job.

use futures::StreamExt;
use tracing::{instrument, Instrument};

/// The Redis channel the jobs go through (as in `queue_api`).
const CHANNEL: &str = "awaitscope-example:welcome-emails";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = awaitscope::init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    println!("subscribed to {CHANNEL}");
    let mut jobs = pubsub.on_message();
    let mut done = 0;
    while let Some(msg) = jobs.next().await {
        let job: String = msg.get_payload()?;
        if job == "stop" {
            break;
        }
        let Some((user, traceparent)) = job.split_once(' ') else {
            tracing::warn!(%job, "malformed job");
            continue;
        };
        let Ok(user) = user.parse::<u32>() else {
            tracing::warn!(%job, "malformed job");
            continue;
        };
        // A job with a bad header still runs, as the start of a trace.
        let cx = awaitscope::Context::from_traceparent(traceparent).unwrap_or_default();
        awaitscope::spawn_named("welcome_email_job", run_job(user).instrument(cx.span())).await?;
        done += 1;
    }
    println!("queue_worker: {done} job(s) run");
    Ok(())
}

#[instrument]
async fn run_job(user: u32) {
    if send_welcome_email(user).await.is_err() {
        tracing::warn!(user, "welcome email not sent; will retry tomorrow");
    }
}

/// The planted failure: user 3's locale has no template.
#[instrument]
async fn send_welcome_email(user: u32) -> Result<(), String> {
    let template = load_template(user).await;
    match template {
        Some(_) => Ok(()),
        None => {
            tracing::error!(
                user,
                "welcome email failed: no template for the user's locale"
            );
            Err("no template".into())
        }
    }
}

#[instrument]
async fn load_template(user: u32) -> Option<&'static str> {
    tokio::task::yield_now().await;
    (user != 3).then_some("Welcome!")
}
