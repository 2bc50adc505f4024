//! A job queue: requests enqueue jobs with their [`awaitscope::Context`];
//! workers process them inside that context, retry failures, and report
//! the final failure with an error whose causal trace names the request
//! that enqueued the job.

use std::time::Duration;

use awaitscope::{AwaitPoint, Context};
use tokio::sync::mpsc;
use tracing::{instrument, Instrument};

/// A unit of work put on the queue by a request: a worker tries it up to
/// three times.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its number, for the logs and the traces.
    pub id: u32,
    /// Whether every attempt fails.
    pub poison: bool,
}

/// The queue's sending side.
pub type Queue = mpsc::Sender<(Job, Context)>;

/// Starts `workers` worker tasks reading a queue; returns the sender.
pub fn start(workers: usize) -> Queue {
    let (tx, rx) = mpsc::channel::<(Job, Context)>(256);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..workers {
        let rx = rx.clone();
        awaitscope::spawn_named("job-worker", async move {
            loop {
                let next = rx.lock().await.recv().await_point("next job").await;
                let Some((job, cx)) = next else { break };
                run_job(job).instrument(cx.span()).await;
            }
        });
    }
    tx
}

#[instrument(skip_all, fields(job = job.id))]
async fn run_job(job: Job) {
    for attempt in 1..=3u32 {
        match attempt_job(&job, attempt).await {
            Ok(()) => return,
            Err(e) if attempt < 3 => {
                tracing::warn!(job = job.id, attempt, "job failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt)))
                    .await_point("retry backoff")
                    .await;
            }
            Err(e) => {
                tracing::error!(
                    job = job.id,
                    attempts = attempt,
                    "job failed after retries: {e}"
                );
            }
        }
    }
}

#[instrument(skip(job), fields(job = job.id))]
async fn attempt_job(job: &Job, attempt: u32) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(3 + u64::from(job.id % 5)))
        .await_point("render invoice")
        .await;
    if job.poison {
        Err(format!("invoice template missing (attempt {attempt})"))
    } else {
        Ok(())
    }
}

/// An HTTP-like request handler that enqueues a job (the queue hand-off
/// keeps the request's context).
#[instrument(skip(q))]
pub async fn handle_signup(q: &Queue, user: u32) {
    let job = Job {
        id: user,
        poison: user % 9 == 4,
    };
    let _ = q.send((job, Context::current())).await;
}
