//! Dtype conversion of host buffers.

use crate::cpu::strided::gather_map;
use crate::dtype::{DType, Element};
use crate::layout::Layout;
use crate::storage::CpuBuffer;
use half::{bf16, f16};

fn conv<T: Element, U: Element>(x: T) -> U {
    // integers and bool convert exactly through i64; everything else through f64
    match (T::DTYPE, U::DTYPE) {
        (DType::I64 | DType::Bool, DType::I64 | DType::Bool) => U::from_i64(x.to_i64()),
        _ => U::from_f64(x.to_f64()),
    }
}

/// The elements of `buf` under `layout`, converted to `dtype`, as a contiguous buffer.
pub(crate) fn convert(buf: &CpuBuffer, layout: &Layout, dtype: DType) -> CpuBuffer {
    crate::with_buffer!(buf, v => match dtype {
        DType::Bool => CpuBuffer::Bool(gather_map(v, layout, conv)),
        DType::I64 => CpuBuffer::I64(gather_map(v, layout, conv)),
        DType::F16 => CpuBuffer::F16(gather_map(v, layout, conv::<_, f16>)),
        DType::BF16 => CpuBuffer::BF16(gather_map(v, layout, conv::<_, bf16>)),
        DType::F32 => CpuBuffer::F32(gather_map(v, layout, conv)),
        DType::F64 => CpuBuffer::F64(gather_map(v, layout, conv)),
    })
}
