//! The panic hook: a panic inside a task becomes a `Panic` event with the
//! task and span it happened in, and the task ends as panicked.

use std::sync::{Arc, Mutex, Once, Weak};

use crate::capture::local::with_local;
use crate::capture::record::{Raw, RawPanic};
use crate::capture::Capture;

static INSTANCES: Mutex<Vec<Weak<Capture>>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Installs the hook (once per process; it chains to the previous hook) and
/// registers `shared` with it.
pub(crate) fn register(shared: &Arc<Capture>) {
    {
        let mut list = INSTANCES.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(shared));
    }
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            record(info);
            prev(info);
        }));
    });
}

/// The live captures, which the panic hook records into; also where a
/// context leaving the process is recorded (`crate::traceparent`). Empty
/// when the list is busy: recording never waits.
pub(crate) fn captures() -> Vec<Arc<Capture>> {
    match INSTANCES.try_lock() {
        Ok(list) => list.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => Vec::new(),
    }
}

fn record(info: &std::panic::PanicHookInfo<'_>) {
    let instances: Vec<Arc<Capture>> = match INSTANCES.try_lock() {
        Ok(list) => list.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    if instances.is_empty() {
        return;
    }
    let payload = info.payload();
    let mut message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned());
    awaitscope_wire::limits::truncate(&mut message);
    let (file, line) = info.location().map_or((None, None), |l| {
        (Some(l.file().to_owned()), Some(l.line()))
    });
    let trace = crate::causal::CausalTrace::capture();
    let span = trace.leaf_id();
    let trace = trace.wire_lines();
    for shared in instances {
        let ts = shared.raw();
        with_local(&shared, |l| {
            let task = l.current_task();
            l.panicked_task = task;
            let raw = RawPanic {
                task,
                span,
                message: message.clone(),
                file: file.clone(),
                line,
                ts,
                trace: trace.clone(),
            };
            l.push(Raw::Panic(Box::new(raw)));
        });
    }
}
