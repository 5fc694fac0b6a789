// The QCFS activation and its straight-through backward, each one pass over the elements on
// the CPU (float32 and float64). Arithmetic is that of the eager code in models/qcfs.py,
// operation for operation, so the forward and the input gradient are bitwise equal to it:
//   y = clamp(floor(x / step + 1/2), 0, L) * step,  step = threshold / L
//   grad_x = [0 <= x <= threshold] * grad_y          (a product, as there: 0 * inf is nan)
//   grad_threshold = (<grad_y, y> - <grad_x, x>) / threshold
// The two dot products are summed in double over fixed blocks of elements, then the blocks
// in order, so the threshold gradient does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 16384;

void check_input(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu(), what, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              what, " must be float32 or float64");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), what, " must be dense");
}

template <typename T>
inline T quantize(T x, T step, T level) {
  T v = std::floor(x / step + T(0.5));
  v = v < T(0) ? T(0) : v;  // comparisons keep nan, as clamp does
  v = v > level ? level : v;
  return v * step;
}

template <typename T>
inline T pass_mask(T x, T threshold) {
  return (x >= T(0) && x <= threshold) ? T(1) : T(0);
}

template <typename T>
void forward_block(const T* x, T* y, int64_t begin, int64_t end, T step, T level) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = quantize(x[i], step, level);
}

template <typename T>
void input_grad_block(const T* x, const T* gy, T* gx, int64_t begin, int64_t end, T threshold) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) gx[i] = pass_mask(x[i], threshold) * gy[i];
}

// grad_x over [begin, end) and that block's share of <grad_y, y> - <grad_x, x>
template <typename T>
double both_grads_block(const T* x, const T* gy, T* gx, int64_t begin, int64_t end, T threshold,
                        T step, T level) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = begin; i < end; ++i) {
    const T g = pass_mask(x[i], threshold) * gy[i];
    gx[i] = g;
    sum += static_cast<double>(gy[i]) * static_cast<double>(quantize(x[i], step, level)) -
           static_cast<double>(g) * static_cast<double>(x[i]);
  }
  return sum;
}

// step is computed as the eager code does: threshold / L in the tensor's dtype.
template <typename T>
T step_of(const at::Tensor& threshold, int64_t level) {
  return threshold.item<T>() / static_cast<T>(level);
}

at::Tensor qcfs_forward(const at::Tensor& x, const at::Tensor& threshold, int64_t level) {
  check_input(x, "x");
  TORCH_CHECK(threshold.numel() == 1 && threshold.scalar_type() == x.scalar_type(),
              "threshold must be one element of x's dtype");
  at::Tensor y = at::empty_like(x);  // dense input: same strides, so one flat loop serves both
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "qcfs_forward", [&] {
    const scalar_t step = step_of<scalar_t>(threshold, level);
    const scalar_t top = static_cast<scalar_t>(level);
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
      forward_block(in, out, begin, end, step, top);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> qcfs_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                 const at::Tensor& threshold, int64_t level,
                                                 bool threshold_grad) {
  check_input(x, "x");
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && grad_y.sizes() == x.sizes() &&
                  grad_y.strides() == x.strides(),
              "grad_y must have x's dtype, shape and strides");
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_threshold = at::zeros_like(threshold);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "qcfs_backward", [&] {
    const scalar_t thr = threshold.item<scalar_t>();
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* gy = grad_y.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    if (!threshold_grad) {
      at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
        input_grad_block(in, gy, gx, begin, end, thr);
      });
      return;
    }
    const scalar_t step = step_of<scalar_t>(threshold, level);
    const scalar_t top = static_cast<scalar_t>(level);
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(blocks, 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        partial[b] = both_grads_block(in, gy, gx, b * kBlock, std::min(n, (b + 1) * kBlock),
                                      thr, step, top);
      }
    });
    double total = 0.0;
    for (double p : partial) total += p;
    grad_threshold.fill_(total / static_cast<double>(thr));
  });
  return {grad_x, grad_threshold};
}

}  // namespace

TORCH_LIBRARY(pascal_qcfs, m) {
  m.def("forward(Tensor x, Tensor threshold, int level) -> Tensor");
  m.def("backward(Tensor grad_y, Tensor x, Tensor threshold, int level, bool threshold_grad)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pascal_qcfs, CPU, m) {
  m.impl("forward", &qcfs_forward);
  m.impl("backward", &qcfs_backward);
}
