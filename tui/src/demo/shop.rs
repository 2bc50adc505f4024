//! A storefront: a real HTTP/1.1 server on loopback with in-process
//! inventory, pricing and reviews backends (each behind a connection-pool
//! semaphore). `GET /product/ID` fans out to the three backends in
//! parallel; `POST /checkout/ID` is a waterfall (reserve, price, charge,
//! confirm).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use awaitscope::AwaitPoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::instrument;

/// The backends, each with a small connection pool.
#[derive(Clone, Debug)]
pub struct Backends {
    inventory: Arc<Semaphore>,
    pricing: Arc<Semaphore>,
    reviews: Arc<Semaphore>,
}

impl Default for Backends {
    fn default() -> Self {
        Self::new()
    }
}

impl Backends {
    /// Pools of 4 connections each.
    pub fn new() -> Self {
        Self {
            inventory: Arc::new(Semaphore::new(4)),
            pricing: Arc::new(Semaphore::new(4)),
            reviews: Arc::new(Semaphore::new(2)),
        }
    }
}

/// Simulated latency of a backend call, from the id (deterministic).
fn latency(id: u32, base: u64) -> Duration {
    Duration::from_millis(base + u64::from(id * 7 % 13))
}

#[instrument(skip(b))]
async fn inventory(b: &Backends, sku: u32) -> u32 {
    let _conn = b.inventory.acquire().await.expect("pool open");
    tokio::time::sleep(latency(sku, 4)).await;
    sku % 17
}

#[instrument(skip(b))]
async fn pricing(b: &Backends, sku: u32) -> u32 {
    let _conn = b.pricing.acquire().await.expect("pool open");
    tokio::time::sleep(latency(sku, 6)).await;
    100 + sku % 50
}

#[instrument(skip(b))]
async fn reviews(b: &Backends, sku: u32) -> Result<u32, String> {
    let _conn = b.reviews.acquire().await.expect("pool open");
    tokio::time::sleep(latency(sku, 8)).await;
    if sku % 10 == 7 {
        tracing::warn!(sku, "reviews backend slow; serving cached reviews");
    }
    Ok(sku % 5)
}

/// `GET /product/ID`: parallel fan-out to the three backends, reviews in a
/// task of its own.
#[instrument(skip(b))]
pub async fn product_page(b: Backends, sku: u32) -> String {
    let b2 = b.clone();
    let rev = awaitscope::spawn_named("reviews-fetch", async move { reviews(&b2, sku).await });
    let (stock, price) = tokio::join!(inventory(&b, sku), pricing(&b, sku));
    let rev = rev
        .await_point("join reviews")
        .await
        .ok()
        .and_then(Result::ok);
    format!(
        "{{\"sku\":{sku},\"stock\":{stock},\"price\":{price},\"stars\":{}}}",
        rev.unwrap_or(0)
    )
}

/// `POST /checkout/ID`: a waterfall of dependent steps.
#[instrument(skip(b))]
pub async fn checkout(b: Backends, order: u32) -> String {
    let stock = inventory(&b, order).await_point("reserve stock").await;
    let price = pricing(&b, order).await_point("price order").await;
    tokio::time::sleep(Duration::from_millis(5))
        .await_point("charge card")
        .await;
    tokio::time::sleep(Duration::from_millis(2))
        .await_point("confirm order")
        .await;
    format!("{{\"order\":{order},\"stock\":{stock},\"total\":{price}}}")
}

#[instrument(skip(stream, b), fields(peer = %peer))]
async fn connection(stream: TcpStream, peer: SocketAddr, b: Backends) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Headers up to the blank line.
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len.min(1 << 16)];
    reader.read_exact(&mut body).await?;
    let id = |p: &str| p.rsplit('/').next().and_then(|s| s.parse().ok());
    let (status, body) = match (method, path) {
        ("GET", p) if p.starts_with("/product/") => match id(p) {
            Some(sku) => ("200 OK", product_page(b, sku).await),
            None => ("400 Bad Request", "bad sku".into()),
        },
        ("POST", p) if p.starts_with("/checkout/") => match id(p) {
            Some(order) => ("200 OK", checkout(b, order).await),
            None => ("400 Bad Request", "bad order".into()),
        },
        _ => ("404 Not Found", "not found".into()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = reader.into_inner();
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the storefront on `127.0.0.1:0` and serves in a task named
/// `http-server`; returns its address.
pub async fn serve() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let b = Backends::new();
    awaitscope::spawn_named("http-server", async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let b = b.clone();
            awaitscope::spawn_named("http-conn", async move {
                let _ = connection(stream, peer, b).await;
            });
        }
    });
    Ok(addr)
}

/// Sends one request to the storefront and returns the response body.
#[instrument]
pub async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: String,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: shop\r\ncontent-length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// A load generator: `n` requests (`None`: forever), one every `every`,
/// mixing product pages and checkouts, each in its own `client` task.
pub async fn load(addr: SocketAddr, n: Option<u32>, every: Duration) {
    let mut i = 0u32;
    let mut tick = tokio::time::interval(every);
    let mut inflight = Vec::new();
    while n.is_none_or(|n| i < n) {
        tick.tick().await;
        let (method, path) = if i % 4 == 3 {
            ("POST", format!("/checkout/{i}"))
        } else {
            ("GET", format!("/product/{}", i % 40))
        };
        inflight.push(awaitscope::spawn_named(
            "client",
            request(addr, method, path),
        ));
        inflight.retain(|h| !h.is_finished());
        i += 1;
    }
    for h in inflight {
        let _ = h.await;
    }
}
