//! Live heap bytes of workload C's training step on the CPU, the counterpart of
//! `benches/torch_memory.py` (PyTorch under the counting `malloc` of
//! `benches/peak_malloc.c`); `scripts/compare-memory.sh` runs both and prints the table.
//!
//! ```text
//! cargo bench --bench memory -- [--batch 2] [--json OUT.json] [--torch TORCH.json]
//! ```
//!
//! The model is `benches/common/tinylm.rs` at issue 8's sizes (d_model 1024, 16 heads,
//! d_ff 4096, sequence 512, vocabulary 1000, dropout 0.1) with a smaller batch (default
//! 2, so a CPU runs a step in about a second), written-out attention and
//! `scaled_dot_product_attention`. A global allocator counts the bytes in use; the CPU
//! buffer cache is off (`set_cpu_cache_limit(0)`), so a freed tensor is freed. After one
//! warm-up step (AdamW's moments exist), a second step reports, above the bytes in use
//! before it: what the forward and the loss keep for the backward, and the peak of the
//! whole step (forward, backward, AdamW, zero_grad). Every activation scales with the
//! batch, so the figures times 32 are the GPU bench's batch of 64 (less for CUDA's 1-byte
//! dropout masks: the CPU keeps them in the tensor's dtype).

use flint::optim::Optimizer;
use flint::prelude::*;
use flint::{manual_seed, set_cpu_cache_limit};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "common/tinylm.rs"]
#[allow(dead_code)] // the FLOP count is the other benches'
mod tinylm;
use tinylm::{loss_and_adamw, TinyLM, TinyLmConfig};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = IN_USE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters are
// only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        IN_USE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, size) };
        if !q.is_null() {
            IN_USE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: f64 = 1024.0 * 1024.0;

fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

/// (MiB kept by the forward, MiB peak of the step), both above the step's start.
fn measure(batch: usize, sdpa: bool) -> (f64, f64) {
    let c = TinyLmConfig {
        v: 1000,
        d: 1024,
        h: 16,
        ff: 4096,
        t: 512,
        b: batch,
        p: 0.1,
    };
    manual_seed(0);
    let tokens = Tensor::randint(0, c.v as i64, [c.b, c.t]);
    let targets = Tensor::randint(0, c.v as i64, [c.b * c.t]);
    let mut model = TinyLM::new(&c, sdpa);
    let (loss_fn, mut opt) = loss_and_adamw(model.parameters(), 3e-4);
    model.train();
    let mut result = (0.0, 0.0);
    for _ in 0..2 {
        let before = IN_USE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let loss = loss_fn.forward(&model.forward(&tokens).view([c.b * c.t, c.v]), &targets);
        let kept = IN_USE.load(Ordering::Relaxed) - before;
        loss.backward();
        drop(loss);
        opt.step();
        opt.zero_grad();
        let peak = PEAK.load(Ordering::Relaxed) - before;
        result = (kept as f64 / MIB, peak as f64 / MIB);
    }
    result
}

fn main() {
    let (mut batch, mut json_out, mut torch) = (2usize, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--batch" => {
                batch = value()
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--batch: {e}")))
            }
            "--json" => json_out = Some(value()),
            "--torch" => torch = Some(value()),
            "--bench" => {}
            s => fail(format!("unknown argument {s:?}")),
        }
    }
    let theirs: Option<Value> = torch.map(|p| {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| fail(format!("{p}: {e}")));
        serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("{p}: {e}")))
    });
    set_cpu_cache_limit(0);
    let mut rows = serde_json::Map::new();
    println!(
        "| step (batch {batch}, d 1024, T 512) | Flint forward keeps MiB | Flint peak MiB | \
         PyTorch forward keeps MiB | PyTorch peak MiB | peak Flint / PyTorch |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for sdpa in [false, true] {
        let name = if sdpa {
            "transformer_train_sdpa"
        } else {
            "transformer_train"
        };
        let (kept, peak) = measure(batch, sdpa);
        let t = theirs.as_ref().and_then(|v| v.get(name));
        let num = |k: &str| t.and_then(|r| r.get(k)).and_then(Value::as_f64);
        let (tk, tp) = (num("kept_mib"), num("peak_mib"));
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "| {name} | {kept:.1} | {peak:.1} | {} | {} | {} |",
            show(tk),
            show(tp),
            tp.map_or("-".to_string(), |p| format!("{:.2}", peak / p))
        );
        rows.insert(
            name.into(),
            json!({"batch": batch, "kept_mib": kept, "peak_mib": peak}),
        );
    }
    if let Some(p) = json_out {
        let text = serde_json::to_string_pretty(&Value::Object(rows)).unwrap_or_default();
        std::fs::write(&p, text).unwrap_or_else(|e| fail(format!("{p}: {e}")));
    }
}
