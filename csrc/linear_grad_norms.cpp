// The op linear_grad_norms: squared per-sample gradient norms of one nn.Linear on sequence inputs,
// ||A_i^T G_i||_F^2 for A [N, T, d_in], G [N, T, d_out] (lcmat/reference/linear_grad_norms.py).
// Per sample the cheaper of two exact forms, both batched GEMMs through ATen over chunks of
// samples so that the temporaries stay small:
//   materialised  ||A_i^T G_i||_F^2        T d_in d_out multiply-adds, a d_in x d_out temporary
//   ghost norm    <A_i A_i^T, G_i G_i^T>_F  T^2 (d_in + d_out), two T x T temporaries
// and for T = 1 the rank-one form ||a_i||^2 ||g_i||^2. Nothing of size N x d_in x d_out is formed.
// Schema and CPU implementation; arguments are checked in ops_common.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cpu/cpu_kernels.h"
#include "ops_common.h"

namespace lcmat {
namespace {

using at::Tensor;

constexpr int64_t kChunkValues = 1 << 22;  // temporaries per chunk of samples: 16 MB in float32
constexpr int64_t kParallelWork = 1 << 15;

// The ghost norm is cheaper when T^2 (d_in + d_out) < T d_in d_out.
bool use_ghost(int64_t T, int64_t d_in, int64_t d_out) { return T * (d_in + d_out) <= d_in * d_out; }

Tensor linear_grad_norms_cpu(const Tensor& A_in, const Tensor& G_in) {
  const auto args = linear_grad_norms_args(A_in, G_in);
  const Tensor &A = std::get<0>(args), &G = std::get<1>(args);
  const int64_t N = A.size(0), T = A.size(1), d_in = A.size(2), d_out = G.size(2);
  Tensor out = at::zeros({N}, A.options());
  if (N == 0 || T == 0 || d_in == 0 || d_out == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "linear_grad_norms", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    if (T == 1) {
      cpu::rank_one_sq_norms<scalar_t>(A.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), N, d_in, d_out,
                                       N * (d_in + d_out) >= kParallelWork, o);
      return;
    }
    const bool ghost = use_ghost(T, d_in, d_out);
    const int64_t per_sample = ghost ? 2 * T * T : d_in * d_out;
    const int64_t chunk = std::max<int64_t>(1, kChunkValues / per_sample);
    for (int64_t s0 = 0; s0 < N; s0 += chunk) {
      const int64_t s1 = std::min(N, s0 + chunk), c = s1 - s0;
      const Tensor a = A.narrow(0, s0, c), g = G.narrow(0, s0, c);
      if (ghost) {
        const Tensor aa = at::bmm(a, a.transpose(1, 2)).contiguous();  // [c, T, T]
        const Tensor gg = at::bmm(g, g.transpose(1, 2)).contiguous();
        cpu::row_dots<scalar_t>(aa.data_ptr<scalar_t>(), gg.data_ptr<scalar_t>(), c, T * T,
                                c * T * T >= kParallelWork, o + s0);
      } else {
        const Tensor w = at::bmm(a.transpose(1, 2), g).contiguous();  // [c, d_in, d_out]
        cpu::row_dots<scalar_t>(w.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), c, d_in * d_out,
                                c * d_in * d_out >= kParallelWork, o + s0);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace lcmat

TORCH_LIBRARY_FRAGMENT(lcmat, m) {
  m.def("linear_grad_norms(Tensor activations, Tensor grad_outputs) -> Tensor");
}

TORCH_LIBRARY_IMPL(lcmat, CPU, m) {
  m.impl("linear_grad_norms", &lcmat::linear_grad_norms_cpu);
}
