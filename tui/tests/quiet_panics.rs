//! The UI's panic hook logs a panic of another thread to the UI's own log,
//! never to that thread's dispatcher: in `awaitscope demo` the workload's
//! threads record to awaitscope, which would show the UI's log line as an
//! error of the program (beside the panic's own finding).
//!
//! A file of its own: the hook is the process's.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Keeps the message of every event it sees.
#[derive(Clone, Default)]
struct Messages(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Messages {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct V(String);
        impl Visit for V {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut v = V(String::new());
        event.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

#[test]
fn a_workload_threads_panic_goes_to_the_uis_log_only() {
    let ui = Messages::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ui.clone()))
        .unwrap();
    awaitscope_tui::ui::run::quiet_panics();
    let workload = Messages::default();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(workload.clone()));
    let joined = std::thread::Builder::new()
        .name("demo-worker".into())
        .spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::error!("the workload's own error");
                panic!("config reload: missing key");
            })
        })
        .unwrap()
        .join();
    assert!(joined.is_err(), "the thread panicked");
    let ui = ui.0.lock().unwrap().clone();
    let workload = workload.0.lock().unwrap().clone();
    assert!(
        ui.iter()
            .any(|m| m.contains("panic: ") && m.contains("config reload: missing key")),
        "the UI's log: {ui:?}"
    );
    assert_eq!(
        workload,
        ["the workload's own error"],
        "the workload's dispatcher"
    );
}
