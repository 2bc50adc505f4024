//! Source paths as users read them.
//!
//! Locations reach awaitscope as the compiler recorded them: relative to the
//! workspace for the program's own crates, but absolute for dependencies
//! (`/home/u/.cargo/registry/src/index.crates.io-6f17d22bba15001f/tokio-1.47.1/src/sync/mutex.rs`)
//! and for the standard library (`/rustc/<commit>/library/std/src/thread/mod.rs`).
//! Absolute paths name the machine that built the program and bury the part
//! that matters; [`display`] shortens them to `tokio-1.47.1/src/sync/mutex.rs`
//! and `std/src/thread/mod.rs`. Producers and the collector both use it, so a
//! path reads the same in every view.

use std::borrow::Cow;

/// Whose code a source path is, judged from the path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathOrigin {
    /// The standard library (`std`, `core`, `alloc`, ...).
    Std,
    /// A crate from a registry or a git checkout.
    Dependency,
    /// Anything else: the program's own code, as far as the path tells.
    Local,
}

/// `path` shortened for display: a registry crate's path from its
/// `name-version` directory, a git dependency's from its checkout name, the
/// standard library's from the library's name; other paths unchanged.
pub fn display(path: &str) -> Cow<'_, str> {
    let p = forward_slashes(path);
    if let Some(rest) = after(&p, "/registry/src/") {
        // `index.crates.io-<hash>/tokio-1.47.1/src/...`: drop the index.
        if let Some((_, krate)) = rest.split_once('/') {
            return Cow::Owned(krate.to_owned());
        }
    }
    if let Some(rest) = after(&p, "/git/checkouts/") {
        // `<name>-<hash>/<rev>/src/...`: keep the name, drop the revision.
        if let Some((name, tail)) = rest.split_once('/') {
            let tail = tail.split_once('/').map_or(tail, |(_, t)| t);
            return Cow::Owned(format!("{name}/{tail}"));
        }
    }
    if p.starts_with("/rustc/") {
        if let Some(rest) = after(&p, "/library/") {
            return Cow::Owned(rest.to_owned());
        }
    }
    // The standard library's own dependencies, as the toolchain was built.
    if let Some(rest) = p.strip_prefix(STD_DEPS) {
        return Cow::Owned(rest.to_owned());
    }
    p
}

/// Whose code `path` is (as recorded by the compiler, or as [`display`]
/// shows it).
pub fn origin(path: &str) -> PathOrigin {
    let p = forward_slashes(path);
    if p.starts_with("/rustc/")
        || p.starts_with(STD_DEPS)
        || STD_DIRS.iter().any(|d| p.starts_with(d))
    {
        return PathOrigin::Std;
    }
    if after(&p, "/registry/src/").is_some() || after(&p, "/git/checkouts/").is_some() {
        return PathOrigin::Dependency;
    }
    // A shortened dependency path: `name-1.2.3/src/...`.
    let first = p.split('/').next().unwrap_or("");
    if first.rsplit_once('-').is_some_and(|(_, v)| {
        v.chars().next().is_some_and(|c| c.is_ascii_digit()) && v.contains('.')
    }) {
        return PathOrigin::Dependency;
    }
    PathOrigin::Local
}

/// Where the standard library's dependencies (`miniz_oxide`, `addr2line`,
/// used by its backtraces) were when the toolchain was built.
const STD_DEPS: &str = "/rust/deps/";

/// The standard library's crates as [`display`] shows them.
const STD_DIRS: [&str; 6] = [
    "std/src/",
    "core/src/",
    "alloc/src/",
    "panic_unwind/src/",
    "proc_macro/src/",
    "test/src/",
];

/// `path` with Windows' separators as `/`: borrowed (no copy) when it has
/// none, as nearly every path has (these are called for every frame of
/// every trace a finding describes).
fn forward_slashes(path: &str) -> Cow<'_, str> {
    if path.contains('\\') {
        Cow::Owned(path.replace('\\', "/"))
    } else {
        Cow::Borrowed(path)
    }
}

/// What follows the first `marker` in `s`. Every marker starts with `/`:
/// only the slashes of `s` are tried, which for paths of a few dozen bytes
/// is much cheaper than setting up `str::find`'s substring search (this runs
/// for every location of every trace line a description writes).
fn after<'a>(s: &'a str, marker: &str) -> Option<&'a str> {
    debug_assert!(marker.starts_with('/'));
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'/')
        .find(|&(i, _)| b[i..].starts_with(marker.as_bytes()))
        // `marker` is whole characters: the end of its match is a boundary.
        .map(|(i, _)| &s[i + marker.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_finds_the_first_marker_as_find_does() {
        let paths = [
            "",
            "/",
            "/registry/src/",
            "a/registry/src/b/registry/src/c",
            "/home/u/.cargo/registry/src/index/tokio-1/src/lib.rs",
            "registry/src/x",
            "//registry/src//x",
            "/rustc/abc/library/std/src/lib.rs",
            "src/é/library/ü.rs",
            "/library",
        ];
        for p in paths {
            for m in ["/registry/src/", "/library/", "/git/checkouts/", "/"] {
                let want = p.find(m).map(|i| &p[i + m.len()..]);
                assert_eq!(after(p, m), want, "{p:?} {m:?}");
            }
        }
    }

    #[test]
    fn registry_git_and_std_paths_are_shortened() {
        assert_eq!(
            display("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.47.1/src/sync/batch_semaphore.rs"),
            "tokio-1.47.1/src/sync/batch_semaphore.rs"
        );
        assert_eq!(
            display(
                "/home/u/.cargo/git/checkouts/console-abc123/5f3e1a2/console-subscriber/src/lib.rs"
            ),
            "console-abc123/console-subscriber/src/lib.rs"
        );
        assert_eq!(
            display(
                "/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/thread/mod.rs"
            ),
            "std/src/thread/mod.rs"
        );
        assert_eq!(
            display("examples/src/bin/shop.rs"),
            "examples/src/bin/shop.rs"
        );
        assert!(matches!(display("src/main.rs"), Cow::Borrowed(_)));
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("/rustc/90b35a/library/core/src/ops/function.rs"),
            PathOrigin::Std
        );
        assert_eq!(origin("std/src/thread/mod.rs"), PathOrigin::Std);
        assert_eq!(
            origin("/rust/deps/miniz_oxide-0.8.8/src/inflate/core.rs"),
            PathOrigin::Std
        );
        assert_eq!(
            origin("/x/.cargo/registry/src/idx/tokio-1.47.1/src/lib.rs"),
            PathOrigin::Dependency
        );
        assert_eq!(origin("tokio-1.47.1/src/lib.rs"), PathOrigin::Dependency);
        assert_eq!(origin("examples/src/bin/shop.rs"), PathOrigin::Local);
        assert_eq!(origin("src/main.rs"), PathOrigin::Local);
    }

    /// Windows' separators read as `/` (a copy is made only for them).
    #[test]
    fn backslashes_read_as_slashes() {
        let p = r"C:\Users\u\.cargo\registry\src\index.crates.io-1949cf8c6b5b557f\tokio-1.47.1\src\lib.rs";
        assert_eq!(display(p), "tokio-1.47.1/src/lib.rs");
        assert_eq!(origin(p), PathOrigin::Dependency);
        assert_eq!(display(r"src\main.rs"), "src/main.rs");
        assert_eq!(origin(r"C:\rustc\x\std\src\lib.rs"), PathOrigin::Local);
        assert_eq!(origin(r"std\src\thread\mod.rs"), PathOrigin::Std);
    }
}
