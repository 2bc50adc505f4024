//! What the path functions of the wire crate ([`paths::origin`],
//! [`paths::display`]) say of a file, remembered for the last few files
//! asked about on the thread: describing a finding asks of the same few
//! files over and over (for labels, stalls and poll traces alike).

use awaitscope_wire::paths::{self, PathOrigin};

/// Most files [`file_origin`] and [`shown_file`] remember, each.
const MEMO: usize = 4;

/// The answers of a pure function of a file's path for the last few paths
/// asked about on this thread (at most [`MEMO`], the oldest replaced).
/// Describing a finding judges each frame of each await path it names,
/// and asks of the same few files over and over: a pass over a path costs
/// hundreds of instructions, comparing it with a remembered one a few
/// dozen.
struct Memo<T> {
    slots: Vec<(String, T)>,
    /// The slot replaced next, once all are used.
    next: usize,
}

impl<T: Clone> Memo<T> {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            next: 0,
        }
    }

    /// `f(file)`, remembered.
    fn get(&mut self, file: &str, f: impl FnOnce(&str) -> T) -> T {
        if let Some((_, v)) = self.slots.iter().find(|(k, _)| k == file) {
            return v.clone();
        }
        let v = f(file);
        if self.slots.len() < MEMO {
            self.slots.push((file.to_owned(), v.clone()));
        } else {
            let (k, old) = &mut self.slots[self.next];
            k.clear();
            k.push_str(file);
            *old = v.clone();
            self.next = (self.next + 1) % MEMO;
        }
        v
    }
}

thread_local! {
    static ORIGINS: std::cell::RefCell<Memo<PathOrigin>> = const { std::cell::RefCell::new(Memo::new()) };
    static SHOWN: std::cell::RefCell<Memo<Option<String>>> = const { std::cell::RefCell::new(Memo::new()) };
}

/// [`paths::origin`] of `file` (remembered: see `Memo`).
pub fn file_origin(file: &str) -> PathOrigin {
    ORIGINS.with(|m| m.borrow_mut().get(file, paths::origin))
}

/// `file` as [`paths::display`] shows it when that is another string;
/// `None` when it shows as it is (remembered: see `Memo`).
pub fn shown_file(file: &str) -> Option<String> {
    SHOWN.with(|m| {
        m.borrow_mut().get(file, |f| match paths::display(f) {
            std::borrow::Cow::Owned(f) => Some(f),
            std::borrow::Cow::Borrowed(_) => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is remembered of a file is what the path functions say of it,
    /// for more files than are remembered, asked in turn and out of turn.
    #[test]
    fn remembered_answers_are_the_paths_own() {
        let files = [
            "src/main.rs",
            "/root/.cargo/registry/src/idx/tokio-1.47.1/src/lib.rs",
            "/rustc/abc/library/std/src/thread/mod.rs",
            "tokio-1.47.1/src/sync/mutex.rs",
            "src/lib.rs",
            "/rust/deps/x-1.0/src/a.rs",
            "C:\\app\\src\\main.rs",
        ];
        for round in 1..=4 {
            for i in 0..files.len() * 2 {
                let f = files[(i * round) % files.len()];
                assert_eq!(file_origin(f), paths::origin(f), "{f}");
                let shown = match paths::display(f) {
                    std::borrow::Cow::Owned(s) => Some(s),
                    std::borrow::Cow::Borrowed(_) => None,
                };
                assert_eq!(shown_file(f), shown, "{f}");
            }
        }
    }
}
