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
    // One pass over the slashes for the common case, neither marker.
    let dependency = holds_any(&p, &["/registry/src/", "/git/checkouts/"]);
    if let Some(rest) = dependency.then(|| after(&p, "/registry/src/")).flatten() {
        // `index.crates.io-<hash>/tokio-1.47.1/src/...`: drop the index.
        if let Some((_, krate)) = rest.split_once('/') {
            return Cow::Owned(krate.to_owned());
        }
    }
    if let Some(rest) = dependency.then(|| after(&p, "/git/checkouts/")).flatten() {
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
    if holds_any(&p, &["/registry/src/", "/git/checkouts/"]) {
        return PathOrigin::Dependency;
    }
    // A shortened dependency path: `name-1.2.3/src/...`.
    // (Bytes searched plainly: `split` and `rsplit_once` of a char set up a
    // `memchr`, costly on strings this short.)
    let b = p.as_bytes();
    let first = &b[..b.iter().position(|&c| c == b'/').unwrap_or(b.len())];
    if first.iter().rposition(|&c| c == b'-').is_some_and(|i| {
        let v = &first[i + 1..];
        v.first().is_some_and(u8::is_ascii_digit) && v.contains(&b'.')
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
    if path.bytes().any(|c| c == b'\\') {
        Cow::Owned(path.replace('\\', "/"))
    } else {
        Cow::Borrowed(path)
    }
}

/// What follows the first `marker` in `s`. Every marker starts with `/`:
/// the marker is compared only at the slashes of `s`, found by a plain
/// byte search, which for paths of a few dozen bytes is much cheaper than
/// setting up `str::find`'s substring search or a `memchr` (this runs for
/// every location of every trace line a description writes).
fn after<'a>(s: &'a str, marker: &str) -> Option<&'a str> {
    debug_assert!(marker.starts_with('/'));
    let at = slashes(s).find(|&i| s.as_bytes()[i..].starts_with(marker.as_bytes()))?;
    // `marker` is whole characters: the end of its match is a boundary.
    Some(&s[at + marker.len()..])
}

/// Whether `s` holds any of `markers` (each starting with `/`), in one
/// pass over its slashes.
fn holds_any(s: &str, markers: &[&str]) -> bool {
    slashes(s).any(|i| {
        markers
            .iter()
            .any(|m| s.as_bytes()[i..].starts_with(m.as_bytes()))
    })
}

/// The byte offsets of the slashes of `s`.
fn slashes(s: &str) -> impl Iterator<Item = usize> + '_ {
    let b = s.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        let i = from + b.get(from..)?.iter().position(|&c| c == b'/')?;
        from = i + 1;
        Some(i)
    })
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
            "x/git/checkouts/y",
            "/git/checkout",
        ];
        for p in paths {
            for m in ["/registry/src/", "/library/", "/git/checkouts/", "/"] {
                let want = p.find(m).map(|i| &p[i + m.len()..]);
                assert_eq!(after(p, m), want, "{p:?} {m:?}");
            }
            let any = p.contains("/registry/src/") || p.contains("/git/checkouts/");
            assert_eq!(holds_any(p, &["/registry/src/", "/git/checkouts/"]), any);
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
        // The shortened dependency's directory: its last `-` followed by a
        // digit, and a `.` after it, in the first component only.
        assert_eq!(origin("a-b-2.0/x.rs"), PathOrigin::Dependency);
        assert_eq!(origin("a-2.0-b/x.rs"), PathOrigin::Local);
        assert_eq!(origin("a-20/x.rs"), PathOrigin::Local);
        assert_eq!(origin("a-.1/x.rs"), PathOrigin::Local);
        assert_eq!(origin("a/b-1.0/x.rs"), PathOrigin::Local);
        assert_eq!(origin("é-1.é"), PathOrigin::Dependency);
        assert_eq!(origin("é-1.é/"), PathOrigin::Dependency);
        assert_eq!(origin("x-1é.rs"), PathOrigin::Dependency);
        assert_eq!(origin(""), PathOrigin::Local);
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
