//! Compiles every kernel module with NVRTC (no GPU needed) and checks its entry points.
//!
//! NVRTC is loaded at run time (cudarc's `dynamic-loading`). Without it the test prints
//! a `SKIPPED` line and passes — unless `REQUIRE_NVRTC=1`, as in CI, where it fails.
//! Get it with `pip install "nvidia-cuda-nvrtc==13.0.*"` and
//! `export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib`.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use flint_kernels::{KernelModule, COMPILE_OPTIONS, MODULES};
use std::collections::BTreeSet;
use std::io::Write;

/// The architecture compiled for: the H100/H200's. A real `sm_` arch makes NVRTC run
/// ptxas too, so PTX that ptxas rejects (e.g. a bad inline `asm`) fails here.
const ARCH: &str = "sm_90";

/// The newest PTX ISA the 580 driver (CUDA 13.0) loads.
const MAX_PTX_VERSION: (u32, u32) = (9, 0);

/// A line on the real stderr: the test harness captures `eprintln!`, not this.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: only called after is_culib_present() found the library.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// `.visible .entry name(` / `.entry name(` lines of a PTX file.
fn ptx_entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}

/// The `.version X.Y` of a PTX file.
fn ptx_version(ptx: &str) -> Option<(u32, u32)> {
    let v = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))?;
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Compiles one module; an error message (with NVRTC's log) on failure.
fn check_module(m: &KernelModule) -> Result<usize, String> {
    let opts = CompileOptions {
        arch: Some(ARCH),
        options: COMPILE_OPTIONS.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{}.cu", m.name)),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(m.source, opts)
        .map_err(|e| match e {
            CompileError::CompileError {
                nvrtc,
                options,
                log,
            } => format!(
                "module `{}` failed to compile ({nvrtc:?}, options {options:?}); NVRTC log:\n{}",
                m.name,
                log.to_string_lossy()
            ),
            other => format!("module `{}`: NVRTC failed: {other:?}", m.name),
        })?
        .to_src();
    // FLINT_PTX_DUMP=DIR: keep each module's PTX there (to read registers, local memory)
    if let Some(dir) = std::env::var_os("FLINT_PTX_DUMP") {
        let path = std::path::Path::new(&dir).join(format!("{}.ptx", m.name));
        std::fs::write(&path, &ptx).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let found = ptx_entries(&ptx);
    let listed: BTreeSet<String> = m.entries.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = listed.difference(&found).collect();
    let unlisted: Vec<_> = found.difference(&listed).collect();
    if !missing.is_empty() || !unlisted.is_empty() {
        return Err(format!(
            "module `{}`: listed in lib.rs but not in the PTX: {missing:?}; \
             in the PTX but not listed: {unlisted:?}",
            m.name
        ));
    }
    match ptx_version(&ptx) {
        Some(v) if v <= MAX_PTX_VERSION => {}
        v => {
            return Err(format!(
                "module `{}`: PTX version {v:?} is newer than {MAX_PTX_VERSION:?}, which the \
                 580 driver rejects; use NVRTC 13.0 (nvidia-cuda-nvrtc==13.0.*)",
                m.name
            ))
        }
    }
    let slow: Vec<String> = VECTOR_ACCESSES
        .iter()
        .filter(|(module, ..)| *module == m.name)
        .filter_map(|(_, entry, wanted)| {
            let body = entry_body(&ptx, entry)?;
            let missing: Vec<_> = wanted.iter().filter(|w| !body.contains(*w)).collect();
            (!missing.is_empty()).then(|| format!("{entry}: no {missing:?}"))
        })
        .collect();
    if !slow.is_empty() {
        return Err(format!(
            "module `{}`: the packed order of for_runs compiled without vector accesses: {}",
            m.name,
            slow.join("; ")
        ));
    }
    Ok(found.len())
}

/// Entries whose PTX must hold these vector instructions: the packed order of
/// `for_runs` (common.cuh) moves a lane's 4 elements with one access per operand, and
/// it is only faster than the strided order if the compiler really emits one.
const VECTOR_ACCESSES: &[(&str, &str, &[&str])] = &[
    (
        "elementwise",
        "add_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "elementwise",
        "add_assign_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "elementwise",
        "mul_scalar_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "elementwise",
        "gelu_backward_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "elementwise",
        "lt_f32",
        &["ld.global.v4.f32", "st.global.v4.u8"],
    ),
    (
        "elementwise",
        "add_bf16",
        &["ld.global.v4.u16", "st.global.v4.u16"],
    ),
    (
        "elementwise",
        "add_f64",
        &["ld.global.v2.f64", "st.global.v2.f64"],
    ),
    (
        "unary",
        "gelu_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "copy",
        "contiguous_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "copy",
        "copy_f32",
        &["ld.global.v4.f32", "st.global.v4.f32"],
    ),
    ("copy", "fill_f32", &["st.global.v4.f32"]),
    (
        "copy",
        "cast_f32_bf16",
        &["ld.global.v4.f32", "st.global.v4.u16"],
    ),
    (
        "index",
        "masked_fill_f32",
        &["ld.global.v4.u8", "ld.global.v4.f32", "st.global.v4.f32"],
    ),
    (
        "index",
        "where_f32",
        &["ld.global.v4.u8", "ld.global.v4.f32", "st.global.v4.f32"],
    ),
];

/// The PTX text of entry `name` (from its `.entry` line to the closing brace).
fn entry_body<'a>(ptx: &'a str, name: &str) -> Option<&'a str> {
    let start = ptx
        .find(&format!(".visible .entry {name}("))
        .or_else(|| ptx.find(&format!(".entry {name}(")))?;
    let rest = &ptx[start..];
    Some(&rest[..rest.find("\n}\n").map_or(rest.len(), |e| e + 2)])
}

#[test]
fn every_module_compiles_to_sm90_with_exactly_its_listed_entries() {
    // SAFETY: only probes for the library (libloading), calls nothing in it.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        let msg = format!(
            "SKIPPED: NVRTC not found (set LD_LIBRARY_PATH to nvidia/cu13/lib); {} modules not compiled",
            MODULES.len()
        );
        if std::env::var("REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("REQUIRE_NVRTC=1 but NVRTC is missing. {msg}");
        }
        say(&msg);
        return;
    }
    say(&format!(
        "NVRTC {:?}: compiling {} modules for {ARCH}",
        nvrtc_version(),
        MODULES.len()
    ));

    // NVRTC compiles separate programs concurrently; the big modules take ~20 s each.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(MODULES.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(m) = MODULES.get(i) else { break };
                let t = std::time::Instant::now();
                let r = check_module(m);
                if let Ok(n) = &r {
                    say(&format!(
                        "  {:<12} {n:>4} entries  {:.1} s",
                        m.name,
                        t.elapsed().as_secs_f64()
                    ));
                }
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(results.len(), MODULES.len());
    let errors: Vec<String> = results.into_iter().filter_map(|(_, r)| r.err()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn ptx_parsing() {
    let ptx = ".version 9.0\n.target sm_90\n.visible .entry add_f32(\n\t.param .u64 a\n)\n\
               .entry helper_kernel(\n.func (.param .b32 r) f(\n";
    let e = ptx_entries(ptx);
    assert_eq!(
        e.into_iter().collect::<Vec<_>>(),
        ["add_f32", "helper_kernel"]
    );
    assert_eq!(ptx_version(ptx), Some((9, 0)));
    let two = ".visible .entry a(\n)\n{\n\tld.global.v4.f32 x;\n}\n.visible .entry b(\n)\n{\n}\n";
    assert!(entry_body(two, "a").is_some_and(|b| b.contains("v4.f32")));
    assert!(entry_body(two, "b").is_some_and(|b| !b.contains("v4.f32")));
    assert!(entry_body(two, "c").is_none());
    // every entry named there exists
    for (module, entry, _) in VECTOR_ACCESSES {
        let m = flint_kernels::module(module).expect("a kernel module");
        assert!(m.entries.contains(entry), "{module}: {entry}");
    }
    assert!(Some((9, 1)) > Some(MAX_PTX_VERSION));
}

/// ptxas's resource lines (`-Xptxas=-v`) for each entry of a module: entry name → the
/// text of its "N bytes spill stores" and "Used N registers" lines.
fn ptxas_usage(m: &KernelModule) -> Result<Vec<(String, String)>, String> {
    use cudarc::nvrtc::result;
    let src = std::ffi::CString::new(m.source).map_err(|e| e.to_string())?;
    let name = std::ffi::CString::new(format!("{}.cu", m.name)).map_err(|e| e.to_string())?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("{e:?}"))?;
    let mut opts: Vec<String> = COMPILE_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={ARCH}"));
    opts.push("-Xptxas=-v".into());
    // SAFETY: `prog` is a live program; the options are NUL-free strings.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above; the log is read before the program is destroyed.
    let log = unsafe { result::get_program_log(prog) }.map_err(|e| format!("{e:?}"))?;
    // SAFETY: destroyed once, not used after.
    let _ = unsafe { result::destroy_program(prog) };
    let log: String = log
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    compiled.map_err(|e| format!("module `{}`: {e:?}\n{log}", m.name))?;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push((
                rest.split('\'').next().unwrap_or("").to_string(),
                String::new(),
            ));
        } else if let Some((_, text)) = out
            .last_mut()
            .filter(|_| line.contains("spill") || line.contains("Used "))
        {
            let line = line
                .trim_start_matches("ptxas")
                .trim_start_matches([' ', '.']);
            text.push_str(
                line.trim_start_matches("info")
                    .trim_start_matches([' ', ':']),
            );
            text.push_str("; ");
        }
    }
    Ok(out)
}

/// The number before `what` in a ptxas resource line ("16 bytes spill stores").
fn usage_number(text: &str, what: &str) -> Option<u64> {
    let before = &text[..text.find(what)?];
    before.split_whitespace().last()?.parse().ok()
}

/// Whether NVRTC (and so ptxas) is loadable for the resource tests; prints a skip line
/// when not, and panics under `REQUIRE_NVRTC=1`.
fn ptxas_at_hand() -> bool {
    // SAFETY: only probes for the library.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return true;
    }
    if std::env::var("REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("REQUIRE_NVRTC=1 but NVRTC is missing");
    }
    say("SKIPPED: NVRTC not found; ptxas resource usage not checked");
    false
}

/// Checks one entry's ptxas resource text: `Err` (the entry and its figures) when it uses
/// more than `max_regs` registers or spills more than `max_spill` bytes.
fn within(name: &str, text: &str, max_regs: u64, max_spill: u64) -> Result<(), String> {
    let spill = usage_number(text, "bytes spill stores")
        .unwrap_or_else(|| panic!("no spill figure for {name}: {text}"));
    let regs = usage_number(text, "registers")
        .unwrap_or_else(|| panic!("no register figure for {name}: {text}"));
    if spill > max_spill || regs > max_regs {
        return Err(format!("{name}: {regs} registers, {spill} bytes spilled"));
    }
    Ok(())
}

/// The tensor-core attention kernels hold their tiles in registers: ptxas must not spill
/// more than a few bytes of them (a change that makes them spill would slow them down
/// several-fold, which only a GPU would show otherwise). Prints their register use.
#[test]
fn the_tensor_core_attention_kernels_fit_in_registers() {
    if !ptxas_at_hand() {
        return;
    }
    let m = flint_kernels::module("attention").expect("the attention module");
    let usage = ptxas_usage(m).unwrap_or_else(|e| panic!("{e}"));
    let tc: Vec<_> = usage
        .iter()
        .filter(|(name, _)| name.starts_with("attention_tc_"))
        .collect();
    assert_eq!(tc.len(), 9, "ptxas lines of the tc entries: {usage:?}");
    let mut over = Vec::new();
    for (name, text) in tc {
        say(&format!("ptxas {name}: {text}"));
        over.extend(within(name, text, 168, 64).err());
    }
    assert!(
        over.is_empty(),
        "over 168 registers (what the launch bounds allow) or 64 bytes of spill: {over:?}"
    );
}

/// The warp-per-row kernels (softmax and layer norm) hold a row in registers under launch
/// bounds that allow at most 128 a thread for types up to 4 bytes
/// (`FLINT_WARP_ROWS_BOUNDS`): ptxas must fit them without spilling. Prints the f32
/// figures.
#[test]
fn the_warp_row_kernels_fit_in_registers_without_spilling() {
    if !ptxas_at_hand() {
        return;
    }
    let mut seen = 0;
    let mut over = Vec::new();
    for module in ["softmax", "norm"] {
        let m = flint_kernels::module(module).expect("a kernel module");
        for (name, text) in ptxas_usage(m).unwrap_or_else(|e| panic!("{e}")) {
            let Some(k) = name.split("_w").nth(1) else {
                continue;
            };
            if !k.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            seen += 1;
            if name.ends_with("_f32") {
                say(&format!("ptxas {name}: {text}"));
            }
            let most = if name.ends_with("_f64") { 255 } else { 128 };
            over.extend(within(&name, &text, most, 0).err());
        }
    }
    // softmax: 4 kernels × 4 row lengths; layer norm: 2 × 3; four dtypes each
    assert_eq!(seen, (4 * 4 + 2 * 3) * 4, "warp-per-row entries found");
    assert!(
        over.is_empty(),
        "spilled, or over 128 registers (255 for f64): {over:?}"
    );
}
