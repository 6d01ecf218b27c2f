#pragma once
// Host convolutions with oneDNN (DESIGN.md: "convolutions ... to a host path (im2col + GEMM, or
// oneDNN) on the CPU"): forward, backward-data and backward-weights (+ bias) primitives for 2-D and
// 3-D cross-correlation with stride and zero padding, on the plain row-major tensors Tessera keeps
// — x (N, C, [D,] H, W), w (out, C, [kd,] kh, kw), y (N, out, [Do,] Ho, Wo), bias (out,).
//
// Built only when oneDNN is found (TESSERA_WITH_DNNL, Debian's libdnnl-dev): conv_dnnl.cpp; else
// conv_dnnl_none.cpp, where dnnl_available() is false and constructing a DnnlConv throws. The
// layers (nn::ConvNd) pick their backend from dnnl_available(), so no caller needs an #ifdef.
//
// A DnnlConv caches, per batch size, everything a step uses: the primitives, their descriptors,
// the reorders between the plain tensors and the memory formats oneDNN chose, those formats'
// buffers and one scratchpad. Steady-state calls create nothing; they point oneDNN's memory
// objects at the caller's tensors and execute. All objects share one CPU engine and stream per
// process. oneDNN threads with the OpenMP runtime in Debian's build: set_dnnl_threads (called by
// set_blas_threads, i.e. run.blas_threads) or OMP_NUM_THREADS sets its thread count.
#include "tessera/core/tensor.hpp"
#include "tessera/kernels/im2col.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace tessera::kernels {

/// Whether this build has the oneDNN backend.
bool dnnl_available();

/// Sets the number of threads oneDNN's primitives use (its OpenMP runtime's, for the calling
/// thread); without oneDNN, does nothing.
void set_dnnl_threads(int threads);

/// Row-major C = alpha·op(A)·op(B) + beta·C through oneDNN's sgemm (its JIT kernels use the widest
/// vector unit of the CPU: AVX-512 where OpenBLAS is held to AVX2 by OPENBLAS_CORETYPE). Returns
/// false, doing nothing, in a build without oneDNN or when the environment sets
/// TESSERA_HOST_GEMM=openblas; kernels::gemm then calls OpenBLAS.
bool dnnl_gemm(bool trans_a, bool trans_b, Index m, Index n, Index k, float alpha, const float* a,
               Index lda, const float* b, Index ldb, float beta, float* c, Index ldc);

/// Row-major C = alpha·op(A)·op(B) + beta·C with A and B dense bfloat16 as stored (A m×k, or k×m
/// when trans_a; B k×n, or n×k when trans_b), C fp32 (row stride ldc): oneDNN's matmul with bf16
/// inputs and fp32 accumulation (AVX-512 BF16 instructions where the CPU has them). One primitive
/// per shape, transposes, alpha and beta, kept for the process. Returns false, doing nothing, in a
/// build without oneDNN, where oneDNN has no bf16 matmul for this CPU, or under
/// TESSERA_HOST_GEMM=openblas; kernels::gemm then multiplies the bf16 values in fp32.
bool dnnl_gemm_bf16(bool trans_a, bool trans_b, Index m, Index n, Index k, float alpha,
                    const std::uint16_t* a, const std::uint16_t* b, float beta, float* c,
                    Index ldc);

/// Memory formats of the primitives.
enum class DnnlFormat {
  /// oneDNN's choice (format_tag::any; blocked, e.g. nChw16c, for most shapes), with Tessera
  /// reordering from / to the plain tensors around each primitive — except for a convolution whose
  /// input oneDNN keeps plain under `any` (few input channels, e.g. a first layer on images): its
  /// forward and backward-data primitives then run on the plain layouts, because on such shapes a
  /// blocked output costs a reorder larger than the convolution and the blocked backward-data
  /// kernel is several times slower than the plain one (bench/RESULTS.md, "oneDNN").
  automatic,
  any,    ///< format_tag::any for every primitive, reordering as needed
  plain,  ///< the plain layouts as stored (nchw / ncdhw, oihw / oidhw) throughout: no reorders
};

/// How a DnnlConv runs (an options struct, so that a new field changes no signature).
struct DnnlOptions {
  DnnlFormat format = DnnlFormat::automatic;
  /// Let oneDNN choose the algorithm of the forward and backward-data primitives of a convolution
  /// on blocked formats (convolution_auto): Winograd F(4×4, 3×3) for 3×3 stride-1 2-D
  /// convolutions where its heuristic expects a gain (AVX-512 CPUs, batches from about 10: for
  /// 32→64 channels on 14×14, batch 15 and up but not 8), direct otherwise. Winograd's rounding
  /// error is a few times direct's (about 1e-6 relative in float). false: direct everywhere. The
  /// backward-weights primitive is always direct (faster than oneDNN's Winograd one measured).
  bool auto_algorithm = true;
  /// The convolution runs on boxes of larger tensors (the pieces of a spatially split layer that
  /// overlaps its halo exchange, nn/conv.hpp): x and dx lie in tensors whose samples have the
  /// spatial extents `input_outer` (D, H, W), y and dy in tensors of `output_outer`; all zero
  /// (the default): the tensors are exactly the geometry's. Use forward_view / backward_view.
  std::array<Index, 3> input_outer{0, 0, 0};
  std::array<Index, 3> output_outer{0, 0, 0};
  /// backward adds the input gradient onto dx instead of overwriting it (pieces whose inputs
  /// overlap).
  bool accumulate_input_grad = false;
};

/// One convolution (shapes fixed but for the batch size), executed with oneDNN.
class DnnlConv {
 public:
  /// `g`: extents as a 3-D convolution (a 2-D one has depth 1, as in im2col); `out_channels`;
  /// `ndims` = 2 or 3 spatial dimensions (2 requires depth 1 throughout); `bias`: whether
  /// forward adds one and backward computes its gradient. `what` names the layer in errors
  /// ("conv2d 'conv1'"). Throws tessera::Error in a build without oneDNN.
  DnnlConv(std::string what, const ConvGeometry& g, Index out_channels, int ndims, bool bias,
           const DnnlOptions& options = {});
  ~DnnlConv();
  DnnlConv(DnnlConv&&) noexcept;
  DnnlConv& operator=(DnnlConv&&) noexcept;
  DnnlConv(const DnnlConv&) = delete;
  DnnlConv& operator=(const DnnlConv&) = delete;

  /// y = conv(x, w) + bias (bias only when constructed with one). x (N, C, [D,] H, W), w (out, C,
  /// k...), bias (out,), y (N, out, [Do,] Ho, Wo), all contiguous f32; y is overwritten.
  void forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y);

  /// The gradients for output gradient dy (N, out, [Do,] Ho, Wo) of forward(x, w, ...):
  ///   dx = the input gradient, OVERWRITTEN; skipped when dx is undefined (a first layer);
  ///   dw += the weight gradient, db += the bias gradient (ACCUMULATE, as Layer::backward does);
  ///   db must be undefined exactly when there is no bias.
  /// dy is reordered once when backward-data and backward-weights want it in one format.
  void backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                const Tensor& dw, const Tensor& db);

  /// forward and backward on boxes of larger tensors (DnnlOptions::input_outer, output_outer):
  /// each pointer is the box's first element, n the batch size; dx may be null (no input
  /// gradient). Shapes are the caller's to get right.
  void forward_view(Index n, const float* x, const Tensor& w, const Tensor& bias, float* y);
  void backward_view(Index n, const float* x, const Tensor& w, const float* dy, float* dx,
                     const Tensor& dw, const Tensor& db);

  /// Whether the primitives for batch size n run on the plain layouts (DnnlFormat::plain, or
  /// automatic with few input channels). Boxes of larger tensors (forward_view) then cost a copy
  /// each way, since oneDNN's plain kernels take dense tensors only (its reference kernel, many
  /// times slower, would take the strides). Builds the plan for n if needed.
  bool plain_activations(Index n);

  /// The implementations oneDNN chose for batch size n ("jit:avx512_core" ...) and the formats,
  /// one line per primitive: for benchmarks and logs. Builds the plan for n if needed.
  std::string describe(Index n);

 private:
  struct Impl;  // conv_dnnl.cpp
  std::unique_ptr<Impl> m_impl;
};

}  // namespace tessera::kernels
