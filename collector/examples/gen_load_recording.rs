//! Writes a synthetic recording of about N events (default 1,000,000), for
//! the report benchmarks of BENCHMARKS.md:
//!
//! ```text
//! cargo run --release -p awaitscope-collector --example gen_load_recording -- OUT [N]
//! ```

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "load.rec".into());
    let n: usize = args
        .next()
        .map(|s| s.parse().expect("N is a number"))
        .unwrap_or(1_000_000);
    let bytes = awaitscope_collector::export::fixture::load_recording(n);
    std::fs::write(&out, &bytes).expect("write the recording");
    println!("{out}: {} bytes", bytes.len());
}
