//! CUDA C kernel sources of Flint, embedded for NVRTC (to come with the CUDA backend).
