//! The signup service of the Redis queue example: each signup request (a
//! task `handle_signup`) creates the account, then publishes a
//! welcome-email job on Redis carrying the request's W3C `traceparent`
//! (`awaitscope::Context::current().traceparent()`). `queue_worker`, another
//! process, runs the jobs; one of them fails on purpose, and with both
//! processes under one collector its error's causal trace crosses back
//! into this process, to the request that enqueued it.
//!
//! ```sh
//! redis-server --port 6379 &            # or any Redis
//! cargo run -p awaitscope-tui -- serve & # the collector
//! cargo run --example queue_worker &     # subscribes to the jobs
//! cargo run --example queue_api          # enqueues them
//! ```
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379/`) names the broker,
//! `QUEUE_SIGNUPS` (default 5) how many signups to make. The jobs go
//! through a Redis channel (`PUBLISH`/`SUBSCRIBE`, which tokio's mini-redis
//! also speaks); a job no worker received is published again, so none is
//! lost while the worker starts.

use std::time::Duration;

use redis::AsyncCommands;
use tracing::instrument;

/// The Redis channel the jobs go through.
const CHANNEL: &str = "awaitscope-example:welcome-emails";

/// How long a job is offered to a channel with no worker on it.
const DELIVERY_TRIES: u32 = 400;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _guard = awaitscope::init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let signups: u32 = std::env::var("QUEUE_SIGNUPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    for user in 1..=signups {
        awaitscope::spawn_named("handle_signup", handle_signup(conn.clone(), user)).await??;
    }
    // Tells the worker there is no more work.
    publish(&mut conn.clone(), "stop").await?;
    println!("queue_api: {signups} signup(s) handled");
    Ok(())
}

/// A signup request: the account, then the welcome email, later, elsewhere.
#[instrument(skip(conn))]
async fn handle_signup(
    conn: redis::aio::MultiplexedConnection,
    user: u32,
) -> redis::RedisResult<()> {
    create_account(user).await;
    enqueue_welcome_email(conn, user).await
}

#[instrument]
async fn create_account(user: u32) {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

/// Publishes the job `"<user> <traceparent>"`.
#[instrument(skip(conn))]
async fn enqueue_welcome_email(
    mut conn: redis::aio::MultiplexedConnection,
    user: u32,
) -> redis::RedisResult<()> {
    let traceparent = awaitscope::Context::current().traceparent();
    println!("queue_api: user {user}: welcome email enqueued with traceparent {traceparent}");
    publish(&mut conn, &format!("{user} {traceparent}")).await
}

/// Publishes `message`, again until a worker received it (a channel keeps
/// nothing for subscribers to come).
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    message: &str,
) -> redis::RedisResult<()> {
    for _ in 0..DELIVERY_TRIES {
        let received: i64 = conn.publish(CHANNEL, message).await?;
        if received > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "no worker subscribed to the job channel",
    )))
}
