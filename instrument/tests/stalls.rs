//! Stalls: a poll running past the stall threshold is sampled while it
//! runs (the spans it is in, its worker's native stack, the worker's
//! scheduler statistics) and sent as `Stall` events. Real programs, each
//! bounded by a timeout; the signal that samples a worker must not break
//! what the worker was doing.

mod support;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use awaitscope::MemoryRecording;
use awaitscope_wire::{FrameOrigin, StackState, Stall};
use support::{run, Captured, Flavor};

/// Runs `program` on a multi-thread runtime (`workers` workers) under
/// awaitscope with `builder`'s settings, failing the test if it does not
/// finish within a minute. Returns the program's output and the capture.
fn capture_bounded<T: Send + 'static>(
    workers: usize,
    builder: impl FnOnce(awaitscope::Builder) -> awaitscope::Builder + Send + 'static,
    program: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> (T, Captured) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let memory = MemoryRecording::new();
        let b = builder(awaitscope::Builder::new().record_in_memory(&memory));
        let out = if workers == 1 {
            run(Flavor::CurrentThread, b, |_| program())
        } else {
            run(Flavor::MultiThread, b, |_| program())
        };
        let captured = Captured::from_frames(memory.frames().expect("recording decodes"));
        let _ = tx.send((out, captured));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the program finished within a minute")
}

/// The stall sent at the crossing of the (only) long poll of task `task`.
fn crossing<'a>(c: &'a Captured, task: &str) -> &'a Stall {
    let id = c.task(task).id;
    let found: Vec<_> = c
        .stalls
        .iter()
        .filter(|s| s.task == id && !s.ended)
        .collect();
    assert_eq!(found.len(), 1, "one crossing of {task}: {:?}", c.stalls);
    found[0]
}

/// The stall sent after the long poll of task `task` ended.
fn ended<'a>(c: &'a Captured, task: &str) -> &'a Stall {
    let id = c.task(task).id;
    c.stalls
        .iter()
        .find(|s| s.task == id && s.ended)
        .unwrap_or_else(|| panic!("an ended stall of {task}: {:?}", c.stalls))
}

#[tracing::instrument]
async fn checkout() {
    charge_card().await;
}

#[tracing::instrument]
async fn charge_card() {
    let hash = hash_password();
    tokio::task::yield_now().await;
    assert_eq!(hash, 7);
}

/// A plain function that blocks: nothing but the native stack names it.
/// (It does something after the sleep, as real code would: a function
/// whose last act is a call may leave no frame of its own in an optimised
/// build, the call being a jump.)
#[inline(never)]
fn hash_password() -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    std::hint::black_box(7)
}

#[test]
fn blocking_in_a_plain_fn_names_it_and_the_spans() {
    let ((), c) = capture_bounded(
        2,
        |b| b,
        || {
            Box::pin(async {
                awaitscope::spawn_named("checkout", checkout())
                    .await
                    .unwrap();
            })
        },
    );
    let st = crossing(&c, "checkout");
    assert_eq!(
        st.spans,
        vec![c.span("charge_card").id, c.span("checkout").id],
        "async stack, innermost first"
    );
    if !cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        assert_eq!(st.stack, StackState::Unsupported);
        return;
    }
    assert_eq!(st.stack, StackState::Sampled, "{st:?}");
    if std::env::var_os("AWAITSCOPE_TEST_PRINT_STACK").is_some() {
        for f in &st.frames {
            eprintln!("{:?} {} @ {:?}:{:?}", f.origin, f.function, f.file, f.line);
        }
    }
    let at = st
        .frames
        .iter()
        .position(|f| f.function.ends_with("hash_password"))
        .unwrap_or_else(|| panic!("hash_password in {:#?}", st.frames));
    let f = &st.frames[at];
    assert_eq!(f.origin, FrameOrigin::User, "{f:?}");
    assert!(f.line.is_some(), "{f:?}");
    let file = f.file.as_deref().expect("a file");
    assert_eq!(
        file, "instrument/tests/stalls.rs",
        "relative to the workspace"
    );
    // Below it, in the sleep: the standard library and the C library.
    assert!(at > 0, "the sleep's frames are inside hash_password");
    assert!(
        st.frames[..at]
            .iter()
            .all(|f| f.origin == FrameOrigin::Runtime),
        "{:#?}",
        &st.frames[..at]
    );
    assert!(st.frames[..at]
        .iter()
        .any(|f| f.function.starts_with("std::thread::")));
    // The async fns that called it, and tokio's frames further out.
    let names: Vec<_> = st.frames.iter().map(|f| f.function.as_str()).collect();
    assert!(
        names.iter().any(|n| n.contains("charge_card")),
        "{names:#?}"
    );
    assert!(st.frames.iter().any(
        |f| f.file.as_deref().is_some_and(|p| p.starts_with("tokio-"))
            && f.origin == FrameOrigin::Runtime
    ));
    assert!(
        !st.frames
            .iter()
            .any(|f| f.function.contains("stacks::signal")),
        "the sampler's own frames are dropped"
    );
    assert!(st
        .frames
        .iter()
        .all(|f| !f.file.as_deref().is_some_and(|p| p.starts_with('/'))
            || f.origin != FrameOrigin::User));
    // Mostly off the CPU: asleep.
    let s = ended(&c, "checkout").sched.unwrap_or_else(|| {
        panic!(
            "sched on Linux: {:?}",
            c.stalls
                .iter()
                .map(|s| (s.ended, s.sched))
                .collect::<Vec<_>>()
        )
    });
    assert!(s.window_ns >= 150_000_000, "{s:?}");
    assert!(s.off_cpu_ns() > s.window_ns / 2, "{s:?}");
}

/// Spins on the CPU for `d`.
#[inline(never)]
fn spin(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = x.wrapping_add(std::hint::black_box(1));
    }
    x
}

#[test]
fn a_cpu_loop_is_on_the_cpu() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let (n, c) = capture_bounded(
        2,
        |b| b,
        || {
            Box::pin(async {
                awaitscope::spawn_named("spin", async { spin(Duration::from_millis(200)) })
                    .await
                    .unwrap()
            })
        },
    );
    assert!(n > 0);
    let st = crossing(&c, "spin");
    assert!(st.spans.is_empty(), "no span entered: {st:?}");
    assert!(
        st.frames.iter().any(|f| f.function.ends_with("spin")),
        "{st:#?}"
    );
    let s = ended(&c, "spin").sched.expect("sched");
    // Running, or runnable and waiting for a CPU, most of the time (on a
    // loaded machine most of it can be waiting). In a virtual machine the
    // time the host takes the CPU away (steal) counts as neither: it shows
    // as off the CPU, which is why this is not "nearly all on the CPU".
    assert!(s.on_cpu_ns > 0, "{s:?}");
    assert!(s.on_cpu_ns + s.waiting_ns > s.window_ns / 2, "{s:?}");
}

#[test]
fn stacks_off_still_sends_the_async_stack() {
    let ((), c) = capture_bounded(
        2,
        |b| b.native_stacks(false),
        || {
            Box::pin(async {
                awaitscope::spawn_named("checkout", checkout())
                    .await
                    .unwrap();
            })
        },
    );
    let st = crossing(&c, "checkout");
    assert_eq!(st.stack, StackState::Off);
    assert!(st.frames.is_empty());
    assert_eq!(
        st.spans,
        vec![c.span("charge_card").id, c.span("checkout").id]
    );
}

#[test]
fn a_short_poll_sends_no_stall_and_the_threshold_is_configurable() {
    let ((), c) = capture_bounded(
        2,
        |b| b.long_poll(Duration::from_millis(500)),
        || {
            Box::pin(async {
                awaitscope::spawn_named("checkout", checkout())
                    .await
                    .unwrap();
            })
        },
    );
    assert!(c.stalls.is_empty(), "200 ms < 500 ms: {:?}", c.stalls);
}

/// The worker is interrupted in a syscall (sleep; a blocking read with a
/// timeout on a socket; a read on a pipe), in a contended mutex and in the
/// allocator: each finishes with the right result.
#[test]
fn the_signal_does_not_break_what_the_worker_does() {
    let (out, c) = capture_bounded(
        2,
        |b| b,
        || {
            Box::pin(async {
                // A socket read with a timeout, answered after 150 ms.
                let sock = awaitscope::spawn_named("socket", async {
                    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
                    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let w = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(150));
                        a.write_all(b"pong").unwrap();
                        a
                    });
                    let mut buf = [0u8; 4];
                    b.read_exact(&mut buf).unwrap();
                    drop(w.join());
                    buf == *b"pong"
                })
                .await
                .unwrap();
                // A pipe read, answered after 150 ms.
                let pipe = awaitscope::spawn_named("pipe", async {
                    let mut fds = [0; 2];
                    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                    let w = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(150));
                        unsafe { libc::write(fds[1], b"ok".as_ptr().cast(), 2) };
                    });
                    let mut r =
                        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
                    let mut buf = [0u8; 2];
                    r.read_exact(&mut buf).unwrap();
                    w.join().unwrap();
                    unsafe { libc::close(fds[1]) };
                    buf == *b"ok"
                })
                .await
                .unwrap();
                // A std mutex held by another thread for 150 ms.
                let m = std::sync::Arc::new(std::sync::Mutex::new(0u64));
                let held = m.clone();
                let (locked_tx, locked_rx) = mpsc::channel();
                let holder = std::thread::spawn(move || {
                    let mut g = held.lock().unwrap();
                    locked_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                    *g += 1;
                });
                locked_rx.recv().unwrap();
                let lock = awaitscope::spawn_named("mutex", async move {
                    let mut g = m.lock().unwrap();
                    *g += 1;
                    *g
                })
                .await
                .unwrap();
                holder.join().unwrap();
                // The allocator: allocations and frees for 150 ms.
                let alloc = awaitscope::spawn_named("alloc", async {
                    let start = Instant::now();
                    let mut total = 0usize;
                    while start.elapsed() < Duration::from_millis(150) {
                        let v: Vec<u64> = (0..64).collect();
                        total += v.iter().sum::<u64>() as usize;
                        let s = format!("{total}");
                        total += s.len();
                    }
                    total > 0
                })
                .await
                .unwrap();
                (sock, pipe, lock, alloc)
            })
        },
    );
    assert_eq!(out, (true, true, 2, true));
    let mut sampled = 0;
    for task in ["socket", "pipe", "mutex", "alloc"] {
        let st = crossing(&c, task);
        eprintln!("{task}: {:?}, {} frames", st.stack, st.frames.len());
        if cfg!(target_os = "linux") {
            assert!(
                matches!(st.stack, StackState::Sampled | StackState::Missed),
                "{task}: {st:?}"
            );
        }
        sampled += (st.stack == StackState::Sampled) as usize;
        ended(&c, task);
    }
    if cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        assert!(sampled >= 3, "most were sampled: {sampled} of 4");
    }
    // Sampled in the allocator's loop, the stack still names the task's code.
    let st = crossing(&c, "alloc");
    if st.stack == StackState::Sampled {
        assert!(
            st.frames
                .iter()
                .any(|f| f.function.contains("the_signal_does_not_break")),
            "{:#?}",
            st.frames
        );
    }
}

/// Many tasks on four workers, many of them crossing the threshold while
/// allocating, locking and sleeping: all finish with the right results.
#[test]
fn many_crossings_under_load() {
    let (sums, c) = capture_bounded(
        2,
        |b| b.long_poll(Duration::from_millis(2)),
        || {
            Box::pin(async {
                let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut handles = Vec::new();
                for i in 0..64u64 {
                    let shared = shared.clone();
                    handles.push(awaitscope::spawn_named("load", async move {
                        let mut sum = 0u64;
                        for round in 0..3u64 {
                            let start = Instant::now();
                            while start.elapsed() < Duration::from_millis(4) {
                                let v: Vec<u64> = (0..32).map(|x| x * i).collect();
                                sum = sum.wrapping_add(v.iter().sum::<u64>());
                                shared.lock().unwrap().push(round);
                            }
                            if round == 1 {
                                std::thread::sleep(Duration::from_millis(3));
                            }
                            tokio::task::yield_now().await;
                        }
                        (i, sum > 0 || i == 0)
                    }));
                }
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await.unwrap());
                }
                out
            })
        },
    );
    assert_eq!(sums.len(), 64);
    for (i, (j, ok)) in sums.iter().enumerate() {
        assert_eq!(i as u64, *j);
        assert!(ok);
    }
    let crossings = c.stalls.iter().filter(|s| !s.ended).count();
    let sampled = c
        .stalls
        .iter()
        .filter(|s| !s.ended && s.stack == StackState::Sampled)
        .count();
    eprintln!("{crossings} crossings, {sampled} sampled");
    if cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        assert!(sampled > 0);
    }
    assert!(crossings >= 64, "{crossings} crossings");
    // One crossing per poll, each followed by its end.
    let mut seen = std::collections::HashSet::new();
    for s in c.stalls.iter().filter(|s| !s.ended) {
        assert!(seen.insert((s.task, s.start)), "sampled twice: {s:?}");
    }
    let ends = c.stalls.iter().filter(|s| s.ended).count();
    assert!(ends + 2 >= crossings, "{ends} ends of {crossings}");
}

const CHILD_ENV: &str = "AWAITSCOPE_TEST_STALL_CHILD";

/// The child program of [`environment_turns_stacks_off`]: configured by the
/// environment only, as `init()` users are.
#[test]
#[ignore = "run by environment_turns_stacks_off in a child process"]
fn env_child_program() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let memory = MemoryRecording::new();
    let b = awaitscope::Builder::from_env().record_in_memory(&memory);
    run(Flavor::MultiThread, b, |_| async {
        awaitscope::spawn_named("checkout", checkout())
            .await
            .unwrap();
    });
    let c = Captured::from_frames(memory.frames().expect("recording decodes"));
    let st = crossing(&c, "checkout");
    // The parent checks what the child printed.
    println!(
        "STALL stack={:?} frames={} spans_ok={}",
        st.stack,
        st.frames.len(),
        st.spans == vec![c.span("charge_card").id, c.span("checkout").id]
    );
}

#[test]
fn environment_turns_stacks_off() {
    let run_child = |stacks: &str, long_poll: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_child_program", "--ignored", "--nocapture"])
            .env(CHILD_ENV, "1")
            .env("AWAITSCOPE_ADDR", "off")
            .env_remove("AWAITSCOPE_RECORD")
            .env("AWAITSCOPE_STACKS", stacks)
            .env("AWAITSCOPE_LONG_POLL", long_poll)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "child failed: {text}");
        text
    };
    let off = run_child("off", "20ms");
    assert!(
        off.contains("STALL stack=Off frames=0 spans_ok=true"),
        "{off}"
    );
    let on = run_child("on", "20ms");
    if cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        assert!(on.contains("STALL stack=Sampled"), "{on}");
        assert!(on.contains("spans_ok=true"), "{on}");
    }
}
