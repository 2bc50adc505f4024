//! A live collector loads a program's debug info on the connection that
//! brings the first native stack needing it, before the model gets the
//! stack: the model symbolises stacks holding its lock, which viewers'
//! snapshots and every producer's frames wait for, and loading a large
//! program's debug info there held them all. Its own test binary: the
//! symboliser and its counts are the process's.

mod live;

use std::time::Duration;

use awaitscope_collector::symbolize::{loads, Loads};
use awaitscope_collector::testing::{this_executable, StreamBuilder, TaskOpts};
use awaitscope_collector::FindingKind;
use awaitscope_wire::CloseKind;
use live::{start, wait_until};
use tokio::io::AsyncWriteExt;

const MS: u64 = 1_000_000;

#[inline(never)]
fn blocked_in_this_fn() -> usize {
    blocked_in_this_fn as *const () as usize
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_symbolises_a_native_stack_without_loading_debug_info() {
    let (exe, base) = this_executable();
    let address = blocked_in_this_fn() as u64 - base;
    let mut b = StreamBuilder::new(4244, 1_000);
    b.hello("app", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("checkout"), None, 0);
    b.stalled_poll(t, [MS, 12 * MS, 40 * MS], &exe, address);
    b.finish_task(t, CloseKind::Completed, 50 * MS);
    b.flush();

    let srv = start(live::test_config(Duration::from_secs(5))).await;
    let h = srv.handle.clone();
    assert_eq!(loads(), Loads::default());
    let mut conn = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(&b.recording()).await.unwrap();
    let long_poll = || {
        h.report()
            .findings
            .into_iter()
            .find(|f| f.kind == FindingKind::LongPoll)
    };
    wait_until("the long poll found", || long_poll().is_some()).await;
    let f = long_poll().unwrap();
    assert!(
        f.trace.iter().any(|l| l.contains("blocked_in_this_fn")),
        "{:?}",
        f.trace
    );
    assert_eq!(
        loads(),
        Loads {
            ahead: 1,
            in_place: 0
        },
        "loaded on the connection, not under the model's lock"
    );
    drop(conn);
    srv.stop().await;
}
