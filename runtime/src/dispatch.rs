//! Dtype dispatch: run a generic body once per element type.
//!
//! `dispatch!(dtype, T => body)` matches the dtype and makes `T` a type alias for the
//! matching Rust type inside `body`. Variants restrict the dtypes: `float` (the four
//! float types), `num` (floats and i64) and `all`. A dtype outside the set is an
//! `Err(Error::DType)` naming `op`.

/// See the module docs.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    (float $op:expr, $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::F32 => { #[allow(dead_code)] type $T = f32; Ok($body) }
            $crate::DType::F64 => { #[allow(dead_code)] type $T = f64; Ok($body) }
            $crate::DType::F16 => { #[allow(dead_code)] type $T = $crate::half::f16; Ok($body) }
            $crate::DType::BF16 => { #[allow(dead_code)] type $T = $crate::half::bf16; Ok($body) }
            other => Err($crate::Error::DType {
                op: $op,
                msg: format!("expected a floating-point tensor, got {other}"),
            }),
        }
    };
    (num $op:expr, $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::I64 => { #[allow(dead_code)] type $T = i64; Ok($body) }
            $crate::DType::Bool => Err($crate::Error::DType {
                op: $op,
                msg: "this op is not defined on bool tensors; convert with to_dtype first".into(),
            }),
            other => $crate::dispatch!(float $op, other, $T => $body),
        }
    };
    // f32 and f64 only (the fused CPU kernels); `$other` for any other dtype
    (f32_f64 $dt:expr, $T:ident => $body:expr, else $other:expr) => {
        match $dt {
            $crate::DType::F32 => { #[allow(dead_code)] type $T = f32; $body }
            $crate::DType::F64 => { #[allow(dead_code)] type $T = f64; $body }
            _ => $other,
        }
    };
    (all $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::Bool => { #[allow(dead_code)] type $T = bool; $body }
            $crate::DType::I64 => { #[allow(dead_code)] type $T = i64; $body }
            $crate::DType::F32 => { #[allow(dead_code)] type $T = f32; $body }
            $crate::DType::F64 => { #[allow(dead_code)] type $T = f64; $body }
            $crate::DType::F16 => { #[allow(dead_code)] type $T = $crate::half::f16; $body }
            $crate::DType::BF16 => { #[allow(dead_code)] type $T = $crate::half::bf16; $body }
        }
    };
}
