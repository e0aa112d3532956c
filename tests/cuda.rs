//! The CUDA backend: moves between devices, cuBLAS matmul, the caching allocator,
//! autograd across devices, the fused attention against the CPU's, and the errors for
//! what has no kernel yet.
//!
//! Every test that needs a GPU starts with [`gpu`], which prints
//! `SKIPPED (no CUDA): <test> — <reason>` and returns `None` on a machine without one
//! (CI), so the suite passes there by skipping. `scripts/gpu-check.sh` builds this binary
//! for a GPU machine. Run here with `cargo test --features cuda --test cuda`.
#![cfg(feature = "cuda")]

use flint::autograd::{gradcheck, GradcheckOptions};
use flint::half::{bf16, f16};
use flint::loss::CrossEntropy;
use flint::nn::functional::{
    batch_norm, dropout, feature_dropout, layer_norm, linear, scaled_dot_product_attention,
    RunningStats,
};
use flint::nn::{
    adaptive_avg_pool2d, avg_pool2d, conv1d, conv2d, fold, max_pool2d, unfold, Embedding, Forward,
    Linear, ModuleExt, RecurrentConfig, VariationalDropout, GRU, LSTM,
};
use flint::optim::{Adam, Optimizer, Sgd};
use flint::{
    causal_mask, cuda, manual_seed, All, DType, Device, Error, GeluApprox, Generator, Tensor,
};
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

/// The lock that runs this file's tests one at a time: the GPU tests (through [`gpu`])
/// and the CPU tests that seed the global generator (`manual_seed` then a draw must not
/// interleave with another test's).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Some` device when CUDA is available, else prints the skip line and returns `None`.
fn gpu(test: &str) -> Option<Gpu> {
    match cuda::available() {
        Ok(()) => Some(Gpu {
            device: Device::Cuda(0),
            _serial: serial(),
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
    let x = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]).to(d);
    // an i64 matrix product (cuBLAS multiplies floats only) has no kernel
    let e = x.try_matmul(&x).unwrap_err();
    assert!(
        matches!(e, Error::NoCudaKernel { op: "matmul", device } if device == d),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "`matmul` has no CUDA kernel yet (tensor on cuda:0)"
    );
    let e = catch_unwind(AssertUnwindSafe(|| x.matmul(&x))).unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    // the panicking forms panic with the message (no abort, no read of device memory)
    assert!(
        msg.contains("`matmul` has no CUDA kernel yet (tensor on cuda:0)"),
        "{msg}"
    );
    // the tensor is still usable
    assert_eq!(x.to_vec::<i64>(), vec![1, 2, 3, 4]);
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

/// An op of the parity table, applied to its inputs.
type ParityOp = Box<dyn Fn(&[Tensor]) -> Tensor>;
/// One op of the parity table: a name, the inputs (made on the CPU) and the op.
type ParityCase = (&'static str, Vec<Tensor>, ParityOp);

/// The parity cases of every op wired to a CUDA kernel, for one float dtype.
fn parity_cases(dt: DType) -> Vec<ParityCase> {
    let mut rng = Generator::new(11);
    let mut r = |shape: &[usize]| rng.randn(shape, DType::F64).to_dtype(dt);
    let (a, b, row) = (r(&[3, 4]), r(&[3, 4]), r(&[4]));
    let at = r(&[4, 3]); // .t() gives a non-contiguous [3, 4]
    let x3 = r(&[2, 3, 5]);
    let pos = a.abs() + 0.25;
    let ids = Tensor::from_vec(vec![2i64, 0, 2, 1], [4]);
    let gidx = Tensor::from_vec(vec![0i64, 3, 1, 1, 2, 0, 3, 3, 0], [3, 3]);
    let mask = Tensor::from_vec(vec![true, false, false, true], [4]);
    let cond = a.gt(0.0);
    let case = |name: &'static str, inputs: Vec<Tensor>, f: ParityOp| (name, inputs, f);
    let mut v: Vec<ParityCase> = vec![
        case(
            "add (broadcast row)",
            vec![a.clone(), row.clone()],
            Box::new(|t| &t[0] + &t[1]),
        ),
        case(
            "sub (non-contiguous)",
            vec![a.clone(), at.clone()],
            Box::new(|t| &t[0] - t[1].t()),
        ),
        case(
            "mul (broadcast col)",
            vec![a.clone(), r(&[3, 1])],
            Box::new(|t| &t[0] * &t[1]),
        ),
        case(
            "div",
            vec![a.clone(), pos.clone()],
            Box::new(|t| &t[0] / &t[1]),
        ),
        case(
            "pow",
            vec![pos.clone(), b.clone()],
            Box::new(|t| t[0].pow(&t[1])),
        ),
        case(
            "maximum",
            vec![a.clone(), b.clone()],
            Box::new(|t| t[0].maximum(&t[1])),
        ),
        case(
            "minimum (non-contiguous)",
            vec![a.clone(), at.clone()],
            Box::new(|t| t[0].minimum(t[1].t())),
        ),
        case("add_scalar", vec![a.clone()], Box::new(|t| &t[0] + 1.5)),
        case("rsub_scalar", vec![a.clone()], Box::new(|t| 1.5 - &t[0])),
        case(
            "mul_scalar (non-contiguous)",
            vec![at.clone()],
            Box::new(|t| t[0].t() * -0.75),
        ),
        case("div_scalar", vec![a.clone()], Box::new(|t| &t[0] / 3.0)),
        case("pow_scalar", vec![a.clone()], Box::new(|t| t[0].pow(2.0))),
        case(
            "maximum_scalar",
            vec![a.clone()],
            Box::new(|t| t[0].maximum(0.1)),
        ),
        case(
            "clamp",
            vec![a.clone()],
            Box::new(|t| t[0].clamp(-0.5, 0.5)),
        ),
        case("exp", vec![a.clone()], Box::new(|t| t[0].exp())),
        case("log", vec![pos.clone()], Box::new(|t| t[0].log())),
        case("sqrt", vec![pos.clone()], Box::new(|t| t[0].sqrt())),
        case("rsqrt", vec![pos.clone()], Box::new(|t| t[0].rsqrt())),
        case(
            "tanh (non-contiguous)",
            vec![at.clone()],
            Box::new(|t| t[0].t().tanh()),
        ),
        case("sigmoid", vec![a.clone()], Box::new(|t| t[0].sigmoid())),
        case("silu", vec![a.clone()], Box::new(|t| t[0].silu())),
        case("sin", vec![a.clone()], Box::new(|t| t[0].sin())),
        case("cos", vec![a.clone()], Box::new(|t| t[0].cos())),
        case(
            "reciprocal",
            vec![pos.clone()],
            Box::new(|t| t[0].reciprocal()),
        ),
        case("floor", vec![&a * 3.0], Box::new(|t| t[0].floor())),
        case("ceil", vec![&a * 3.0], Box::new(|t| t[0].ceil())),
        case("round", vec![&a * 3.0], Box::new(|t| t[0].round())),
        case("erf", vec![a.clone()], Box::new(|t| t[0].erf())),
        case(
            "gelu",
            vec![a.clone()],
            Box::new(|t| t[0].gelu(GeluApprox::None)),
        ),
        case(
            "gelu_tanh",
            vec![a.clone()],
            Box::new(|t| t[0].gelu(GeluApprox::Tanh)),
        ),
        case("neg", vec![a.clone()], Box::new(|t| t[0].neg())),
        case("abs", vec![a.clone()], Box::new(|t| t[0].abs())),
        case("sign", vec![a.clone()], Box::new(|t| t[0].sign())),
        case("relu", vec![a.clone()], Box::new(|t| t[0].relu())),
        case(
            "eq",
            vec![a.clone(), a.where_(&cond, 0.0)],
            Box::new(|t| t[0].eq(&t[1]).to_dtype(DType::F64)),
        ),
        case(
            "ne",
            vec![a.clone(), a.where_(&cond, 0.0)],
            Box::new(|t| t[0].ne(&t[1]).to_dtype(DType::F64)),
        ),
        case(
            "lt (broadcast)",
            vec![a.clone(), row.clone()],
            Box::new(|t| t[0].lt(&t[1]).to_dtype(DType::F64)),
        ),
        case(
            "le",
            vec![a.clone()],
            Box::new(|t| t[0].le(0.0).to_dtype(DType::F64)),
        ),
        case(
            "gt",
            vec![a.clone(), b.clone()],
            Box::new(|t| t[0].gt(&t[1]).to_dtype(DType::F64)),
        ),
        case(
            "ge",
            vec![a.clone(), b.clone()],
            Box::new(|t| t[0].ge(&t[1]).to_dtype(DType::F64)),
        ),
        case(
            "logical_and/or/xor/not",
            vec![a.clone(), b.clone()],
            Box::new(|t| {
                let (p, q) = (t[0].gt(0.0), t[1].gt(0.0));
                let s = p.logical_and(&q).to_dtype(DType::I64)
                    + p.logical_or(&q).to_dtype(DType::I64) * 2
                    + p.logical_xor(&q).to_dtype(DType::I64) * 4
                    + p.logical_not().to_dtype(DType::I64) * 8;
                s.to_dtype(DType::F64)
            }),
        ),
        case(
            "where (broadcast)",
            vec![a.clone(), row.clone()],
            Box::new(|t| t[0].where_(&t[0].gt(0.0), &t[1])),
        ),
        case(
            "masked_fill (broadcast)",
            vec![a.clone(), mask.clone()],
            Box::new(|t| t[0].masked_fill(&t[1], -1e9)),
        ),
        case(
            "cast to f16",
            vec![a.clone()],
            Box::new(|t| t[0].to_dtype(DType::F16).to_dtype(DType::F64)),
        ),
        case(
            "cast to bf16",
            vec![a.clone()],
            Box::new(|t| t[0].to_dtype(DType::BF16).to_dtype(DType::F64)),
        ),
        case(
            "cast to i64",
            vec![&a * 5.0],
            Box::new(|t| t[0].to_dtype(DType::I64).to_dtype(DType::F64)),
        ),
        case(
            "cast to bool",
            vec![a.round()],
            Box::new(|t| t[0].to_dtype(DType::Bool).to_dtype(DType::F64)),
        ),
        case(
            "contiguous (permute)",
            vec![x3.clone()],
            Box::new(|t| t[0].permute([2, 0, 1]).contiguous()),
        ),
        case(
            "contiguous (step slice)",
            vec![x3.clone()],
            Box::new(|t| t[0].try_slice(2, 0, 5, 2).unwrap().contiguous()),
        ),
        case(
            "copy_ into a view",
            vec![a.clone(), row.clone()],
            Box::new(|t| {
                let z = t[0].deep_clone();
                z.narrow(1, 1, 2).copy_(&t[1].narrow(0, 0, 2));
                z
            }),
        ),
        case(
            "fill_ a column",
            vec![a.clone()],
            Box::new(|t| {
                let z = t[0].deep_clone();
                z.select(1, 2).fill_(7.0);
                z
            }),
        ),
        case(
            "sum dim 1",
            vec![x3.clone()],
            Box::new(|t| t[0].sum(1, false)),
        ),
        case(
            "sum dims [0, 2] (non-contiguous)",
            vec![x3.clone()],
            Box::new(|t| t[0].permute([1, 0, 2]).sum([0, 2], true)),
        ),
        case(
            "sum all",
            vec![x3.clone()],
            Box::new(|t| t[0].sum(All, false)),
        ),
        case(
            "mean dim 0",
            vec![x3.clone()],
            Box::new(|t| t[0].mean(0, false)),
        ),
        case(
            "max dim 2",
            vec![x3.clone()],
            Box::new(|t| t[0].max(2, false)),
        ),
        case(
            "min dims [0, 1]",
            vec![x3.clone()],
            Box::new(|t| t[0].min([0, 1], false)),
        ),
        case(
            "argmax dim 1",
            vec![x3.clone()],
            Box::new(|t| t[0].argmax(1, false).to_dtype(DType::F64)),
        ),
        case(
            "argmin dim 0",
            vec![x3.clone()],
            Box::new(|t| t[0].argmin(0, true).to_dtype(DType::F64)),
        ),
        case(
            "var dim 2",
            vec![x3.clone()],
            Box::new(|t| t[0].var(2, 1, false)),
        ),
        case(
            "logsumexp dim 1",
            vec![x3.clone()],
            Box::new(|t| t[0].logsumexp(1, false)),
        ),
        case(
            "softmax dim -1",
            vec![x3.clone()],
            Box::new(|t| t[0].softmax(-1)),
        ),
        case(
            "softmax dim 0 (masked -inf)",
            vec![a.clone(), mask.clone()],
            Box::new(|t| t[0].masked_fill(&t[1], f64::NEG_INFINITY).softmax(0)),
        ),
        case(
            "log_softmax dim -1",
            vec![x3.clone()],
            Box::new(|t| t[0].log_softmax(-1)),
        ),
        case(
            "index_select dim 0 (embedding)",
            vec![a.clone(), ids.clone()],
            Box::new(|t| t[0].index_select(0, &t[1])),
        ),
        case(
            "index_select dim 1",
            vec![a.clone(), ids.narrow(0, 0, 3)],
            Box::new(|t| t[0].index_select(1, &t[1])),
        ),
        case(
            "gather dim 1",
            vec![a.clone(), gidx.clone()],
            Box::new(|t| t[0].gather(1, &t[1])),
        ),
        case(
            "scatter_add dim 1",
            vec![a.clone(), gidx.clone(), r(&[3, 3])],
            Box::new(|t| t[0].scatter_add(1, &t[1], &t[2])),
        ),
        case(
            "index_add dim 1 (repeated index, transposed src)",
            vec![a.clone(), ids.clone(), r(&[4, 3])],
            Box::new(|t| t[0].index_add(1, &t[1], &t[2].t())),
        ),
        case(
            "scatter_add dim 0 (partial index)",
            vec![
                a.clone(),
                Tensor::from_vec(vec![2i64, 0, 1, 2], [2, 2]),
                r(&[3, 3]),
            ],
            Box::new(|t| t[0].scatter_add(0, &t[1], &t[2])),
        ),
        case(
            "cat dim 1",
            vec![a.clone(), r(&[3, 2])],
            Box::new(|t| Tensor::cat(&[&t[0], &t[1]], 1)),
        ),
        case(
            "stack dim 0 (non-contiguous)",
            vec![a.clone(), at.clone()],
            Box::new(|t| Tensor::stack(&[t[0].clone(), t[1].t()], 0)),
        ),
        case(
            "triu",
            vec![x3.clone()],
            Box::new(|t| t[0].narrow(2, 0, 3).triu(1)),
        ),
        case("tril", vec![x3.clone()], Box::new(|t| t[0].tril(-1))),
        case(
            "causal mask fill",
            vec![r(&[4, 4])],
            Box::new(|t| {
                let m = Tensor::ones([4, 4], (DType::Bool, t[0].device())).triu(1);
                t[0].masked_fill(&m, f64::NEG_INFINITY).softmax(-1)
            }),
        ),
        case(
            "arange",
            vec![a.clone()],
            Box::new(|t| Tensor::arange(-2.0, 3.0, 0.5, (t[0].dtype(), t[0].device()))),
        ),
        case(
            "matmul (batched, transposed)",
            vec![x3.clone(), r(&[2, 4, 5])],
            Box::new(|t| t[0].matmul(&t[1].transpose(1, 2))),
        ),
        case(
            "layer_norm",
            vec![x3.clone(), r(&[5]), r(&[5])],
            Box::new(|t| layer_norm(&t[0], &[5], Some(&t[1]), Some(&t[2]), 1e-5).unwrap()),
        ),
    ];
    // the warp-per-row softmax and layer norm kernels (rows of 512 and 1024: 16 and 32 a
    // lane), forward and backward: rows 16-byte aligned (the vector order) and at an
    // odd element offset (the scalar order)
    let rows = 3usize;
    for (cols, off) in [(512usize, 0usize), (512, 1), (1024, 0), (1024, 1)] {
        let rows_of = move |t: &Tensor| t.narrow(0, off, rows * cols).view([rows, cols]);
        let names: [&'static str; 2] = match (cols, off) {
            (512, 0) => [
                "softmax fwd+bwd, rows of 512, aligned",
                "layer_norm fwd+bwd, rows of 512, aligned",
            ],
            (512, _) => [
                "softmax fwd+bwd, rows of 512, offset 1",
                "layer_norm fwd+bwd, rows of 512, offset 1",
            ],
            (_, 0) => [
                "softmax fwd+bwd, rows of 1024, aligned",
                "layer_norm fwd+bwd, rows of 1024, aligned",
            ],
            _ => [
                "softmax fwd+bwd, rows of 1024, offset 1",
                "layer_norm fwd+bwd, rows of 1024, offset 1",
            ],
        };
        let (x, gy) = (r(&[rows * cols + 1]), r(&[rows * cols + 1]));
        v.push(case(
            names[0],
            vec![x.clone(), gy.clone()],
            Box::new(move |t| {
                let x = rows_of(&t[0]).detach().requires_grad_(true);
                let (y, ly) = (x.softmax(-1), x.log_softmax(-1));
                let loss = (&y * &rows_of(&t[1])).sum_all() + (&ly * &rows_of(&t[1])).sum_all();
                let g = flint::autograd::grad(&[loss], &[x], None, false, false).unwrap();
                Tensor::cat(&[y, ly, g[0].clone().unwrap()], 0)
            }),
        ));
        v.push(case(
            names[1],
            vec![x, gy, r(&[cols]), r(&[cols])],
            Box::new(move |t| {
                let x = rows_of(&t[0]).detach().requires_grad_(true);
                let y = layer_norm(&x, &[cols], Some(&t[2]), Some(&t[3]), 1e-5).unwrap();
                let loss = (&y * &rows_of(&t[1])).sum_all();
                let g = flint::autograd::grad(&[loss], &[x], None, false, false).unwrap();
                Tensor::cat(&[y, g[0].clone().unwrap()], 0)
            }),
        ));
    }
    // the elementwise loop's packed order (rows of 256: chunks of 128 with a lane's 4
    // elements consecutive, vector accesses) on aligned rows, and its strided order on
    // rows at an odd element offset: binary ops with a broadcast row and column, scalar
    // and unary ops, the GELU backward, comparisons, masks, casts, copies, fills and an
    // in-place add
    let cols = 256usize;
    for off in [0usize, 1] {
        let name = if off == 0 {
            "elementwise, rows of 256, aligned"
        } else {
            "elementwise, rows of 256, offset 1"
        };
        let rows_of = move |t: &Tensor| t.narrow(0, off, rows * cols).view([rows, cols]);
        let keep: Vec<bool> = (0..cols).map(|i| i % 3 == 0).collect();
        v.push(case(
            name,
            vec![
                r(&[rows * cols + 1]),
                r(&[cols]),
                r(&[rows, 1]),
                Tensor::from_vec(keep, [cols]),
                r(&[rows * cols + 1]),
            ],
            Box::new(move |t| {
                let a = rows_of(&t[0]).detach().requires_grad_(true);
                let (row, col, mask) = (&t[1], &t[2], &t[3]);
                let s = &(&a + row) * col;
                let y = s.gelu(GeluApprox::None);
                let loss = (&y * &rows_of(&t[4])).sum_all();
                let g =
                    flint::autograd::grad(&[loss], std::slice::from_ref(&a), None, false, false)
                        .unwrap();
                let a = a.detach();
                let acc = rows_of(&t[4]).contiguous();
                acc.add_(&a);
                let z = Tensor::zeros([rows, cols + 4], a.dtype()).to(a.device());
                z.narrow(1, 4, cols).copy_(&a);
                z.narrow(1, 0, 4).fill_(0.5);
                let parts = [
                    s,
                    y,
                    g[0].clone().unwrap(),
                    &a * 0.75 - 1.0,
                    a.exp(),
                    a.masked_fill(mask, -1e9),
                    a.where_(mask, row),
                    a.lt(row).to_dtype(a.dtype()),
                    a.to_dtype(DType::BF16).to_dtype(a.dtype()),
                    acc,
                    z,
                ];
                Tensor::cat(&parts.map(|p| p.reshape([-1])), 0)
            }),
        ));
    }
    // sliding windows (the `window` kernels): convolution, pooling, unfold/fold
    let img = r(&[2, 4, 7, 6]);
    v.extend([
        case(
            "conv2d (stride, padding, dilation, bias)",
            vec![img.clone(), r(&[5, 4, 3, 2]), r(&[5])],
            Box::new(|t| conv2d(&t[0], &t[1], Some(&t[2]), [2, 1], [1, 0], [1, 2], 1).unwrap()),
        ),
        case(
            "conv2d (groups, non-contiguous input)",
            vec![img.clone(), r(&[6, 2, 3, 3])],
            Box::new(|t| conv2d(&t[0].transpose(2, 3), &t[1], None, 1, 1, 1, 2).unwrap()),
        ),
        case(
            "conv1d",
            vec![x3.clone(), r(&[2, 3, 2])],
            Box::new(|t| conv1d(&t[0], &t[1], None, 1, 1, 1, 1).unwrap()),
        ),
        case(
            "max_pool2d (padding, ceil mode)",
            vec![img.clone()],
            Box::new(|t| max_pool2d(&t[0], 3, 2, 1, 1, true).unwrap()),
        ),
        case(
            "avg_pool2d (padding not counted)",
            vec![img.clone()],
            Box::new(|t| avg_pool2d(&t[0], 2, 2, 1, false, false, None).unwrap()),
        ),
        case(
            "adaptive_avg_pool2d",
            vec![img.clone()],
            Box::new(|t| adaptive_avg_pool2d(&t[0], [3, 2]).unwrap()),
        ),
        case(
            "batch_norm (training, batch statistics)",
            vec![img.clone(), r(&[4]), r(&[4])],
            Box::new(|t| batch_norm(&t[0], None, Some(&t[1]), Some(&t[2]), true, 1e-5).unwrap()),
        ),
        case(
            "batch_norm (evaluation, running statistics)",
            vec![img.clone(), r(&[4]), r(&[4]).abs() + 0.5, r(&[4])],
            Box::new(|t| {
                let tracked = Tensor::zeros([], (DType::I64, t[0].device()));
                let stats = RunningStats {
                    mean: &t[1],
                    var: &t[2],
                    num_batches_tracked: &tracked,
                    momentum: Some(0.1),
                };
                batch_norm(&t[0], Some(stats), Some(&t[3]), None, false, 1e-5).unwrap()
            }),
        ),
        case(
            "unfold/fold",
            vec![img.clone()],
            Box::new(|t| {
                let cols = unfold(&t[0], [2, 3], 1, 1, [1, 2]).unwrap();
                fold(&cols, [7, 6], [2, 3], 1, 1, [1, 2]).unwrap()
            }),
        ),
    ]);
    // reductions over wide rows (the `*_cols` kernels: one launch, and row chunks)
    let tall = r(&[300, 40]);
    v.extend([
        case(
            "sum dim 0 (columns, chunked rows)",
            vec![tall.clone()],
            Box::new(|t| t[0].sum(0, false)),
        ),
        case(
            "max/min dim 1 of [3, 70, 20] (columns)",
            vec![r(&[3, 70, 20])],
            Box::new(|t| t[0].max(1, false) + t[0].min(1, false)),
        ),
        case(
            "mean dims [0, 1] of [6, 50, 33] (columns)",
            vec![r(&[6, 50, 33])],
            Box::new(|t| t[0].mean([0, 1], false)),
        ),
    ]);
    // prod (one block per output, and the column kernels) and masked_select
    v.extend([
        case(
            "prod dim 1, prod dims [0, 1] (columns)",
            vec![r(&[3, 4, 20])],
            Box::new(|t| {
                let y = (t[0].abs() * 0.1 + 0.95).to_dtype(t[0].dtype());
                y.prod(2, false).sum(All, false) + y.prod(1, false).sum(All, false)
            }),
        ),
        case(
            "masked_select (broadcast mask)",
            vec![x3.clone()],
            Box::new(|t| {
                let m = t[0].sum(0, true).gt(0.0);
                t[0].masked_select(&m) * 2.0
            }),
        ),
    ]);
    // a linear layer with a bias (f32: cuBLASLt's bias epilogue; f64: product + add),
    // on a transposed 3-D input and on a bias that is a slice of a larger tensor
    v.push(case(
        "linear with bias (3-D transposed input)",
        vec![r(&[2, 5, 3]), r(&[4, 5]), r(&[6])],
        Box::new(|t| {
            let x = t[0].transpose(1, 2);
            linear(&x, &t[1], Some(&t[2].narrow(0, 1, 4))).unwrap()
                + linear(&x.contiguous(), &t[1], Some(&t[2].narrow(0, 2, 4))).unwrap()
        }),
    ));
    // per-head views of a fused projection (an uneven batch of matrices: copied first)
    v.push(case(
        "matmul of per-head views [2, 3, 4, 5]",
        vec![r(&[2, 4, 45])],
        Box::new(|t| {
            let heads = |z: &Tensor| z.view([2, 4, 3, 5]).transpose(1, 2);
            let qkv = t[0].split(15, -1);
            heads(&qkv[0])
                .matmul(&heads(&qkv[1]).transpose(-2, -1))
                .matmul(&heads(&qkv[2]))
        }),
    ));
    // i64 ops on the same path
    let ints = Tensor::from_vec(vec![3i64, -1, 4, 1, -5, 9], [2, 3]);
    v.push(case(
        "add/mul/neg/relu i64",
        vec![ints.clone()],
        Box::new(|t| {
            ((&t[0] + &t[0].t().contiguous().t()) * 3 - t[0].neg().relu()).to_dtype(DType::F64)
        }),
    ));
    v.push(case(
        "sum/max/argmax i64",
        vec![ints],
        Box::new(|t| {
            let s = t[0].sum(1, false) + t[0].max(0, false).sum(0, true) + t[0].argmax(1, false);
            s.to_dtype(DType::F64)
        }),
    ));
    v
}

/// The fused optimizer kernels (`adam_<dt>`, `sgd_<dt>`) step a parameter as the CPU
/// does: SGD with momentum, Nesterov and weight decay; AdamW with AMSGrad; three steps
/// each, the parameters compared after every step.
#[test]
fn fused_optimizer_steps_match_the_cpu() {
    let Some(g) = gpu("fused_optimizer_steps_match_the_cpu") else {
        return;
    };
    let d = g.device;
    let run = |device: Device, adam: bool| -> Vec<Vec<f64>> {
        let mut rng = Generator::new(5);
        let p = rng
            .randn([7, 5], DType::F32)
            .to(device)
            .requires_grad_(true);
        let target = rng.randn([7, 5], DType::F32).to(device);
        let mut out = Vec::new();
        let mut step = |opt: &mut dyn Optimizer| {
            for _ in 0..3 {
                opt.zero_grad();
                ((&p - &target) * (&p - &target)).sum(All, false).backward();
                opt.step();
                out.push(p.to_f64_vec());
            }
        };
        if adam {
            step(
                &mut Adam::adamw(vec![p.clone()], 1e-2)
                    .amsgrad(true)
                    .weight_decay(0.1),
            );
        } else {
            step(
                &mut Sgd::new(vec![p.clone()], 0.05)
                    .momentum(0.9)
                    .nesterov(true)
                    .weight_decay(0.01),
            );
        }
        out
    };
    for adam in [false, true] {
        let (cpu, dev) = (run(Device::Cpu, adam), run(d, adam));
        for (s, (c, g)) in cpu.iter().zip(&dev).enumerate() {
            assert_close(g, c, 1e-5, 1e-6, &format!("adam {adam} step {s}"));
        }
    }
}

/// A 2-layer LSTM and a GRU (their composed cell ops on CUDA): the outputs and every
/// gradient, on `device`, from one seed.
fn recurrent_grads(device: Device) -> Vec<Vec<f64>> {
    manual_seed(8);
    let cfg = RecurrentConfig {
        num_layers: 2,
        ..RecurrentConfig::default()
    };
    let mut lstm = LSTM::with_config(6, 5, cfg, ());
    let mut gru = GRU::new(6, 4, ());
    lstm.to_device(device).unwrap();
    gru.to_device(device).unwrap();
    let x = Generator::new(2).randn([7, 3, 6], DType::F32).to(device);
    let (y, (h, c)) = lstm.forward(&x, None);
    let (z, hz) = gru.forward(&x, None);
    let loss = (y.tanh().sum(All, false) + h.sum(All, false) * 0.5 + c.sum(All, false))
        + (z.sigmoid().sum(All, false) - hz.sum(All, false));
    loss.backward();
    let mut out = vec![y.to_f64_vec(), z.to_f64_vec()];
    for p in lstm.parameters().iter().chain(gru.parameters().iter()) {
        out.push(p.grad().expect("a gradient").to_f64_vec());
    }
    out
}

#[test]
fn recurrent_layers_run_on_the_device_as_on_the_cpu() {
    let Some(g) = gpu("recurrent_layers_run_on_the_device_as_on_the_cpu") else {
        return;
    };
    let (cpu, dev) = (recurrent_grads(Device::Cpu), recurrent_grads(g.device));
    assert_eq!(cpu.len(), dev.len());
    for (i, (c, d)) in cpu.iter().zip(&dev).enumerate() {
        assert_close(d, c, 1e-4, 1e-5, &format!("output or gradient {i}"));
    }
}

/// The recurrent case is well-formed without a GPU.
#[test]
fn the_recurrent_case_runs_on_the_cpu() {
    let _serial = serial();
    let r = recurrent_grads(Device::Cpu);
    assert_eq!(r.len(), 2 + 8 + 4);
}

/// Every parity case runs on the CPU alone (so a malformed case shows without a GPU).
#[test]
fn the_parity_cases_run_on_the_cpu() {
    let _serial = serial();
    for dt in [DType::F32, DType::F64] {
        for (name, inputs, f) in parity_cases(dt) {
            let out = catch_unwind(AssertUnwindSafe(|| f(&inputs)));
            assert!(out.is_ok(), "{name} {dt} panicked on the CPU");
        }
    }
}

#[test]
fn every_wired_op_matches_the_cpu() {
    let Some(g) = gpu("every_wired_op_matches_the_cpu") else {
        return;
    };
    let d = g.device;
    let mut failures = Vec::new();
    println!("{:<40} {:<5} {:>12}  ok", "op", "dtype", "max_abs_err");
    for (dt, rtol, atol) in [(DType::F32, 2e-5, 2e-5), (DType::F64, 1e-10, 1e-12)] {
        for (name, inputs, f) in parity_cases(dt) {
            let want = f(&inputs).to_f64_vec();
            let on_dev: Vec<Tensor> = inputs.iter().map(|t| t.to(d)).collect();
            let got = match catch_unwind(AssertUnwindSafe(|| f(&on_dev))) {
                Ok(t) if t.device() == d => t.to_f64_vec(),
                Ok(t) => {
                    failures.push(format!("{name} {dt}: result on {}", t.device()));
                    continue;
                }
                Err(p) => {
                    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                    println!("{name:<40} {dt:<5} {:>12}  FAILED: {msg}", "-");
                    failures.push(format!("{name} {dt}: {msg}"));
                    continue;
                }
            };
            let mut err = 0.0f64;
            let mut ok = got.len() == want.len();
            for (x, y) in got.iter().zip(&want) {
                if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
                    ok &= x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
                    continue;
                }
                err = err.max((x - y).abs());
                ok &= (x - y).abs() <= atol + rtol * y.abs();
            }
            println!(
                "{name:<40} {dt:<5} {err:>12.3e}  {}",
                if ok { "ok" } else { "FAILED" }
            );
            if !ok {
                failures.push(format!("{name} {dt}: max abs err {err:e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "CUDA results differ from the CPU's: {failures:#?}"
    );
}

#[test]
fn dropout_on_the_device_draws_the_cpu_mask() {
    let Some(g) = gpu("dropout_on_the_device_draws_the_cpu_mask") else {
        return;
    };
    let d = g.device;
    let x = Tensor::ones([64, 33], DType::F32);
    manual_seed(1234);
    let cpu = dropout(&x, 0.3, true).unwrap();
    let after_cpu = flint::random::with_global_generator(|g| g.offset());
    manual_seed(1234);
    let dev = dropout(&x.to(d), 0.3, true).unwrap();
    let after_dev = flint::random::with_global_generator(|g| g.offset());
    assert_eq!(dev.device(), d);
    assert_eq!(
        after_cpu, after_dev,
        "the generator advances by the same count"
    );
    let bits = |t: &Tensor| {
        t.to_vec::<f32>()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&cpu), bits(&dev.to(Device::Cpu)));
    let kept = cpu.to_vec::<f32>().iter().filter(|&&v| v != 0.0).count();
    assert!(
        (1300..1650).contains(&kept),
        "{kept} of 2112 kept at p = 0.3"
    );
    // channel dropout and variational dropout draw their (small) masks on the CPU and
    // use them on the device: the same numbers as on the CPU
    let img = Tensor::ones([4, 6, 3, 3], DType::F32);
    manual_seed(9);
    let want = feature_dropout(&img, 0.5, true, 2).unwrap().to_f64_vec();
    manual_seed(9);
    let got = feature_dropout(&img.to(d), 0.5, true, 2).unwrap();
    assert_eq!((got.device(), got.to_f64_vec()), (d, want));
    let vd = VariationalDropout::new(0.5, false);
    let seq = Tensor::ones([5, 3, 4], DType::F32);
    manual_seed(10);
    let want = vd.forward(&seq).to_f64_vec();
    manual_seed(10);
    assert_eq!(vd.forward(&seq.to(d)).to_f64_vec(), want);
    // the backward (the fused kernel, and ops under create_graph) is the mask times
    // 1/(1-p): the gradient of sum(dropout(x) * w) is dropout's output times w
    let w = Generator::new(4).randn([64, 33], DType::F32);
    for create_graph in [false, true] {
        manual_seed(1234);
        let xd = x.to(d).requires_grad_(true);
        let y = dropout(&xd, 0.3, true).unwrap();
        let loss = (&y * w.to(d)).sum(All, false);
        let grad = if create_graph {
            flint::autograd::grad(&[loss], std::slice::from_ref(&xd), None, true, true).unwrap()[0]
                .clone()
                .expect("a gradient")
        } else {
            loss.backward();
            xd.grad().expect("a gradient")
        };
        let want: Vec<f64> = (&cpu * &w).to_f64_vec();
        assert_close(&grad.to_f64_vec(), &want, 1e-6, 0.0, "dropout backward");
    }
}

#[test]
fn index_errors_on_the_device_are_the_cpu_errors() {
    let Some(g) = gpu("index_errors_on_the_device_are_the_cpu_errors") else {
        return;
    };
    let d = g.device;
    let t = Tensor::zeros([2, 3], ());
    for bad in [vec![0i64, 3], vec![-1i64, 1]] {
        let idx = Tensor::from_vec(bad, [2]);
        let want = t.try_index_select(1, &idx).unwrap_err().to_string();
        let got = t
            .to(d)
            .try_index_select(1, &idx.to(d))
            .unwrap_err()
            .to_string();
        assert_eq!(got, want);
        let gi = idx.reshape([1, 2]);
        let want = t.try_gather(1, &gi).unwrap_err().to_string();
        let got = t.to(d).try_gather(1, &gi.to(d)).unwrap_err().to_string();
        assert_eq!(got, want);
    }
}

/// A small MLP (Linear, GELU, LayerNorm, Dropout, Linear) trained with AdamW on a
/// label-smoothed cross-entropy; returns the losses of `steps` steps on `device`.
fn train_mlp(device: Device, steps: usize) -> Vec<f64> {
    manual_seed(5);
    let mut l1 = Linear::new(8, 32, ());
    let mut l2 = Linear::new(32, 4, ());
    let norm_w = Tensor::ones([32], ()).requires_grad_(true);
    let norm_b = Tensor::zeros([32], ()).requires_grad_(true);
    let mut data = Generator::new(9);
    let x = data.randn([16, 8], ()).to(device);
    let y = data.randint(0, 4, [16]).to(device);
    l1.to_device(device).unwrap();
    l2.to_device(device).unwrap();
    let (norm_w, norm_b) = (
        norm_w.detach().to(device).requires_grad_(true),
        norm_b.detach().to(device).requires_grad_(true),
    );
    let mut params = l1.parameters();
    params.extend(l2.parameters());
    params.extend([norm_w.clone(), norm_b.clone()]);
    let mut opt = Adam::adamw(params, 1e-2);
    let ce = CrossEntropy::new().label_smoothing(0.1);
    manual_seed(77); // the dropout stream
    let mut losses = Vec::new();
    for _ in 0..steps {
        opt.zero_grad();
        let h = l1.forward(&x).gelu(GeluApprox::None);
        let h = layer_norm(&h, &[32], Some(&norm_w), Some(&norm_b), 1e-5).unwrap();
        let h = dropout(&h, 0.1, true).unwrap().relu();
        let loss = ce.forward(&l2.forward(&h), &y);
        assert_eq!(loss.device(), device);
        loss.backward();
        opt.step();
        losses.push(loss.to_dtype(DType::F64).item::<f64>());
    }
    for p in l1.parameters() {
        assert_eq!(p.device(), device);
    }
    losses
}

#[test]
fn an_mlp_trains_on_the_device_as_on_the_cpu() {
    let Some(_g) = gpu("an_mlp_trains_on_the_device_as_on_the_cpu") else {
        return;
    };
    let cpu = train_mlp(Device::Cpu, 20);
    let dev = train_mlp(Device::Cuda(0), 20);
    println!("cpu losses {cpu:?}\ncuda losses {dev:?}");
    assert!(cpu[19] < cpu[0] * 0.7, "the loss falls: {cpu:?}");
    assert_close(&dev, &cpu, 1e-4, 0.0, "losses");
}

/// A one-block causal language model (Embedding, q/k/v projections, scaled dot-product
/// attention with a causal mask, a residual, LayerNorm, an output projection) trained
/// with AdamW; the losses of `steps` steps on `device` with parameters in `dtype`.
fn train_attention(device: Device, dtype: DType, steps: usize) -> Vec<f64> {
    manual_seed(21);
    let (vocab, dim, t) = (11, 16, 6);
    let mut emb = Embedding::new(vocab, dim, ());
    let mut proj: Vec<Linear> = (0..4).map(|_| Linear::new(dim, dim, ())).collect();
    let mut head = Linear::new(dim, vocab, ());
    let mut data = Generator::new(3);
    let tokens = data.randint(0, vocab as i64, [2, t + 1]).to(device);
    let (inp, tgt) = (tokens.narrow(1, 0, t), tokens.narrow(1, 1, t));
    emb.to_device(device).unwrap();
    head.to_device(device).unwrap();
    emb.to_dtype(dtype).unwrap();
    head.to_dtype(dtype).unwrap();
    let mut params = emb.parameters();
    for p in proj.iter_mut() {
        p.to_device(device).unwrap();
        p.to_dtype(dtype).unwrap();
        params.extend(p.parameters());
    }
    params.extend(head.parameters());
    let mut opt = Adam::adamw(params, 5e-3);
    let mask = causal_mask(t).to(device);
    let mut losses = Vec::new();
    for _ in 0..steps {
        opt.zero_grad();
        let x = emb.forward(&inp);
        let (q, k, v) = (
            proj[0].forward(&x),
            proj[1].forward(&x),
            proj[2].forward(&x),
        );
        // attention written out: masked_fill with the causal mask, softmax, matmul
        let s = q.matmul(&k.transpose(1, 2)) / (dim as f64).sqrt();
        let a = s
            .masked_fill(&mask, f64::NEG_INFINITY)
            .softmax(-1)
            .matmul(&v);
        // and through the functional form (its causal mask is made on the device)
        let a2 = scaled_dot_product_attention(&q, &k, &v, None, true, 0.0, false, None).unwrap();
        let h = &x + proj[3].forward(&(&a + &a2));
        let h = layer_norm(&h, &[dim], None, None, 1e-5).unwrap();
        let logits = head.forward(&h);
        let loss =
            CrossEntropy::new().forward(&logits.reshape([-1, vocab as isize]), &tgt.reshape([-1]));
        loss.backward();
        opt.step();
        losses.push(loss.to_dtype(DType::F64).item::<f64>());
    }
    losses
}

#[test]
fn an_attention_block_trains_on_the_device_as_on_the_cpu() {
    let Some(_g) = gpu("an_attention_block_trains_on_the_device_as_on_the_cpu") else {
        return;
    };
    let cpu = train_attention(Device::Cpu, DType::F32, 10);
    let dev = train_attention(Device::Cuda(0), DType::F32, 10);
    println!("cpu losses {cpu:?}\ncuda losses {dev:?}");
    assert!(cpu[9] < cpu[0], "the loss falls: {cpu:?}");
    assert_close(&dev, &cpu, 1e-4, 0.0, "losses");
}

/// Fused attention on heads split out of one packed `[B, T, 3·C]` projection (the
/// transformer step's layout: on CUDA the output is written in `[B, T, H, D]` order and
/// the three gradients in one buffer where q, k and v lie, which becomes the projection's
/// gradient without a copy): the output, the output merged back to `[B, T, C]`, and the
/// projection's gradient, all as f64, on `device`.
fn packed_attention(device: Device, dtype: DType) -> Vec<Vec<f64>> {
    let (b, t, h, d) = (2, 37, 3, 16);
    let c = h * d;
    let mut rng = Generator::new(5);
    let qkv = rng
        .randn([b, t, 3 * c], DType::F64)
        .to_dtype(dtype)
        .to(device)
        .requires_grad_(true);
    let gy = rng.randn([b, t, c], DType::F64).to_dtype(dtype).to(device);
    // a non-leaf projection output, as a Linear's
    let proj = &qkv * 1.0;
    let parts = proj.split(c, -1);
    let heads = |z: &Tensor| z.view([b, t, h, d]).transpose(1, 2);
    let (q, k, v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
    let o = scaled_dot_product_attention(&q, &k, &v, None, true, 0.0, false, None).unwrap();
    let merged = o.transpose(1, 2).reshape([b, t, c]);
    (&merged * &gy).sum_all().backward();
    let grad = qkv.grad().expect("the projection's gradient");
    [o, merged, grad]
        .iter()
        .map(|x| x.to_dtype(DType::F64).to_f64_vec())
        .collect()
}

#[test]
fn fused_attention_on_a_packed_projection_matches_the_cpu() {
    let Some(g) = gpu("fused_attention_on_a_packed_projection_matches_the_cpu") else {
        return;
    };
    // f64 (the SIMT kernels), f32 and bf16 (tensor cores: head dim 16); bf16 against f32
    for (dt, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        let reference = if dt == DType::BF16 { DType::F32 } else { dt };
        let want = packed_attention(Device::Cpu, reference);
        let got = packed_attention(g.device, dt);
        for (what, (x, y)) in ["output", "merged output", "projection gradient"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close_scaled(x, y, tol, &format!("{what} {dt}"));
        }
    }
}

#[test]
fn the_packed_attention_case_runs_on_the_cpu() {
    let r = packed_attention(Device::Cpu, DType::F32);
    assert_eq!(r[2].len(), 2 * 37 * 3 * 48);
    assert!(r[2].iter().all(|x| x.is_finite()) && r[2].iter().any(|&x| x != 0.0));
}

/// The bf16 losses' tolerance against f32's over 10 steps: bf16 keeps 8 significant bits
/// in every parameter, activation and AdamW state (the CPU's bf16 run stays within 0.6 %
/// of its f32 run).
const BF16_TRAIN_RTOL: f64 = 2e-2;

/// bf16 on the device (the written-out attention's ops and the fused tensor-core
/// attention, head dim 16) tracks the f32 CPU run.
#[test]
fn an_attention_block_trains_in_bf16_on_the_device() {
    let Some(_g) = gpu("an_attention_block_trains_in_bf16_on_the_device") else {
        return;
    };
    let cpu = train_attention(Device::Cpu, DType::F32, 10);
    let dev = train_attention(Device::Cuda(0), DType::BF16, 10);
    println!("cpu f32 losses {cpu:?}\ncuda bf16 losses {dev:?}");
    assert!(dev[9] < dev[0], "the loss falls: {dev:?}");
    assert_close(&dev, &cpu, BF16_TRAIN_RTOL, 0.0, "bf16 losses");
}

/// The CPU's bf16 run (composed attention) against its f32 run: the tolerance of
/// [`an_attention_block_trains_in_bf16_on_the_device`] holds for bf16 arithmetic itself.
#[test]
fn an_attention_block_trains_in_bf16_on_the_cpu() {
    let _serial = serial();
    let f32 = train_attention(Device::Cpu, DType::F32, 10);
    let bf16 = train_attention(Device::Cpu, DType::BF16, 10);
    println!("cpu f32 losses {f32:?}\ncpu bf16 losses {bf16:?}");
    assert!(bf16[9] < bf16[0], "the loss falls: {bf16:?}");
    assert_close(&bf16, &f32, BF16_TRAIN_RTOL, 0.0, "bf16 losses");
}

#[test]
fn gradients_through_device_kernels_pass_gradcheck() {
    let Some(g) = gpu("gradients_through_device_kernels_pass_gradcheck") else {
        return;
    };
    run_gradcheck_cases(g.device);
}

/// The gradcheck cases of [`gradients_through_device_kernels_pass_gradcheck`] on the CPU:
/// checks, without a GPU, that every case is well-formed (and the CPU gradients right).
#[test]
fn the_gradcheck_cases_hold_on_the_cpu() {
    let _serial = serial();
    run_gradcheck_cases(Device::Cpu);
}

/// Gradchecks a set of compositions with their inputs moved to `d` (the CPU numbers of
/// gradcheck are the reference).
fn run_gradcheck_cases(d: Device) {
    let mut rng = Generator::new(17);
    let x = rng.randn([3, 4], DType::F64);
    let w = rng.randn([4], DType::F64);
    let idx = Tensor::from_vec(vec![2i64, 0, 2], [3]).to(d);
    let gidx = Tensor::from_vec(vec![3i64, 0, 1, 1, 2, 2], [3, 2]).to(d);
    let m = causal_mask(4).narrow(0, 0, 3).to(d);
    type Case = (&'static str, Box<dyn Fn(&Tensor, &Tensor) -> Tensor>);
    let cases: Vec<Case> = vec![
        (
            "mul/div broadcast",
            Box::new(|x, w| (x * w) / (w.abs() + 1.0)),
        ),
        (
            "tanh/sigmoid/exp",
            Box::new(|x, w| (x.tanh() + (x * w).sigmoid()).exp()),
        ),
        (
            "gelu/relu",
            Box::new(|x, w| x.gelu(GeluApprox::None) + x.gelu(GeluApprox::Tanh) + (x * w).relu()),
        ),
        (
            "softmax/log_softmax",
            Box::new(|x, w| (x + w).softmax(-1) * x.log_softmax(0)),
        ),
        (
            "masked_fill/where",
            Box::new(move |x, w| x.masked_fill(&m, 0.0).where_(&x.gt(0.0), w)),
        ),
        (
            "sum/max/mean",
            Box::new(|x, w| x.max(1, true) * w + x.mean(0, true) - x.sum(All, false)),
        ),
        (
            "layer_norm",
            Box::new(|x, w| layer_norm(x, &[4], Some(w), None, 1e-5).unwrap()),
        ),
        (
            "index_select/gather",
            Box::new(move |x, w| x.index_select(0, &idx).gather(1, &gidx) * w.narrow(0, 0, 2)),
        ),
        (
            "conv2d/max_pool2d/avg_pool2d",
            Box::new(|x, w| {
                let img = x.reshape([1, 1, 3, 4]);
                let k = w.reshape([1, 1, 2, 2]);
                let c = conv2d(&img, &k, None, 1, 1, 1, 1).unwrap();
                let a = avg_pool2d(&c, 2, 1, 1, false, true, None).unwrap();
                max_pool2d(&c, 2, 1, 0, 1, false).unwrap() + a.narrow(2, 0, 3).narrow(3, 0, 4)
            }),
        ),
        (
            "prod/masked_select",
            Box::new(|x, w| {
                let y = x * w;
                y.prod(0, false) + y.masked_select(&x.gt(0.0)).sum(All, true)
            }),
        ),
        (
            "batch_norm (training)",
            Box::new(|x, w| batch_norm(x, None, Some(w), Some(w), true, 1e-5).unwrap() * x),
        ),
        (
            "column sums",
            Box::new(|x, w| (x.reshape([12, 1]) * w).sum(0, false) * w),
        ),
        (
            "matmul of per-head views (uneven batches copied once, kᵀ kept column-major)",
            Box::new(|x, w| {
                let r = Tensor::cat(
                    &[x.clone(), x * w, x.exp(), (x * w).tanh(), x.sin(), x.cos()],
                    1,
                ); // [3, 24]
                let qkv = Tensor::cat(&[r.unsqueeze(0), r.tanh().unsqueeze(0)], 0).split(8, -1);
                // [2, 3, 8] -> 8 matrices [3, 2] in an uneven batch
                let heads = |z: &Tensor| z.view([2, 3, 4, 2]).transpose(1, 2);
                let s = heads(&qkv[0]).matmul(&heads(&qkv[1]).transpose(-2, -1));
                s.softmax(-1)
                    .matmul(&heads(&qkv[2]))
                    .transpose(1, 2)
                    .reshape([2, 3, 8])
            }),
        ),
        (
            "cat/stack",
            Box::new(|x, w| {
                Tensor::cat(&[x.clone(), w.unsqueeze(0)], 0)
                    .t()
                    .contiguous()
                    * 2.0
            }),
        ),
    ];
    for (name, f) in cases {
        if let Err(e) = gradcheck(
            |xs| f(&xs[0].to(d), &xs[1].to(d)).to(Device::Cpu),
            &[x.clone(), w.clone()],
            GradcheckOptions::default(),
        ) {
            panic!("{name}: {e}");
        }
        println!("gradcheck on {d}: {name} ok");
    }
}

/// One call of the fused scaled dot-product attention: q, k, v as f64 bases on the CPU
/// (each moved to the device in `dtype`, made a leaf, then viewed by its `view`), a mask
/// (a float one is cast to `dtype`), the causal flag, the dropout probability, and the
/// tolerance of the device against the CPU. The CPU's fused path takes f32 and f64: an
/// f16/bf16 case is checked against its [`reference`] in f32.
struct SdpaCase {
    what: &'static str,
    dtype: DType,
    bases: [Tensor; 3],
    views: [fn(&Tensor) -> Tensor; 3],
    mask: Option<Tensor>,
    causal: bool,
    dropout: f64,
    tol: f64,
}

/// The tolerances of [`SdpaCase`]: f32 (also on the tensor-core kernels, head dims up to
/// 64: their 3xTF32 products keep f32's accuracy, which one TF32 pass would be expected
/// to miss), f64.
const SDPA_TOL_F32: f64 = 1e-4;
const SDPA_TOL_F64: f64 = 1e-9;
/// f16 and bf16 against the f32 reference: their results are rounded to 11 and 8
/// significant bits, and on tensor cores so are the probabilities and score gradients
/// for their products (the kernels' emulation finds at most 8e-4 and 1.1e-2 of
/// `|err| / (1 + |want|)` against double).
const SDPA_TOL_F16: f64 = 2e-3;
const SDPA_TOL_BF16: f64 = 1e-2;

/// The case the CPU checks `c` against: `c` itself for f32/f64; for f16/bf16 the same call
/// in f32 on inputs (and a float mask) rounded to `c`'s dtype.
fn reference(c: &SdpaCase) -> SdpaCase {
    let half = matches!(c.dtype, DType::F16 | DType::BF16);
    let round = |t: &Tensor| {
        if half && t.dtype() != DType::Bool {
            t.to_dtype(c.dtype).to_dtype(DType::F64)
        } else {
            t.clone()
        }
    };
    SdpaCase {
        what: c.what,
        dtype: if half { DType::F32 } else { c.dtype },
        bases: [round(&c.bases[0]), round(&c.bases[1]), round(&c.bases[2])],
        views: c.views,
        mask: c.mask.as_ref().map(round),
        causal: c.causal,
        dropout: c.dropout,
        tol: c.tol,
    }
}

fn plain(t: &Tensor) -> Tensor {
    t.clone()
}

fn sdpa_cases() -> Vec<SdpaCase> {
    let mut g = Generator::new(31);
    let mut rand = |shape: &[usize]| g.randn(shape, DType::F64);
    let case = |what, dtype, bases: [Tensor; 3], tol| SdpaCase {
        what,
        dtype,
        bases,
        views: [plain, plain, plain],
        mask: None,
        causal: false,
        dropout: 0.0,
        tol,
    };
    let mut v = Vec::new();
    // head dim 64 (tensor cores), causal, dropout; 70 rows cross every row-block size
    let mut c = case(
        "f32 D=64 causal dropout 0.1",
        DType::F32,
        [
            rand(&[2, 3, 70, 64]),
            rand(&[2, 3, 70, 64]),
            rand(&[2, 3, 70, 64]),
        ],
        SDPA_TOL_F32,
    );
    (c.causal, c.dropout) = (true, 0.1);
    v.push(c);
    // Tk % 4 == 0: the tensor-core kernels share each Philox block between lanes (the
    // case above, Tk = 70, draws per element)
    for (what, dtype, p, tol) in [
        (
            "f32 D=64 causal dropout 0.3, Tk % 4 = 0",
            DType::F32,
            0.3,
            SDPA_TOL_F32,
        ),
        (
            "bf16 D=64 causal dropout 0.1, Tk % 4 = 0",
            DType::BF16,
            0.1,
            SDPA_TOL_BF16,
        ),
    ] {
        let mut c = case(
            what,
            dtype,
            [
                rand(&[1, 2, 72, 64]),
                rand(&[1, 2, 72, 64]),
                rand(&[1, 2, 72, 64]),
            ],
            tol,
        );
        (c.causal, c.dropout) = (true, p);
        v.push(c);
    }
    // a bool key-padding mask [B, 1, 1, Tk]: keys past each length hidden; Tq ≠ Tk, D ≠ Dv
    for (what, dtype, tol) in [
        ("f32 D=64 bool key padding", DType::F32, SDPA_TOL_F32),
        ("f16 D=64 bool key padding", DType::F16, SDPA_TOL_F16),
    ] {
        let mut c = case(
            what,
            dtype,
            [
                rand(&[2, 2, 37, 64]),
                rand(&[2, 2, 45, 64]),
                rand(&[2, 2, 45, 32]),
            ],
            tol,
        );
        let keep: Vec<bool> = [45, 20]
            .iter()
            .flat_map(|&l| (0..45).map(move |j| j < l))
            .collect();
        c.mask = Some(Tensor::from_vec(keep, [2, 1, 1, 45]));
        v.push(c);
    }
    // a float mask [B, 1, Tq, Tk] broadcast over the heads, causal
    let mut c = case(
        "f32 D=64 float mask",
        DType::F32,
        [
            rand(&[2, 3, 40, 64]),
            rand(&[2, 3, 40, 64]),
            rand(&[2, 3, 40, 64]),
        ],
        SDPA_TOL_F32,
    );
    c.mask = Some(rand(&[2, 1, 40, 40]));
    c.causal = true;
    v.push(c);
    // head dims above the tensor-core kernels' (D = 80, Dv = 48), with dropout: the SIMT
    // kernels
    for (what, dtype, tol) in [
        (
            "f32 D=80 Dv=48 causal dropout 0.2",
            DType::F32,
            SDPA_TOL_F32,
        ),
        (
            "f16 D=80 Dv=48 causal dropout 0.2",
            DType::F16,
            SDPA_TOL_F16,
        ),
    ] {
        let mut c = case(
            what,
            dtype,
            [
                rand(&[2, 2, 33, 80]),
                rand(&[2, 2, 33, 80]),
                rand(&[2, 2, 33, 48]),
            ],
            tol,
        );
        (c.causal, c.dropout) = (true, 0.2);
        v.push(c);
    }
    // f64, dropout, a bool mask of the full score shape (key 0 always visible)
    let mut c = case(
        "f64 D=32 bool mask dropout 0.25",
        DType::F64,
        [
            rand(&[2, 2, 21, 32]),
            rand(&[2, 2, 26, 32]),
            rand(&[2, 2, 26, 16]),
        ],
        SDPA_TOL_F64,
    );
    let keep = Generator::new(8)
        .rand([2, 2, 21, 26], DType::F64)
        .gt(0.3)
        .logical_or(Tensor::from_vec(
            (0..26).map(|j| j == 0).collect::<Vec<bool>>(),
            [26],
        ));
    (c.mask, c.dropout) = (Some(keep), 0.25);
    v.push(c);
    // q as a transposed (strided) view [B, T, H, D] -> [B, H, T, D], as attention heads
    // are cut from a projection; k, v contiguous
    for (what, dtype, d, tol) in [
        ("f32 D=64 q transposed", DType::F32, 64, SDPA_TOL_F32),
        ("f64 D=40 q transposed", DType::F64, 40, SDPA_TOL_F64),
    ] {
        let mut c = case(
            what,
            dtype,
            [
                rand(&[2, 19, 3, d]),
                rand(&[2, 3, 19, d]),
                rand(&[2, 3, 19, d]),
            ],
            tol,
        );
        c.views[0] = |t| t.transpose(1, 2);
        c.causal = true;
        v.push(c);
    }
    // batch rank 1: q [H, Tq, D], k [1, Tk, D] broadcast, v [Tk, Dv] (no batch dims)
    v.push(case(
        "f32 batch rank 1 (k, v broadcast)",
        DType::F32,
        [rand(&[4, 17, 16]), rand(&[1, 23, 16]), rand(&[23, 24])],
        SDPA_TOL_F32,
    ));
    // batch rank 3: k broadcast over the middle dim and a mask broadcast over the first
    // and last batch dims (neither merges onto two levels: both copied)
    for (what, dtype, tol) in [
        ("f32 batch rank 3", DType::F32, SDPA_TOL_F32),
        ("f64 batch rank 3", DType::F64, SDPA_TOL_F64),
    ] {
        let mut c = case(
            what,
            dtype,
            [
                rand(&[2, 3, 2, 9, 8]),
                rand(&[2, 1, 2, 11, 8]),
                rand(&[2, 3, 2, 11, 8]),
            ],
            tol,
        );
        let keep = Generator::new(12)
            .rand([3, 1, 9, 11], DType::F64)
            .gt(0.5)
            .logical_or(Tensor::from_vec(
                (0..11).map(|j| j == 0).collect::<Vec<bool>>(),
                [11],
            ));
        c.mask = Some(keep);
        v.push(c);
    }
    // bf16 on the tensor-core kernels with a transposed q and a float mask
    let mut c = case(
        "bf16 D=64 q transposed, float mask",
        DType::BF16,
        [
            rand(&[2, 19, 3, 64]),
            rand(&[2, 3, 19, 64]),
            rand(&[2, 3, 19, 64]),
        ],
        SDPA_TOL_BF16,
    );
    c.views[0] = |t| t.transpose(1, 2);
    c.mask = Some(rand(&[2, 1, 19, 19]));
    v.push(c);
    // a query that may attend no key: NaN output, no gradient through it
    for (what, dtype, tol) in [
        ("f32 fully masked query", DType::F32, SDPA_TOL_F32),
        ("f64 fully masked query", DType::F64, SDPA_TOL_F64),
        ("bf16 fully masked query", DType::BF16, SDPA_TOL_BF16),
    ] {
        let mut c = case(
            what,
            dtype,
            [rand(&[2, 6, 16]), rand(&[2, 7, 16]), rand(&[2, 7, 16])],
            tol,
        );
        let keep: Vec<bool> = (0..6 * 7).map(|e| e / 7 != 2 && e % 3 != 1).collect();
        c.mask = Some(Tensor::from_vec(keep, [6, 7]));
        v.push(c);
    }
    v
}

/// The output and `(dq, dk, dv)` of a case on `d` with dropout `p`, after
/// `manual_seed(seed)`, as f64 on the host; asserts the fused node ran.
fn run_sdpa(c: &SdpaCase, d: Device, p: f64) -> (Vec<f64>, Vec<Vec<f64>>) {
    let leaves: Vec<Tensor> = c
        .bases
        .iter()
        .map(|t| t.to_dtype(c.dtype).to(d).detach().requires_grad_(true))
        .collect();
    let x: Vec<Tensor> = leaves.iter().zip(&c.views).map(|(t, f)| f(t)).collect();
    let mask = c.mask.as_ref().map(|m| {
        let m = if m.dtype() == DType::Bool {
            m.clone()
        } else {
            m.to_dtype(c.dtype)
        };
        m.to(d)
    });
    manual_seed(2024);
    let y =
        scaled_dot_product_attention(&x[0], &x[1], &x[2], mask.as_ref(), c.causal, p, true, None)
            .unwrap();
    assert_eq!(
        y.grad_fn().expect("a node").name(),
        "scaled_dot_product_attention",
        "{} on {d}: not the fused path",
        c.what
    );
    assert_eq!((y.device(), y.dtype()), (d, c.dtype), "{}", c.what);
    let gy = Generator::new(9).randn(y.shape(), c.dtype).to(d);
    y.backward_with(&gy);
    let grads = leaves
        .iter()
        .map(|t| t.grad().expect("a gradient").to(Device::Cpu).to_f64_vec())
        .collect();
    (y.to(Device::Cpu).to_f64_vec(), grads)
}

/// `got` within `tol` of `want` relative to `want`'s largest magnitude (at least 1); NaN
/// where `want` is NaN.
fn assert_close_scaled(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(1.0f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g - w).abs() <= tol * (scale + w.abs())
        };
        assert!(ok, "{what}: element {i}: got {g}, want {w} (scale {scale})");
    }
}

/// Checks a case's run on `d` against the CPU's fused path (the same dropout mask from
/// the same seed) and what every run must show: dropout drops, a fully masked query is
/// NaN with finite gradients.
fn check_sdpa_case(c: &SdpaCase, d: Device) {
    let (y, grads) = run_sdpa(c, d, c.dropout);
    let (y0, grads0) = run_sdpa(&reference(c), Device::Cpu, c.dropout);
    assert_close_scaled(&y, &y0, c.tol, &format!("{} on {d}: output", c.what));
    for (n, (a, b)) in ["dq", "dk", "dv"].iter().zip(grads.iter().zip(&grads0)) {
        assert!(
            a.iter().all(|x| x.is_finite()),
            "{} on {d}: {n} not finite",
            c.what
        );
        assert_close_scaled(a, b, c.tol * 10.0, &format!("{} on {d}: {n}", c.what));
    }
    if c.dropout > 0.0 {
        let (plain, _) = run_sdpa(c, d, 0.0);
        let differ = plain
            .iter()
            .zip(&y)
            .filter(|(a, b)| (*a - *b).abs() > 1e-3 * (1.0 + a.abs()))
            .count();
        assert!(
            differ * 2 > y.len(),
            "{} on {d}: dropout changed only {differ} of {} outputs",
            c.what,
            y.len()
        );
    }
    let nans = y.iter().filter(|x| x.is_nan()).count();
    if c.what.contains("fully masked") {
        // query 2 of each of the two problems, 16 values each
        assert_eq!(nans, 2 * 16, "{} on {d}", c.what);
    } else {
        assert_eq!(nans, 0, "{} on {d}", c.what);
    }
}

#[test]
fn fused_attention_on_the_device_matches_the_cpu() {
    let Some(g) = gpu("fused_attention_on_the_device_matches_the_cpu") else {
        return;
    };
    for c in sdpa_cases() {
        check_sdpa_case(&c, g.device);
        println!("sdpa on {}: {} ok", g.device, c.what);
    }
}

/// The cases of [`fused_attention_on_the_device_matches_the_cpu`] on the CPU against
/// itself (an f16/bf16 case as its f32 [`reference`]): checks, without a GPU, that every
/// case takes the fused path and that its dropout and masking assertions hold.
#[test]
fn the_attention_cases_run_on_the_cpu() {
    let _serial = serial();
    for c in sdpa_cases() {
        check_sdpa_case(&reference(&c), Device::Cpu);
    }
}

#[test]
fn fused_attention_on_the_device_passes_gradcheck() {
    let Some(g) = gpu("fused_attention_on_the_device_passes_gradcheck") else {
        return;
    };
    run_sdpa_gradcheck(g.device);
}

/// The gradchecks of [`fused_attention_on_the_device_passes_gradcheck`] on the CPU.
#[test]
fn the_attention_gradcheck_holds_on_the_cpu() {
    let _serial = serial();
    run_sdpa_gradcheck(Device::Cpu);
}

/// Gradchecks the fused attention in f64 on `d`: a float mask [Tq, Tk] with causal, and
/// a bool mask with dropout (the seed reset before each evaluation, so every one drops
/// the same weights).
fn run_sdpa_gradcheck(d: Device) {
    let mut rng = Generator::new(41);
    let inputs = [
        rng.randn([2, 2, 5, 4], DType::F64),
        rng.randn([2, 2, 6, 4], DType::F64),
        rng.randn([2, 2, 6, 3], DType::F64),
    ];
    let fmask = rng.randn([5, 6], DType::F64).to(d);
    let bmask = rng
        .rand([2, 1, 5, 6], DType::F64)
        .gt(0.3)
        .logical_or(Tensor::from_vec(
            (0..6).map(|j| j == 0).collect::<Vec<bool>>(),
            [6],
        ))
        .to(d);
    for (what, mask, causal, p) in [
        ("float mask, causal", &fmask, true, 0.0),
        ("bool mask, dropout 0.3", &bmask, false, 0.3),
    ] {
        let f = |xs: &[Tensor]| {
            manual_seed(5);
            let y = scaled_dot_product_attention(
                &xs[0].to(d),
                &xs[1].to(d),
                &xs[2].to(d),
                Some(mask),
                causal,
                p,
                true,
                None,
            )
            .unwrap();
            if let Some(n) = y.grad_fn() {
                assert_eq!(n.name(), "scaled_dot_product_attention", "{what}");
            }
            y.to(Device::Cpu)
        };
        if let Err(e) = gradcheck(f, &inputs, GradcheckOptions::default()) {
            panic!("sdpa gradcheck on {d}, {what}: {e}");
        }
        // under create_graph the backward is made of tensor ops on the device (the
        // dropout mask redrawn on the host and moved): the fused backward's gradients
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to(d).requires_grad_(true))
            .collect();
        let w = Generator::new(6).randn([2, 2, 5, 3], DType::F64).to(d);
        let mut per_mode = Vec::new();
        for create_graph in [false, true] {
            manual_seed(5);
            let y = scaled_dot_product_attention(
                &leaves[0],
                &leaves[1],
                &leaves[2],
                Some(mask),
                causal,
                p,
                true,
                None,
            )
            .unwrap();
            let loss = (&y * &w).sum(All, false);
            let grads = flint::autograd::grad(&[loss], &leaves, None, false, create_graph)
                .unwrap()
                .into_iter()
                .map(|g| g.expect("a gradient").to(Device::Cpu).to_f64_vec())
                .collect::<Vec<_>>();
            per_mode.push(grads);
        }
        for (n, (a, b)) in ["dq", "dk", "dv"]
            .iter()
            .zip(per_mode[1].iter().zip(&per_mode[0]))
        {
            assert_close_scaled(
                a,
                b,
                1e-10,
                &format!("{what} on {d}: {n} under create_graph"),
            );
        }
    }
}
