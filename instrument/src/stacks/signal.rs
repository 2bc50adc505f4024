//! Sampling a worker thread's native stack from another thread (Linux).
//!
//! The watchdog asks for a sample by arming a request for one thread id and
//! sending that thread a real-time signal (`tgkill`). The handler, installed
//! once on first need, checks that the request is armed and meant for its
//! thread, walks the stack into a preallocated buffer of return addresses,
//! and publishes completion with an atomic. It allocates nothing, takes no
//! lock and touches no thread-local.
//!
//! The walk is libgcc's `_Unwind_Backtrace` (through
//! `backtrace::trace_unsynchronized`). Its FDE lookup is async-signal-safe
//! when it uses `_dl_find_object` (glibc >= 2.35 with libgcc >= 12; the
//! machine this was written on has glibc 2.36 and libgcc 12.2): older
//! combinations walk `dl_iterate_phdr`, which takes the loader's lock and
//! could deadlock a handler interrupting `dlopen`. The tests interrupt
//! workers in syscalls, in a contended mutex and in the allocator.
//!
//! One request at a time, in flight while the exporter goes on draining:
//! [`start`] arms it and signals, [`InFlight::collect`] takes the answer
//! on a later pass. The requests of all exporters share one flag (set by
//! the exporter threads only, never in the handler); an exporter that
//! finds it taken tries again later.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{NoSample, Sample};

/// Most return addresses one sample keeps (the frames of the handler and
/// the signal trampoline included, dropped later).
const MAX_ADDRS: usize = awaitscope_wire::limits::MAX_STACK + 32;

/// No request armed.
const IDLE: u8 = 0;
/// A request is armed for `TARGET`.
const ARMED: u8 = 1;
/// The handler is walking the stack.
const WALKING: u8 = 2;
/// The walk is done: `ADDRS[..LEN]` and `PC` hold it.
const DONE: u8 = 3;
/// A walk never finished: sampling stays off for good.
const BROKEN: u8 = 4;

static STATE: AtomicU8 = AtomicU8::new(IDLE);
static TARGET: AtomicI32 = AtomicI32::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
/// The interrupted instruction (the innermost frame of interest).
static PC: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
static ADDRS: [AtomicUsize; MAX_ADDRS] = [ZERO; MAX_ADDRS];

/// The one request of the process is taken (by an exporter thread; never
/// touched by the handler). A flag rather than a lock: the request
/// outlives the call that made it, and no exporter waits for another.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The signal used: a real-time one, so that it queues apart from the
/// program's own `SIGUSR1`/`SIGUSR2` use.
fn signal_number() -> i32 {
    libc::SIGRTMIN() + 5
}

/// Installs the handler once; false if the signal already had a handler
/// (left in place: said once on stderr).
fn installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let sig = signal_number();
        // SAFETY: plain sigaction calls with zeroed, then filled, structs.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                return false;
            }
            if old.sa_sigaction != libc::SIG_DFL {
                eprintln!(
                    "awaitscope: signal {sig} already has a handler; native stacks of long polls are off"
                );
                return false;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut()) == 0
        }
    })
}

/// The interrupted program counter in a signal's context.
///
/// # Safety
/// `ctx` is the third argument of an `SA_SIGINFO` handler.
unsafe fn interrupted_pc(ctx: *mut libc::c_void) -> usize {
    if ctx.is_null() {
        return 0;
    }
    let uc = ctx as *const libc::ucontext_t;
    #[cfg(target_arch = "x86_64")]
    {
        (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
    #[cfg(target_arch = "aarch64")]
    {
        (*uc).uc_mcontext.pc as usize
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        0
    }
}

extern "C" fn handler(_sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is thread-local storage the C library set up already
    // (no lazy init); it is restored so the interrupted code sees its own.
    let errno = unsafe { *libc::__errno_location() };
    // Only requests sent with tgkill by this process (not a stray kill).
    // SAFETY: `info` is valid in an SA_SIGINFO handler.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    // SAFETY: gettid is a plain syscall.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if code == libc::SI_TKILL
        && TARGET.load(Ordering::Acquire) == tid
        && STATE
            .compare_exchange(ARMED, WALKING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        // SAFETY: see interrupted_pc.
        PC.store(unsafe { interrupted_pc(ctx) }, Ordering::Relaxed);
        let mut n = 0;
        // SAFETY: no other thread walks with this buffer (the state is
        // WALKING); the closure only stores into preallocated atomics.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                ADDRS[n].store(frame.ip() as usize, Ordering::Relaxed);
                n += 1;
                n < MAX_ADDRS
            });
        }
        LEN.store(n, Ordering::Relaxed);
        STATE.store(DONE, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// A sample requested and not collected yet: the signal is sent, the
/// worker answers when the kernel delivers it; the caller goes on with its
/// own work and asks again ([`InFlight::collect`]). While it exists, it
/// holds the one request slot of the process.
pub(crate) struct InFlight {
    /// Past this, an unanswered request is withdrawn.
    deadline: Instant,
    /// Past this, a walk that started and never ended breaks sampling.
    walk_deadline: Instant,
    /// The request is finished (collected or withdrawn): the slot is free.
    done: bool,
}

/// Asks thread `tid` of this process for its native stack: arms the
/// request and signals the thread, without waiting for the answer, which
/// is collected within `wait`. `Err(Busy)`: another sample is in flight.
pub(super) fn start(tid: i32, wait: Duration) -> Result<InFlight, NoSample> {
    if tid <= 0 || !installed() {
        return Err(NoSample::Unsupported);
    }
    if REQUESTED
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(NoSample::Busy);
    }
    if STATE.load(Ordering::Acquire) == BROKEN {
        REQUESTED.store(false, Ordering::Release);
        return Err(NoSample::Missed);
    }
    TARGET.store(tid, Ordering::Release);
    STATE.store(ARMED, Ordering::Release);
    // SAFETY: tgkill to a thread of this process with a signal it handles.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            tid,
            signal_number() as libc::c_long,
        )
    } == 0;
    if !sent {
        STATE.store(IDLE, Ordering::Release);
        REQUESTED.store(false, Ordering::Release);
        return Err(NoSample::Missed);
    }
    let deadline = Instant::now() + wait;
    Ok(InFlight {
        deadline,
        walk_deadline: deadline + wait,
        done: false,
    })
}

impl InFlight {
    /// The answer, if there is one by now: `None` while the worker has not
    /// answered (and the wait is not over); `Missed` once it is over.
    pub fn collect(&mut self) -> Option<Result<Sample, NoSample>> {
        if self.done {
            return Some(Err(NoSample::Missed));
        }
        let now = Instant::now();
        let answer = match STATE.load(Ordering::Acquire) {
            DONE => Ok(read_walk()),
            WALKING if now >= self.walk_deadline => {
                // The walk started but never ended: never reuse the buffer.
                STATE.store(BROKEN, Ordering::Release);
                Err(NoSample::Missed)
            }
            // Withdraw the request; a late handler then does nothing.
            ARMED
                if now >= self.deadline
                    && STATE
                        .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
            {
                Err(NoSample::Missed)
            }
            ARMED | WALKING => return None,
            _ => Err(NoSample::Missed),
        };
        self.finish();
        Some(answer)
    }

    /// Gives the request up (what it was for is over): withdrawn if the
    /// worker has not started its walk; a walk in progress is let finish.
    /// Returns whether the request is finished (else ask again later: the
    /// buffer is the handler's until its walk ends).
    pub fn cancel(&mut self) -> bool {
        if self.done {
            return true;
        }
        let withdrawn = STATE
            .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if !withdrawn {
            match STATE.load(Ordering::Acquire) {
                DONE => STATE.store(IDLE, Ordering::Release),
                WALKING if Instant::now() >= self.walk_deadline => {
                    STATE.store(BROKEN, Ordering::Release)
                }
                WALKING => return false,
                _ => {}
            }
        }
        self.finish();
        true
    }

    /// Frees the request slot.
    fn finish(&mut self) {
        self.done = true;
        REQUESTED.store(false, Ordering::Release);
    }
}

impl Drop for InFlight {
    /// A request given up at the exporter's end: a walk in progress is
    /// waited for (bounded by its deadline), so that the buffer is never
    /// handed to a new request while a handler writes it.
    fn drop(&mut self) {
        while !self.cancel() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// The finished walk: its addresses from the interrupted instruction on.
/// The state goes back to idle.
fn read_walk() -> Sample {
    let n = LEN.load(Ordering::Relaxed);
    let pc = PC.load(Ordering::Relaxed);
    let all: Vec<usize> = ADDRS[..n]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    STATE.store(IDLE, Ordering::Release);
    // The frames before the interrupted one are the handler's and the
    // trampoline's.
    match all.iter().position(|&a| a == pc) {
        Some(i) => Sample {
            addrs: all[i..].to_vec(),
            exact_first: true,
        },
        None => Sample {
            addrs: all,
            exact_first: false,
        },
    }
}

/// The calling thread's kernel id.
pub(super) fn current_tid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A thread of this process that runs until `stop` is sent: its kernel
    /// id, and whether it blocks the sampling signal.
    fn worker(block: bool, stop: mpsc::Receiver<()>) -> (i32, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            if block {
                // SAFETY: plain signal mask calls on this thread.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, signal_number());
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
            }
            tx.send(current_tid() as i32).unwrap();
            let _ = stop.recv();
        });
        (rx.recv().unwrap(), h)
    }

    /// A sample does not wait for the worker: it is asked for, the caller
    /// gets on, and collects it later. A worker that cannot answer (the
    /// signal blocked) leaves it out until the wait is over, then missed,
    /// and the one request is free again; meanwhile another request is
    /// refused (busy), not queued. A worker that can answer is sampled.
    #[test]
    fn a_sample_is_asked_for_and_collected_later() {
        let (stop_deaf, rx) = mpsc::channel();
        let (deaf, deaf_thread) = worker(true, rx);
        let (stop_live, rx) = mpsc::channel();
        let (live, live_thread) = worker(false, rx);

        let mut req = start(deaf, Duration::from_millis(30)).expect("asked");
        assert!(req.collect().is_none(), "no answer yet from a deaf worker");
        assert!(matches!(
            start(live, Duration::from_millis(30)),
            Err(NoSample::Busy)
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            if let Some(a) = req.collect() {
                break a;
            }
            assert!(Instant::now() < deadline, "the wait never ended");
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(matches!(answer, Err(NoSample::Missed)));

        let mut req = start(live, Duration::from_secs(2)).expect("free again");
        let answer = loop {
            if let Some(a) = req.collect() {
                break a;
            }
            assert!(Instant::now() < deadline, "the live worker never answered");
            std::thread::sleep(Duration::from_millis(1));
        };
        let sample = answer.expect("sampled");
        assert!(!sample.addrs.is_empty());

        stop_deaf.send(()).unwrap();
        stop_live.send(()).unwrap();
        deaf_thread.join().unwrap();
        live_thread.join().unwrap();
    }
}
