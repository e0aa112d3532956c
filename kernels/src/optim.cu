#line 1 "optim.cu"
// Fused optimizer updates, one thread per parameter element (any grid and block size),
// following runtime/src/optim/sgd.rs and adam.rs step by step. All buffers are
// contiguous with n elements and the parameter's dtype; math is in the acc type with the
// f64 hyper-parameters rounded to it (as the CPU rounds scalars to the tensor's dtype).

// sgd_<dt>(T* param, const T* grad, T* momentum_buf, i64 n, double lr, double momentum,
//          double dampening, double weight_decay, int nesterov, int first_step)
//   g = grad + weight_decay * param                      (if weight_decay != 0)
//   if momentum != 0:
//     buf = first_step ? g : momentum * buf + (1 - dampening) * g   (written back)
//     g = nesterov ? g + momentum * buf : buf
//   param -= lr * g
//   momentum_buf may be null when momentum == 0. first_step != 0 on the step that creates
//   the buffer (PyTorch's "momentum_buffer is None").
template <typename T>
__device__ __forceinline__ void sgd_all(T* param, const T* grad, T* buf, i64 n, double lr,
                                        double momentum, double dampening, double weight_decay,
                                        int nesterov, int first_step) {
    typedef typename Ty<T>::acc A;
    const A a_lr = (A)lr, a_m = (A)momentum, a_damp = (A)(1.0 - dampening), a_wd = (A)weight_decay;
    FLINT_GRID_STRIDE(i, n) {
        const A p = Ty<T>::load(param[i]);
        A g = Ty<T>::load(grad[i]);
        if (weight_decay != 0.0) {
            g = g + p * a_wd;
        }
        if (momentum != 0.0) {
            A b;
            if (first_step) {
                b = g;
            } else {
                b = Ty<T>::load(buf[i]) * a_m + g * a_damp;
            }
            const T bs = Ty<T>::store(b);
            buf[i] = bs;
            b = Ty<T>::load(bs); // the stored (rounded) buffer, as the CPU keeps it
            g = nesterov ? g + b * a_m : b;
        }
        param[i] = Ty<T>::store(p - g * a_lr);
    }
}

// adam_<dt>(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, i64 n,
//           double lr, double beta1, double beta2, double eps, double weight_decay,
//           int decoupled, double bias_correction1, double bias_correction2_sqrt)
//   Adam (decoupled = 0) and AdamW (decoupled != 0); AMSGrad iff max_exp_avg_sq != null.
//   With step t (counted from 1, the host increments it before the launch):
//   bias_correction1 = 1 - beta1^t, bias_correction2_sqrt = sqrt(1 - beta2^t) (host, f64).
//   if weight_decay != 0: decoupled ? param *= 1 - lr * weight_decay
//                                   : g = grad + weight_decay * param
//   m = m + (g - m) * (1 - beta1);  v = v * beta2 + g * g * (1 - beta2)
//   second = amsgrad ? (vmax = max(vmax, v)) : v        (vmax starts at zeros)
//   param -= m / (sqrt(second) / bias_correction2_sqrt + eps) * (lr / bias_correction1)
template <typename T>
__device__ __forceinline__ void adam_all(T* param, const T* grad, T* exp_avg, T* exp_avg_sq,
                                         T* max_exp_avg_sq, i64 n, double lr, double beta1,
                                         double beta2, double eps, double weight_decay,
                                         int decoupled, double bc1, double bc2_sqrt) {
    typedef typename Ty<T>::acc A;
    const A a_1mb1 = (A)(1.0 - beta1), a_b2 = (A)beta2, a_1mb2 = (A)(1.0 - beta2);
    const A a_wd = (A)weight_decay, a_decay = (A)(1.0 - lr * weight_decay);
    const A a_bc2 = (A)bc2_sqrt, a_eps = (A)eps, a_step = (A)(lr / bc1);
    FLINT_GRID_STRIDE(i, n) {
        A p = Ty<T>::load(param[i]);
        A g = Ty<T>::load(grad[i]);
        if (weight_decay != 0.0) {
            if (decoupled) {
                p = Ty<T>::load(Ty<T>::store(p * a_decay));
            } else {
                g = g + p * a_wd;
            }
        }
        A m = Ty<T>::load(exp_avg[i]);
        A v = Ty<T>::load(exp_avg_sq[i]);
        m = Ty<T>::load(Ty<T>::store(m + (g - m) * a_1mb1));
        v = Ty<T>::load(Ty<T>::store(v * a_b2 + g * g * a_1mb2));
        exp_avg[i] = Ty<T>::store(m);
        exp_avg_sq[i] = Ty<T>::store(v);
        A second = v;
        if (max_exp_avg_sq != 0) {
            second = Ty<T>::load(Ty<T>::store(nan_max(Ty<T>::load(max_exp_avg_sq[i]), v)));
            max_exp_avg_sq[i] = Ty<T>::store(second);
        }
        const A denom = m_sqrt(second) / a_bc2 + a_eps;
        param[i] = Ty<T>::store(p - m / denom * a_step);
    }
}

#define OPTIM(dt, T, _)                                                                    \
    extern "C" __global__ void sgd_##dt(T* param, const T* grad, T* momentum_buf, i64 n,   \
                                        double lr, double momentum, double dampening,      \
                                        double weight_decay, int nesterov,                 \
                                        int first_step) {                                  \
        sgd_all<T>(param, grad, momentum_buf, n, lr, momentum, dampening, weight_decay,    \
                   nesterov, first_step);                                                  \
    }                                                                                      \
    extern "C" __global__ void adam_##dt(                                                  \
        T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, i64 n,      \
        double lr, double beta1, double beta2, double eps, double weight_decay,            \
        int decoupled, double bias_correction1, double bias_correction2_sqrt) {            \
        adam_all<T>(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, n, lr, beta1, beta2, \
                    eps, weight_decay, decoupled, bias_correction1, bias_correction2_sqrt); \
    }
FLINT_FLOATS(OPTIM, _)
