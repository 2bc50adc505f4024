//! Which loaded module (the executable, a shared library) holds a sampled
//! address, with its path and build id: what the collector needs to
//! symbolise a stack from the files, so that the program never loads its
//! own debug info.
//!
//! The list comes from `dl_iterate_phdr` (the dynamic loader's own, no file
//! read): each module's load bias, its loaded segments and its build id
//! (read from its `PT_NOTE` segments in memory). It is read again only when
//! an address falls in no known module (a library loaded since).

use awaitscope_wire::{limits, Module, NativeStack, RawFrame, SpanId};

/// One loaded module.
struct Loaded {
    /// Its file, absolute.
    path: String,
    /// Its GNU build id; empty if none.
    build_id: Vec<u8>,
    /// What its addresses in the file are moved by in memory.
    bias: u64,
    /// Its loaded segments in memory: `[start, end)`.
    segments: Vec<(u64, u64)>,
}

/// The modules of this process, as last read.
#[derive(Default)]
pub(crate) struct Modules {
    loaded: Vec<Loaded>,
}

impl Modules {
    /// The sampled addresses `addrs` (innermost first; `exact_first`: the
    /// first is the interrupted instruction, the others return addresses)
    /// as a [`NativeStack`] of the poll `(task, start)`, listing only the
    /// modules its frames are in.
    pub fn stack(
        &mut self,
        task: SpanId,
        start: u64,
        ts: u64,
        addrs: &[usize],
        exact_first: bool,
    ) -> NativeStack {
        // The walk ends on a null return address (the thread's start).
        let end = addrs.iter().position(|&a| a == 0).unwrap_or(addrs.len());
        let addrs = &addrs[..end.min(limits::MAX_STACK)];
        if addrs.iter().any(|&a| self.find(a as u64).is_none()) {
            self.loaded = read_loaded();
        }
        let mut modules: Vec<Module> = Vec::new();
        // Index in `self.loaded` -> index in `modules`.
        let mut listed: Vec<(usize, u32)> = Vec::new();
        let frames = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                // A return address is the instruction after the call: the
                // call is the byte before it.
                let a = a as u64;
                let probe = if i == 0 && exact_first {
                    a
                } else {
                    a.saturating_sub(1)
                };
                let Some(m) = self.find(a) else {
                    return RawFrame {
                        module: None,
                        address: probe,
                    };
                };
                let index = match listed.iter().find(|(l, _)| *l == m) {
                    Some(&(_, index)) => index,
                    None => {
                        let l = &self.loaded[m];
                        modules.push(Module {
                            path: l.path.clone(),
                            build_id: l.build_id.clone(),
                        });
                        let index = modules.len() as u32 - 1;
                        listed.push((m, index));
                        index
                    }
                };
                RawFrame {
                    module: Some(index),
                    address: probe.wrapping_sub(self.loaded[m].bias),
                }
            })
            .collect();
        NativeStack {
            task,
            start,
            ts,
            modules,
            frames,
        }
    }

    /// The module whose loaded segments hold `addr`.
    fn find(&self, addr: u64) -> Option<usize> {
        self.loaded
            .iter()
            .position(|m| m.segments.iter().any(|&(s, e)| (s..e).contains(&addr)))
    }
}

/// The modules the dynamic loader has loaded now. Modules without a file
/// (the vDSO) are left out: nothing could symbolise them from a path.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn read_loaded() -> Vec<Loaded> {
    use std::ffi::CStr;

    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader hands a valid `dl_phdr_info` for the call, and
        // `data` is the `Vec` passed below.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut Vec<Loaded>)) };
        let name = if info.dlpi_name.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_str()
                .unwrap_or("")
        };
        // The executable has an empty name.
        let path = if name.is_empty() && out.is_empty() {
            std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            name.to_owned()
        };
        if !path.starts_with('/') {
            return 0; // the vDSO, or a module without a file
        }
        let bias = info.dlpi_addr;
        let mut segments = Vec::new();
        let mut build_id = Vec::new();
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = bias.wrapping_add(ph.p_vaddr);
            match ph.p_type {
                libc::PT_LOAD => segments.push((start, start.wrapping_add(ph.p_memsz))),
                libc::PT_NOTE if build_id.is_empty() => {
                    // SAFETY: a note segment is loaded (it lies within a
                    // loaded segment) and `p_memsz` long.
                    let notes = unsafe {
                        std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize)
                    };
                    build_id = gnu_build_id(notes).unwrap_or_default();
                }
                _ => {}
            }
        }
        out.push(Loaded {
            path,
            build_id,
            bias,
            segments,
        });
        0
    }

    let mut out: Vec<Loaded> = Vec::new();
    // SAFETY: `each` only reads what the loader hands it and writes `out`.
    unsafe {
        libc::dl_iterate_phdr(
            Some(each),
            &mut out as *mut Vec<Loaded> as *mut libc::c_void,
        );
    }
    out
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn read_loaded() -> Vec<Loaded> {
    Vec::new()
}

/// The `NT_GNU_BUILD_ID` note's bytes in a note segment. ELF notes: a
/// name size, a descriptor size and a type (4 bytes each, native order),
/// then the name and the descriptor, each padded to 4 bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc[..desc.len().min(limits::MAX_BUILD_ID)].to_vec());
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_build_id_note_after_another() {
        let mut notes = Vec::new();
        // An ABI tag note first: name "GNU\0", 16 bytes of descriptor.
        notes.extend(4u32.to_ne_bytes());
        notes.extend(16u32.to_ne_bytes());
        notes.extend(1u32.to_ne_bytes());
        notes.extend(b"GNU\0");
        notes.extend([0; 16]);
        notes.extend(4u32.to_ne_bytes());
        notes.extend(3u32.to_ne_bytes());
        notes.extend(3u32.to_ne_bytes());
        notes.extend(b"GNU\0");
        notes.extend([0xab, 0xcd, 0xef, 0]);
        assert_eq!(gnu_build_id(&notes), Some(vec![0xab, 0xcd, 0xef]));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }

    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_function_of_this_binary_is_in_the_executable() {
        let mut m = Modules::default();
        let here = a_function_of_this_binary_is_in_the_executable as *const () as usize;
        let exe = std::env::current_exe().unwrap();
        let st = m.stack(SpanId(1), 2, 3, &[here, here + 1, 8, 0, 9], true);
        assert_eq!(st.modules[0].path, exe.to_string_lossy());
        assert!(
            !st.modules[0].build_id.is_empty(),
            "rustc links with a build id here"
        );
        assert_eq!(st.frames[0].module, Some(0));
        // The exact address, then a return address looked up one before.
        assert_eq!(st.frames[1].address, st.frames[0].address);
        assert_eq!(
            st.frames[2],
            RawFrame {
                module: None,
                address: 7
            }
        );
        assert_eq!(st.modules.len(), 1);
        assert_eq!(st.frames.len(), 3, "nothing after a null address");
    }
}
