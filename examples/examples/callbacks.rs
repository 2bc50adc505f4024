//! A callback API bridged into async code with a oneshot channel.

use awaitscope_tui::demo::callbacks;

#[tokio::main]
async fn main() {
    let _guard = awaitscope::init();
    let mut set = Vec::new();
    for key in 0..20 {
        set.push(awaitscope::spawn_named("lookup", callbacks::lookup(key)));
    }
    for h in set {
        match h.await {
            Ok(Ok(v)) => println!("{v}"),
            Ok(Err(e)) => println!("error: {e}"),
            Err(e) => println!("task failed: {e}"),
        }
    }
}
