//! Callsite classification, done once per callsite in `register_callsite`.
//!
//! Every span or event callsite gets a small id and a [`Class`] that tells the
//! hot path what it stands for (a tokio task, a resource, a waker event, a
//! user span...). Lookups on the span-creation and event paths go through an
//! immutable map behind an [`ArcSwap`]: readers take no lock and contend on
//! nothing; the rare registration copies the map.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use awaitscope_wire as wire;
use rustc_hash::FxHashMap;
use tracing_core::{Level, Metadata};

use crate::filter::SpanFilter;
use crate::names;

/// What a callsite is, for the capture layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A span of the given class.
    Span(wire::SpanClass),
    /// An event forwarded as a `Log` of the given class.
    Event(wire::EventClass),
    /// tokio's `tokio::task::waker` events: turned into `Wake`.
    Waker,
    /// An event the layer does not capture (user events below WARN), or a
    /// span the span filter (`AWAITSCOPE_SPANS`) rejects.
    Ignored,
}

/// Id and class of a registered callsite.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Info {
    pub id: u32,
    pub class: Class,
}

/// Classifies a callsite from its metadata.
pub(crate) fn classify(meta: &Metadata<'_>) -> Class {
    let target = meta.target();
    let name = meta.name();
    if meta.is_span() {
        let tokio = target.starts_with(names::TOKIO_TARGET_PREFIX);
        let class = match name {
            names::SPAWN_SPAN if tokio || target == names::TASK_TARGET => wire::SpanClass::Task,
            names::RESOURCE_SPAN if tokio => wire::SpanClass::Resource,
            names::ASYNC_OP_SPAN if tokio => wire::SpanClass::AsyncOp,
            names::ASYNC_OP_POLL_SPAN if tokio => wire::SpanClass::AsyncOpPoll,
            _ => wire::SpanClass::User,
        };
        return Class::Span(class);
    }
    match target {
        names::TOKIO_WAKER_TARGET => Class::Waker,
        names::TOKIO_POLL_OP_TARGET => Class::Event(wire::EventClass::PollOp),
        t if names::TOKIO_STATE_UPDATE_TARGETS.contains(&t) => {
            Class::Event(wire::EventClass::StateUpdate)
        }
        _ if *meta.level() <= Level::WARN => Class::Event(wire::EventClass::User),
        _ => Class::Ignored,
    }
}

fn level(l: &Level) -> wire::Level {
    match *l {
        Level::TRACE => wire::Level::Trace,
        Level::DEBUG => wire::Level::Debug,
        Level::INFO => wire::Level::Info,
        Level::WARN => wire::Level::Warn,
        _ => wire::Level::Error,
    }
}

fn capped(s: &str) -> String {
    let mut s = s.to_owned();
    wire::limits::truncate(&mut s);
    s
}

/// Key of a callsite: the address of its `'static` metadata, which is unique
/// per callsite.
fn key(meta: &'static Metadata<'static>) -> usize {
    meta as *const Metadata<'static> as usize
}

/// The slot of callsite address `k` among a thread's [`RECENT`] lookups.
/// Metadata are statics of ~100 bytes: their addresses differ in the bits
/// above the sixth.
#[inline]
fn recent_slot(k: usize) -> usize {
    (k >> 6) % RECENT_SLOTS
}

/// Numbers each [`Callsites`], for the threads' [`RECENT`] lookups.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Entries of a thread's [`RECENT`] lookups (a power of two).
const RECENT_SLOTS: usize = 64;

/// An entry of [`RECENT`] nobody looks up (serial 0 is no `Callsites`).
const NO_ENTRY: (u64, usize, Info) = (
    0,
    0,
    Info {
        id: 0,
        class: Class::Ignored,
    },
);

thread_local! {
    /// This thread's recent lookups, by metadata address: (serial of the
    /// `Callsites`, metadata address, its info). A callsite's info never
    /// changes once registered, so an entry stays true; the shared map's
    /// lock-free load (a reference count on a shared cache line) is paid
    /// once per callsite and thread, not per span created.
    static RECENT: [Cell<(u64, usize, Info)>; RECENT_SLOTS] =
        const { [const { Cell::new(NO_ENTRY) }; RECENT_SLOTS] };
}

/// All callsites registered with one layer instance.
pub(crate) struct Callsites {
    /// This instance's number in the threads' [`RECENT`] lookups (never 0).
    serial: u64,
    /// Which span callsites are captured.
    spans: SpanFilter,
    map: ArcSwap<FxHashMap<usize, Info>>,
    /// tokio's waker event callsites (clone, drop, wake, wake_by_ref): the
    /// most frequent events, recognised by address before any map lookup.
    wakers: [std::sync::atomic::AtomicUsize; 4],
    /// The op of each waker callsite in `wakers`, 0 until learned.
    waker_ops: [std::sync::atomic::AtomicU8; 4],
    /// Registration order; the exporter sends `all[sent..]` and re-sends all
    /// of them after a reconnect.
    all: Mutex<Vec<wire::Callsite>>,
    /// The metadata of each callsite in `all`, by id: the exporter makes
    /// the node of a compact span still open after its drain from it (see
    /// `Exporter::age_compact`).
    metas: Mutex<Vec<&'static Metadata<'static>>>,
}

impl Callsites {
    /// No callsite yet; span callsites are classified through `spans`.
    pub fn new(spans: SpanFilter) -> Self {
        Self {
            serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            spans,
            map: ArcSwap::default(),
            wakers: Default::default(),
            waker_ops: Default::default(),
            all: Mutex::new(Vec::new()),
            metas: Mutex::new(Vec::new()),
        }
    }

    /// The metadata of callsite `id`.
    pub fn meta(&self, id: u32) -> Option<&'static Metadata<'static>> {
        let metas = self.metas.lock().unwrap_or_else(|e| e.into_inner());
        metas.get(id as usize).copied()
    }

    /// Whether the capture takes what `meta`'s callsite records, as
    /// [`Callsites::register`] would class it: a span the span filter
    /// keeps (never tokio's async op polls: see [`Callsites::keeps_span`]),
    /// or one of tokio's wakers and resource events, or an event at WARN
    /// or above. For `enabled` calls, which get metadata of no
    /// particular lifetime.
    pub fn captures(&self, meta: &Metadata<'_>) -> bool {
        // `register_callsite` came first: its class, by address, without
        // classifying the callsite's strings again on every call.
        let k = meta as *const Metadata<'_> as usize;
        if let Some(info) = self.lookup(k) {
            return info.class != Class::Ignored;
        }
        match classify(meta) {
            Class::Span(class) => self.keeps_span(meta, class),
            Class::Ignored => false,
            Class::Event(_) | Class::Waker => true,
        }
    }

    /// Looks up a callsite, registering it if this is its first sight.
    #[inline]
    pub fn get(&self, meta: &'static Metadata<'static>) -> Info {
        let k = key(meta);
        match self.lookup(k) {
            Some(info) => info,
            None => {
                let info = self.register(meta);
                let _ = RECENT.try_with(|r| r[recent_slot(k)].set((self.serial, k, info)));
                info
            }
        }
    }

    /// The registered callsite at address `k`: from this thread's recent
    /// lookups, else from the map (and then kept among the recent ones).
    #[inline]
    fn lookup(&self, k: usize) -> Option<Info> {
        let slot = recent_slot(k);
        let recent = RECENT.try_with(|r| {
            let (serial, key, info) = r[slot].get();
            (serial == self.serial && key == k).then_some(info)
        });
        if let Ok(Some(info)) = recent {
            return Some(info);
        }
        let info = *self.map.load().get(&k)?;
        let _ = RECENT.try_with(|r| r[slot].set((self.serial, k, info)));
        Some(info)
    }

    /// The slot of a waker callsite (see [`Callsites::waker_op`]), or
    /// `None` for other callsites and waker callsites past the slots.
    #[inline]
    pub fn waker_slot(&self, meta: &'static Metadata<'static>) -> Option<usize> {
        let k = key(meta);
        self.wakers
            .iter()
            .position(|w| w.load(std::sync::atomic::Ordering::Acquire) == k)
    }

    /// The op of the waker callsite in `slot`, once learned.
    ///
    /// tokio emits each waker op from its own callsite (`waker.clone`,
    /// `waker.drop`, ... each a separate `trace!` with a literal `op`), so
    /// the op is read from the first event of a callsite and the events
    /// after it need only their task id.
    #[inline]
    pub fn waker_op(&self, slot: usize) -> Option<wire::WakeOp> {
        use std::sync::atomic::Ordering;
        match self.waker_ops.get(slot)?.load(Ordering::Relaxed) {
            1 => Some(wire::WakeOp::Wake),
            2 => Some(wire::WakeOp::WakeByRef),
            3 => Some(wire::WakeOp::Clone),
            4 => Some(wire::WakeOp::Drop),
            _ => None,
        }
    }

    /// Remembers the op read from an event of the waker callsite in `slot`.
    pub fn learn_waker_op(&self, slot: usize, op: wire::WakeOp) {
        use std::sync::atomic::Ordering;
        let code = match op {
            wire::WakeOp::Wake => 1,
            wire::WakeOp::WakeByRef => 2,
            wire::WakeOp::Clone => 3,
            wire::WakeOp::Drop => 4,
            // Not an op tokio emits.
            wire::WakeOp::LastDrop => return,
        };
        if let Some(o) = self.waker_ops.get(slot) {
            o.store(code, Ordering::Relaxed);
        }
    }

    /// Registers a callsite (idempotent).
    pub fn register(&self, meta: &'static Metadata<'static>) -> Info {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = self.map.load().get(&key(meta)) {
            return *info;
        }
        let natural = classify(meta);
        let class = match natural {
            Class::Span(c) if !self.keeps_span(meta, c) => Class::Ignored,
            c => c,
        };
        let id = all.len() as u32;
        let kind = match natural {
            Class::Span(c) => wire::CallsiteKind::Span(c),
            Class::Event(c) => wire::CallsiteKind::Event(c),
            Class::Waker | Class::Ignored => wire::CallsiteKind::Event(wire::EventClass::User),
        };
        all.push(wire::Callsite {
            id,
            name: capped(meta.name()),
            target: capped(meta.target()),
            level: level(meta.level()),
            file: meta.file().map(capped),
            line: meta.line(),
            kind,
            fields: meta
                .fields()
                .iter()
                .take(wire::limits::MAX_FIELDS)
                .map(|f| capped(f.name()))
                .collect(),
        });
        self.metas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(meta);
        let info = Info { id, class };
        if class == Class::Waker {
            use std::sync::atomic::Ordering;
            if let Some(slot) = self.wakers.iter().find(|w| w.load(Ordering::Relaxed) == 0) {
                slot.store(key(meta), Ordering::Release);
            }
        }
        let mut map = FxHashMap::clone(&self.map.load());
        map.insert(key(meta), info);
        self.map.store(Arc::new(map));
        info
    }

    /// Whether spans of `meta`'s callsite, of class `class`, are captured:
    /// those the span filter keeps, except tokio's async op polls.
    ///
    /// tokio opens a `runtime.resource.async_op.poll` span inside its async
    /// op's span around every poll of the op (each lock, acquire, channel
    /// receive and sleep), which names nothing its op does not: the model
    /// stands the op for it in await trees, stall stacks and wait lines,
    /// and an event inside it belongs to the op's resource either way.
    /// Captured, each cost a node, its creation and close, and two more
    /// spans entered and exited at every poll (a contended lock's poll
    /// enters two: the Mutex's op's and its semaphore's). Left out, the
    /// span is disabled at its callsite under awaitscope's own subscriber
    /// (tracing makes it `Span::none()`, and what it encloses has the op
    /// as its span); under the layer it gets no node, as a span the filter
    /// rejects.
    fn keeps_span(&self, meta: &Metadata<'_>, class: wire::SpanClass) -> bool {
        class != wire::SpanClass::AsyncOpPoll && self.spans.keeps(meta)
    }

    /// Callsites registered from index `from` on.
    pub fn since(&self, from: usize) -> Vec<wire::Callsite> {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        all.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }
}
