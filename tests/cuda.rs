//! The CUDA backend: moves between devices, cuBLAS matmul, the caching allocator,
//! autograd across devices, and the errors for what has no kernel yet.
//!
//! Every test that needs a GPU starts with [`gpu`], which prints
//! `SKIPPED (no CUDA): <test> — <reason>` and returns `None` on a machine without one
//! (CI), so the suite passes there by skipping. `scripts/gpu-check.sh` builds this binary
//! for a GPU machine. Run here with `cargo test --features cuda --test cuda`.
#![cfg(feature = "cuda")]

use flint::autograd::{gradcheck, GradcheckOptions};
use flint::half::{bf16, f16};
use flint::nn::{Linear, ModuleExt};
use flint::{cuda, DType, Device, Error, Generator, Tensor};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

/// A CUDA device for one test, held exclusively: the tests of this file run one at a
/// time on the GPU, so the allocator's statistics seen by one test are its own.
struct Gpu {
    device: Device,
    _serial: MutexGuard<'static, ()>,
}

/// Writes `line` to stderr past the test harness's capture (which only takes `print!`
/// and `eprint!`), so a skip is visible in a plain `cargo test` run.
fn skip_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `Some` device when CUDA is available, else prints the skip line and returns `None`.
fn gpu(test: &str) -> Option<Gpu> {
    static SERIAL: Mutex<()> = Mutex::new(());
    match cuda::available() {
        Ok(()) => Some(Gpu {
            device: Device::Cuda(0),
            _serial: SERIAL.lock().unwrap_or_else(|p| p.into_inner()),
        }),
        Err(e) => {
            skip_line(&format!("SKIPPED (no CUDA): {test} — {e}"));
            None
        }
    }
}

fn assert_close(got: &[f64], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn without_cuda_every_entry_point_is_an_error_not_a_panic() {
    let Err(e) = cuda::available() else {
        skip_line("SKIPPED (CUDA present): without_cuda_every_entry_point_is_an_error_not_a_panic");
        return;
    };
    assert!(matches!(e, Error::CudaUnavailable(_)), "{e:?}");
    assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    assert_eq!(cuda::device_count(), 0);
    let cpu = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    for r in [
        Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))),
        Tensor::try_full(&[2], 1.0, (DType::F32, Device::Cuda(0)).into()),
        cpu.try_to(Device::Cuda(0)),
    ] {
        let e = r.unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    }
    let e = cuda::memory_stats(Device::Cuda(0)).unwrap_err();
    assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    let mut lin = Linear::new(2, 3, ());
    let e = lin.to_device(Device::Cuda(0)).unwrap_err();
    assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    assert_eq!(lin.weight.device(), Device::Cpu);
    // the panicking form panics with the same message (a panic, not an abort)
    let p = catch_unwind(|| Tensor::zeros([2], (DType::F32, Device::Cuda(0)))).unwrap_err();
    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("CUDA is not available: "), "{msg}");
}

#[test]
fn memory_stats_of_the_cpu_is_an_error() {
    let e = cuda::memory_stats(Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("expected a CUDA device, got cpu"),
        "{e}"
    );
}

#[test]
fn round_trip_is_bit_identical_for_every_dtype() {
    let Some(g) = gpu("round_trip_is_bit_identical_for_every_dtype") else {
        return;
    };
    let d = g.device;
    let bools = vec![true, false, false, true, true];
    let t = Tensor::from_vec(bools.clone(), [5]).to(d);
    assert_eq!((t.device(), t.dtype()), (d, DType::Bool));
    assert_eq!(t.to(Device::Cpu).to_vec::<bool>(), bools);

    let ints = vec![i64::MIN, -1, 0, 1, i64::MAX, 1 << 40];
    let t = Tensor::from_vec(ints.clone(), [2, 3]).to(d);
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(t.to(Device::Cpu).to_vec::<i64>(), ints);

    let specials = [
        0.0,
        -0.0,
        1.5,
        -2.25,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e-300,
    ];
    let f64s: Vec<f64> = specials.to_vec();
    let back = Tensor::from_vec(f64s.clone(), [8])
        .to(d)
        .to(Device::Cpu)
        .to_vec::<f64>();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&f64s));

    let f32s: Vec<f32> = specials.iter().map(|&x| x as f32).collect();
    let back = Tensor::from_vec(f32s.clone(), [8])
        .to(d)
        .to(Device::Cpu)
        .to_vec::<f32>();
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits32(&back), bits32(&f32s));

    let f16s: Vec<f16> = specials.iter().map(|&x| f16::from_f64(x)).collect();
    let back = Tensor::from_vec(f16s.clone(), [8])
        .to(d)
        .to(Device::Cpu)
        .to_vec::<f16>();
    let bits16 = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits16(&back), bits16(&f16s));

    let bf16s: Vec<bf16> = specials.iter().map(|&x| bf16::from_f64(x)).collect();
    let back = Tensor::from_vec(bf16s.clone(), [8])
        .to(d)
        .to(Device::Cpu)
        .to_vec::<bf16>();
    let bitsb = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bitsb(&back), bitsb(&bf16s));

    // empty and 0-d tensors
    let e = Tensor::zeros([0, 3], ()).to(d);
    assert_eq!((e.shape(), e.device()), (&[0usize, 3][..], d));
    assert_eq!(e.to(Device::Cpu).to_vec::<f32>(), Vec::<f32>::new());
    assert_eq!(Tensor::scalar(7i64).to(d).item::<i64>(), 7);
}

#[test]
fn views_move_with_their_own_elements() {
    let Some(g) = gpu("views_move_with_their_own_elements") else {
        return;
    };
    let d = g.device;
    let a = Tensor::arange(0.0, 12.0, 1.0, DType::F64).reshape([3, 4]);
    // a non-contiguous host view is made contiguous before the upload
    let t = a.t().to(d);
    assert!(t.is_contiguous());
    assert_eq!(t.to_vec::<f64>(), a.t().to_vec::<f64>());
    // a non-contiguous device view is downloaded through the span it covers
    let on = a.to(d);
    assert_eq!(
        on.t().to(Device::Cpu).to_vec::<f64>(),
        a.t().to_vec::<f64>()
    );
    assert_eq!(
        on.narrow(1, 1, 2).to_vec::<f64>(),
        a.narrow(1, 1, 2).to_vec::<f64>()
    );
    assert_eq!(
        on.select(0, 2).unsqueeze(0).expand([2, 4]).to_vec::<f64>(),
        a.select(0, 2).unsqueeze(0).expand([2, 4]).to_vec::<f64>()
    );
    // a contiguous device view is cloned on the device
    let row = on.select(0, 1).deep_clone();
    assert_eq!(
        (row.device(), row.to_vec::<f64>()),
        (d, vec![4.0, 5.0, 6.0, 7.0])
    );
    // CUDA -> same CUDA is the same tensor
    assert!(on.to(d).same_tensor(&on));
    // printing copies to the host
    assert!(on.to_string().contains("device=cuda:0"), "{on}");
}

#[test]
fn zeros_and_full_on_the_device() {
    let Some(g) = gpu("zeros_and_full_on_the_device") else {
        return;
    };
    let d = g.device;
    for dt in [
        DType::Bool,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ] {
        let z = Tensor::zeros([3, 2], (dt, d));
        assert_eq!((z.device(), z.dtype()), (d, dt));
        assert_eq!(z.to_f64_vec(), vec![0.0; 6]);
        let v = if dt == DType::Bool { 1.0 } else { -2.5 };
        let want = Tensor::full([5], v, dt).to_f64_vec();
        assert_eq!(Tensor::full([5], v, (dt, d)).to_f64_vec(), want, "{dt}");
        assert_eq!(
            Tensor::ones([4], (dt, d)).to_f64_vec(),
            vec![1.0; 4],
            "{dt}"
        );
    }
    assert_eq!(
        Tensor::full([2], -0.0, (DType::F32, d)).to_vec::<f32>()[0].to_bits(),
        (-0.0f32).to_bits()
    );
    let r = Tensor::arange(0.0, 4.0, 1.0, (DType::I64, d));
    assert_eq!((r.device(), r.to_vec::<i64>()), (d, vec![0, 1, 2, 3]));
}

fn check_matmul(d: Device, a: &Tensor, b: &Tensor, rtol: f64, what: &str) {
    let want = a.matmul(b);
    let got = a.to(d).matmul(&b.to(d));
    assert_eq!(got.device(), d, "{what}");
    assert_eq!(got.shape(), want.shape(), "{what}");
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    assert_close(&got.to_f64_vec(), &want.to_f64_vec(), rtol, rtol, what);
}

#[test]
fn matmul_matches_the_cpu() {
    let Some(g) = gpu("matmul_matches_the_cpu") else {
        return;
    };
    let d = g.device;
    let mut rng = Generator::new(7);
    for (dt, rtol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
        let mut r = |s: &[usize]| rng.randn(s, dt);
        check_matmul(d, &r(&[5, 7]), &r(&[7, 3]), rtol, "plain");
        check_matmul(d, &r(&[4, 5, 7]), &r(&[4, 7, 3]), rtol, "batched");
        check_matmul(d, &r(&[4, 5, 7]), &r(&[7, 3]), rtol, "b broadcast");
        check_matmul(d, &r(&[5, 7]), &r(&[2, 7, 3]), rtol, "a broadcast");
        check_matmul(
            d,
            &r(&[2, 1, 5, 7]),
            &r(&[1, 3, 7, 3]),
            rtol,
            "both broadcast",
        );
        check_matmul(d, &r(&[7]), &r(&[7, 3]), rtol, "vector @ matrix");
        check_matmul(d, &r(&[5, 7]), &r(&[7]), rtol, "matrix @ vector");
        check_matmul(d, &r(&[7]), &r(&[7]), rtol, "dot");
        check_matmul(d, &r(&[0, 7]), &r(&[7, 3]), rtol, "empty rows");
        check_matmul(d, &r(&[5, 0]), &r(&[0, 3]), rtol, "empty inner dim");
        // transposed views: made contiguous on the host, and read in place on the device
        let (a, b) = (r(&[7, 5]), r(&[3, 7]));
        check_matmul(
            d,
            &a.t().contiguous(),
            &b.t().contiguous(),
            rtol,
            "contiguous",
        );
        let want = a.t().matmul(&b.t());
        let got = a.to(d).t().matmul(&b.to(d).t());
        assert_close(&got.to_f64_vec(), &want.to_f64_vec(), rtol, rtol, "t views");
        let x = r(&[3, 4, 6]);
        let got = x.to(d).transpose(1, 2).matmul(&x.to(d));
        let want = x.transpose(1, 2).matmul(&x);
        assert_close(&got.to_f64_vec(), &want.to_f64_vec(), rtol, rtol, "x^T x");
    }
    // f16 and bf16 accumulate in f32 (inputs exact in both formats)
    let a = Tensor::arange(-6.0, 6.0, 1.0, DType::F64).reshape([3, 4]) * 0.25;
    let b = Tensor::arange(-4.0, 4.0, 1.0, DType::F64).reshape([4, 2]) * 0.5;
    let want = a.matmul(&b).to_f64_vec();
    for dt in [DType::F16, DType::BF16] {
        let got = a.to_dtype(dt).to(d).matmul(&b.to_dtype(dt).to(d));
        assert_eq!(got.dtype(), dt);
        assert_close(&got.to_f64_vec(), &want, 1e-2, 1e-2, "half");
    }
}

#[test]
fn matmul_backward_runs_on_the_device() {
    let Some(g) = gpu("matmul_backward_runs_on_the_device") else {
        return;
    };
    let d = g.device;
    let mut rng = Generator::new(3);
    let (a0, b0) = (rng.randn([4, 5], DType::F64), rng.randn([5, 3], DType::F64));
    let gout = rng.randn([4, 3], DType::F64);
    let a = a0.to(d).requires_grad_(true);
    let b = b0.to(d).requires_grad_(true);
    a.matmul(&b).backward_with(&gout.to(d));
    let (ga, gb) = (a.grad().unwrap(), b.grad().unwrap());
    assert_eq!((ga.device(), gb.device()), (d, d));
    // dA = g Bᵀ, dB = Aᵀ g
    assert_close(
        &ga.to_f64_vec(),
        &gout.matmul(&b0.t()).to_f64_vec(),
        1e-12,
        1e-12,
        "dA",
    );
    assert_close(
        &gb.to_f64_vec(),
        &a0.t().matmul(&gout).to_f64_vec(),
        1e-12,
        1e-12,
        "dB",
    );
}

#[test]
fn moves_are_differentiable_across_devices() {
    let Some(g) = gpu("moves_are_differentiable_across_devices") else {
        return;
    };
    let d = g.device;
    // a CPU leaf through the device and back: the gradient comes home
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 0.5, 4.0, -1.0], [2, 3]).requires_grad_(true);
    let w = Tensor::from_vec(vec![2.0f32, 3.0, -1.0, 0.5, 1.0, 4.0], [2, 3]);
    let y = x.to(d);
    assert_eq!(y.grad_fn().unwrap().name(), "to");
    (&y.to(Device::Cpu) * &w).sum_all().backward();
    let gx = x.grad().unwrap();
    assert_eq!(gx.device(), Device::Cpu);
    assert_eq!(gx.to_vec::<f32>(), w.to_vec::<f32>());
    // a leaf on the device: its gradient stays there
    let p = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3])
        .to(d)
        .requires_grad_(true);
    (p.to(Device::Cpu) * 5.0).sum_all().backward();
    let gp = p.grad().unwrap();
    assert_eq!(gp.device(), d);
    assert_eq!(gp.to_vec::<f64>(), vec![5.0; 3]);
    // and numerically
    let x = Tensor::from_vec(vec![0.3f64, -1.2, 2.0, 0.7], [2, 2]);
    gradcheck(
        |xs| (xs[0].to(d).to(Device::Cpu) * &xs[0]).tanh(),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn modules_move_to_the_device_and_back() {
    let Some(g) = gpu("modules_move_to_the_device_and_back") else {
        return;
    };
    let d = g.device;
    let mut lin = Linear::new(4, 3, ());
    let w = lin.weight.to_vec::<f32>();
    lin.to_device(d).unwrap();
    for (name, p) in lin.named_parameters() {
        assert_eq!(p.device(), d, "{name}");
        assert!(p.is_leaf() && p.requires_grad(), "{name}");
    }
    lin.to_device(Device::Cpu).unwrap();
    assert_eq!(lin.weight.device(), Device::Cpu);
    assert_eq!(lin.weight.to_vec::<f32>(), w);
}

#[test]
fn the_allocator_reuses_freed_blocks() {
    let Some(g) = gpu("the_allocator_reuses_freed_blocks") else {
        return;
    };
    let d = g.device;
    let t = Tensor::zeros([1000], (DType::F32, d)); // 4000 bytes: a 4096-byte block
    let before = cuda::memory_stats(d).unwrap();
    assert!(before.allocated >= 4096 && before.reserved >= before.allocated);
    drop(t);
    let freed = cuda::memory_stats(d).unwrap();
    assert_eq!(freed.allocated, before.allocated - 4096);
    assert_eq!(freed.reserved, before.reserved);
    // the same size again: the cached block, no cuMemAlloc
    let t = Tensor::full([1000], 2.0, (DType::F32, d));
    let again = cuda::memory_stats(d).unwrap();
    assert_eq!(again.reserved, before.reserved);
    assert_eq!(again.allocated, before.allocated);
    assert_eq!(again.driver_allocs, before.driver_allocs);
    assert_eq!(t.to_vec::<f32>(), vec![2.0; 1000]);
    // a loop of same-sized steps allocates from the driver only in its first step
    let step = || {
        let a = Tensor::full([64, 64], 1.0, (DType::F32, d));
        a.matmul(&a).matmul(&a).to(Device::Cpu)
    };
    step();
    let warm = cuda::memory_stats(d).unwrap().driver_allocs;
    for _ in 0..5 {
        assert_eq!(step().to_vec::<f32>()[0], 64.0 * 64.0);
    }
    assert_eq!(cuda::memory_stats(d).unwrap().driver_allocs, warm);
    // empty_cache returns the free blocks to the driver
    drop(t);
    cuda::empty_cache(d).unwrap();
    let s = cuda::memory_stats(d).unwrap();
    assert_eq!(s.reserved, s.allocated);
}

#[test]
fn ops_without_a_cuda_kernel_are_errors_not_panics() {
    let Some(g) = gpu("ops_without_a_cuda_kernel_are_errors_not_panics") else {
        return;
    };
    let d = g.device;
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).to(d);
    let e = x.try_add(&x).unwrap_err();
    assert!(
        matches!(e, Error::NoCudaKernel { op: "add", device } if device == d),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "`add` has no CUDA kernel yet (tensor on cuda:0)"
    );
    let e = x.try_sum(0, false).unwrap_err();
    assert!(e.to_string().contains("has no CUDA kernel yet"), "{e}");
    let e = x
        .try_index_select(0, &Tensor::from_vec(vec![1i64], [1]).to(d))
        .unwrap_err();
    assert!(e.to_string().contains("has no CUDA kernel yet"), "{e}");
    let e = x.t().try_contiguous().unwrap_err();
    assert!(
        e.to_string()
            .contains("`contiguous` has no CUDA kernel yet"),
        "{e}"
    );
    let e = x.try_matmul(&x.to_dtype(DType::F64)).unwrap_err();
    assert!(
        e.to_string().contains("`to_dtype` has no CUDA kernel yet"),
        "{e}"
    );
    // the panicking forms panic with the message (no abort, no read of device memory)
    let p = catch_unwind(AssertUnwindSafe(|| x.exp())).unwrap_err();
    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("has no CUDA kernel yet (tensor on cuda:0)"),
        "{msg}"
    );
    // the tensor is still usable
    assert_eq!(x.to_vec::<f32>(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn tensors_on_two_devices_in_one_op_are_an_error() {
    let Some(g) = gpu("tensors_on_two_devices_in_one_op_are_an_error") else {
        return;
    };
    let d = g.device;
    let cpu = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let dev = cpu.to(d);
    let want = "expected all tensors on one device, got cpu and cuda:0";
    for e in [
        cpu.try_add(&dev).unwrap_err(),
        cpu.try_matmul(&dev).unwrap_err(),
        Tensor::try_cat(&[cpu.clone(), dev.clone()], 0).unwrap_err(),
        cpu.try_where(
            &Tensor::from_vec(vec![true, false, true, true], [2, 2]).to(d),
            0.0,
        )
        .unwrap_err(),
    ] {
        assert!(matches!(e, Error::Device { .. }), "{e:?}");
        assert!(e.to_string().contains(want), "{e}");
    }
}
