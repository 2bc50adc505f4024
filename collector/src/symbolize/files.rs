//! Source files of symbolised frames as users read them, and whether a
//! file is awaitscope's own.
//!
//! Debug info names files by the absolute paths they were built from. A
//! program's own file is shown relative to its workspace (the outermost
//! directory above it with a `Cargo.toml`), a dependency's as
//! `crate-version/src/..` and the standard library's as `std/src/..`
//! ([`paths::display`]). A file of the library of a package named
//! `awaitscope` or `awaitscope-wire` (under its `src/`) is ours, wherever it
//! was built from: in a workspace that holds awaitscope as a path
//! dependency (ours does) its files look like the program's own. Its tests
//! and examples are programs like any other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use awaitscope_wire::paths::{self, PathOrigin};

/// Most files and directories remembered; past it the caches start again.
const MAX_CACHED: usize = 1 << 14;

/// The packages whose files are awaitscope's own (the capture and the
/// wire format it writes), by their `Cargo.toml` names.
const OWN_PACKAGES: [&str; 2] = ["awaitscope", "awaitscope-wire"];

/// A file as shown, and whether it is awaitscope's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shown {
    /// As users read it.
    pub path: String,
    /// In one of awaitscope's own packages.
    pub ours: bool,
}

/// Caches of the directories looked at.
#[derive(Default)]
pub(crate) struct Files {
    /// File as recorded -> as shown.
    shown: HashMap<PathBuf, Shown>,
    /// Directory -> the outermost directory above it with a `Cargo.toml`.
    roots: HashMap<PathBuf, Option<PathBuf>>,
    /// Directory -> the package it is in (its nearest `Cargo.toml` with a
    /// `[package]`): its name and directory.
    packages: HashMap<PathBuf, Option<(String, PathBuf)>>,
}

impl Files {
    /// `file` as users read it.
    pub fn show(&mut self, file: &Path) -> Shown {
        if let Some(s) = self.shown.get(file) {
            return s.clone();
        }
        if self.shown.len() >= MAX_CACHED {
            *self = Self::default();
        }
        let raw = file.to_string_lossy();
        let mut path = paths::display(&raw).into_owned();
        let mut ours = false;
        if file.is_absolute() && paths::origin(&raw) == PathOrigin::Local {
            if let Some(dir) = file.parent() {
                if let Some(root) = self.root(dir) {
                    if let Ok(p) = file.strip_prefix(&root) {
                        path = p.to_string_lossy().into_owned();
                    }
                }
                ours = self.package(dir).is_some_and(|(name, root)| {
                    OWN_PACKAGES.contains(&name.as_str()) && file.starts_with(root.join("src"))
                });
            }
        }
        let shown = Shown { path, ours };
        self.shown.insert(file.to_path_buf(), shown.clone());
        shown
    }

    /// The outermost directory at or above `dir` holding a `Cargo.toml`.
    fn root(&mut self, dir: &Path) -> Option<PathBuf> {
        if let Some(r) = self.roots.get(dir) {
            return r.clone();
        }
        let found = dir
            .ancestors()
            .filter(|d| d.join("Cargo.toml").is_file())
            .last()
            .map(Path::to_path_buf);
        self.roots.insert(dir.to_path_buf(), found.clone());
        found
    }

    /// The package `dir` is in, name and directory: the first
    /// `Cargo.toml` at or above it that has a `[package]` table.
    fn package(&mut self, dir: &Path) -> Option<(String, PathBuf)> {
        if let Some(p) = self.packages.get(dir) {
            return p.clone();
        }
        let found = dir.ancestors().find_map(|d| {
            let text = std::fs::read_to_string(d.join("Cargo.toml")).ok()?;
            Some((package_name(&text)?, d.to_path_buf()))
        });
        self.packages.insert(dir.to_path_buf(), found.clone());
        found
    }
}

/// The `name` of a manifest's `[package]` table. By hand: only this one
/// key is needed, and a TOML parser would be a dependency for it.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("name") {
                let v = v.trim_start().strip_prefix('=')?.trim();
                return Some(v.trim_matches(|c| c == '"' || c == '\'').to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_relative_to_the_workspace() {
        let mut f = Files::default();
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/symbolize/files.rs");
        assert_eq!(
            f.show(&here),
            Shown {
                path: "collector/src/symbolize/files.rs".into(),
                ours: false
            }
        );
        let wire = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/src/lib.rs");
        let shown = f.show(&wire.canonicalize().unwrap());
        assert_eq!(shown.path, "wire/src/lib.rs");
        assert!(shown.ours, "awaitscope-wire's library is ours");
        let test = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/golden.rs");
        assert!(
            !f.show(&test.canonicalize().unwrap()).ours,
            "its tests are not"
        );
        assert_eq!(
            f.show(Path::new("/rustc/abc/library/std/src/thread/mod.rs"))
                .path,
            "std/src/thread/mod.rs"
        );
    }

    #[test]
    fn reads_the_package_name() {
        assert_eq!(
            package_name(
                "[workspace]\nmembers = []\n[package]\nversion = \"1\"\nname = \"awaitscope\"\n"
            ),
            Some("awaitscope".into())
        );
        assert_eq!(package_name("[workspace]\nname = \"x\"\n"), None);
    }
}
