#pragma once
// Convolution layers, Conv2d and Conv3d. Both are one implementation, ConvNd, over three spatial
// dimensions (a 2-D convolution has depth 1). Cross-correlation, like torch.nn.Conv2d / Conv3d: no
// kernel flip.
//
// Two host backends (DESIGN.md: "a host path (im2col + GEMM, or oneDNN)"), picked per layer at
// construction (ConvOptions::backend):
//  - oneDNN (kernels::DnnlConv), used whenever the build has it (TESSERA_WITH_DNNL, Debian's
//    libdnnl-dev): its JIT kernels use the CPU's widest vector instructions (AVX-512 where
//    present), which OpenBLAS may not (OPENBLAS_CORETYPE);
//  - im2col + GEMM (OpenBLAS), the fallback, described below.
//
// How the im2col path lays out the work (for speed on one core):
//  - samples are processed in blocks whose column matrix (C·k^d, block·Do·Ho·Wo) fits in the
//    core's L2 cache, so im2col writes it and the GEMMs read it while it is still there; when one
//    sample's columns alone exceed that (large 3-D volumes), a block is one sample's band of output
//    rows instead, so the buffer stays bounded whatever the volume;
//  - per sample, y_n (Cout, Do·Ho·Wo) = W (Cout, C·k^d) · col_n lands directly in NCDHW;
//    backward uses the same orientation: dW += dy_n · col_nᵀ, dcol_n = Wᵀ · dy_n, then col2im;
//  - the column buffer is a member, allocated once at construction, so calls do not allocate
//    scratch (one layer object is therefore not safe to call from two threads at once).
#include "tessera/kernels/conv_dnnl.hpp"
#include "tessera/kernels/im2col.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/spatial.hpp"

#include <memory>
#include <vector>

namespace tessera::nn {

/// Which host implementation a convolution layer runs.
enum class ConvBackend {
  automatic,  ///< oneDNN when the build has it (kernels::dnnl_available()), else im2col
  im2col,     ///< im2col + GEMM (OpenBLAS)
  dnnl,       ///< oneDNN; the constructor throws in a build without it
};
/// "automatic", "im2col", "dnnl".
const char* backend_name(ConvBackend backend);

struct ConvOptions {
  Index out = 0;                ///< output channels (>= 1)
  std::vector<Index> kernel{};  ///< 1 value (every spatial dimension) or one per dimension
  std::vector<Index> stride{};  ///< likewise; empty means 1
  std::vector<Index> pad{};     ///< zero padding on both sides, likewise; empty means 0
  bool bias = true;             ///< add a learned per-channel bias
  ConvBackend backend = ConvBackend::automatic;  ///< host implementation
};

/// The shared implementation of Conv2d and Conv3d (`ndims` = 2 or 3 spatial dimensions).
/// x: (N, C, [D,] H, W) → y: (N, out, [Do,] Ho, Wo). Parameters "<name>.weight"
/// (out, C, [kd,] kh, kw) and "<name>.bias" (out,), initialised U(-1/√fan_in, 1/√fan_in) with
/// fan_in = C·k^d; weight decay on the weight only.
class ConvNd : public Layer {
 public:
  const char* kind() const override { return m_kind; }
  Shape output_shape(const Shape& input) const override;
  /// Whole samples, or samples split over the grid's spatial axes (nn/spatial.hpp): the output is
  /// split likewise, each rank computing its block from its input block and a halo from its
  /// neighbours; the weight's and bias's gradients are then partial over those axes too.
  Layout place_input(const Layout& input) override;
  /// ctx.saved = {x (N, C, [D,] H, W)}: backward recomputes the columns from x block by block
  /// instead of keeping the whole (C·k^d, N·Do·Ho·Wo) matrix alive between the two passes (im2col;
  /// oneDNN's backward primitives read x directly).
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;

  int spatial_dims() const { return m_ndims; }
  /// The backend this layer runs: ConvBackend::im2col or ConvBackend::dnnl (never automatic).
  ConvBackend backend() const { return m_backend; }
  bool has_bias() const { return m_bias; }
  /// Extents as a 3-D convolution (a 2-D one has depth 1), of the whole sample.
  const kernels::ConvGeometry& geometry() const { return m_geom; }
  /// The geometry the kernels run: geometry(), or on a spatial split this rank's window (its block
  /// and halo, padding included, run unpadded).
  const kernels::ConvGeometry& local_geometry() const { return m_run; }
  /// Whether this rank computes its interior while the halo travels for a batch of n (a split
  /// along one dimension, oneDNN backend on its blocked layouts, an interior that reads no
  /// neighbour's row).
  bool overlaps_halo(Index n) const { return overlapped(n); }
  /// Samples per im2col block (im2col backend).
  Index chunk() const { return m_chunk; }
  /// Output rows (of the Do·Ho grid) per im2col block: all of them unless one sample's columns
  /// exceed the cache budget, in which case chunk() is 1.
  Index tile_rows() const { return m_tile_rows; }
  Parameter& weight() { return parameters()[0]; }
  /// Only when has_bias().
  Parameter& bias() { return parameters()[1]; }

 protected:
  /// `kind` is "conv2d" or "conv3d"; `input` is one sample, (C, H, W) or (C, D, H, W).
  ConvNd(std::string name, const Shape& input, const ConvOptions& options, int ndims,
         const char* kind, BuildContext context);

 private:
  const char* m_kind;
  int m_ndims;
  bool m_bias;
  Index m_out;
  Shape m_input;   // (C, [D,] H, W)
  Shape m_output;  // (out, [Do,] Ho, Wo)
  kernels::ConvGeometry m_geom;
  kernels::ConvGeometry m_run;  // what the kernels compute: m_geom, or this rank's window
  Shape m_local_input;          // this rank's block of an input sample (m_input unless split)
  Shape m_local_output;
  std::unique_ptr<Halo> m_halo;  // on a spatial split only
  Layout m_placed;               // the input layout place_input last took
  Layout m_output_layout;        // and the output layout it gave
  Index m_chunk = 1;
  Index m_tile_rows = 1;
  ConvBackend m_backend = ConvBackend::im2col;
  ConvBackend m_requested = ConvBackend::automatic;
  Tensor m_col;  // im2col scratch (C·k^d, m_chunk·m_tile_rows·Wo); undefined with oneDNN
  std::unique_ptr<kernels::DnnlConv> m_dnnl;  // oneDNN backend only
  BufferPool m_output_pool;                   // y, reused from step to step (oneDNN backend)
  BufferPool m_input_grad_pool;               // dx (oneDNN backend)

  /// On a spatial split whose halo exchange can overlap (Halo::overlaps(), oneDNN backend): the
  /// output rows along the split dimension cut into the interior, whose windows read no row a
  /// neighbour sends, and the boundary rows below and above it, each piece a convolution of its
  /// own on its box of the window (DnnlOptions::input_outer). Forward computes the interior while
  /// the halo rows travel; backward computes the boundary first and sends its gradients back
  /// while it computes the interior.
  struct Piece {
    Index out_begin = 0;  // its first output row along the split dimension (it reads window
                          // rows from out_begin · stride on; its DnnlConv knows how many)
    std::unique_ptr<kernels::DnnlConv> conv;
  };
  std::vector<Piece> m_pieces;  // the interior first; empty: no overlap
  size_t m_piece_axis = 0;      // the split dimension among the three of ConvGeometry

  /// Cuts m_run into m_pieces where the halo allows it.
  void plan_pieces();
  /// Whether a batch of n runs in pieces (m_pieces, and oneDNN not on its plain layouts).
  bool overlapped(Index n) const;
  /// Runs piece `p` forward from window x into y, or backward (dx null: no input gradient).
  void piece_forward(const Piece& p, const Tensor& x, const Tensor& y);
  void piece_backward(const Piece& p, const Tensor& x, const Tensor& dy, const Tensor& dx);

  /// Sizes the kernels' scratch (im2col columns or the oneDNN primitives) for `run`.
  void configure(const kernels::ConvGeometry& run);
  /// Calls f(first, count, rows) for every block of samples × output rows, in order.
  template <class F>
  void for_each_block(Index n, F&& f) const;
  /// The im2col backend: y (zero on entry) = conv(x) + bias; dx (undefined: skipped) = the input
  /// gradient, and the parameter gradients accumulate.
  void forward_im2col(const Tensor& x, const Tensor& y);
  void backward_im2col(const Tensor& x, const Tensor& dy, const Tensor& dx);
};

/// 2-D convolution: input (C, H, W), weight (out, C, kh, kw).
class Conv2d final : public ConvNd {
 public:
  Conv2d(std::string name, const Shape& input, const ConvOptions& options,
         BuildContext context = {});
};

/// 3-D convolution: input (C, D, H, W), weight (out, C, kd, kh, kw).
class Conv3d final : public ConvNd {
 public:
  Conv3d(std::string name, const Shape& input, const ConvOptions& options,
         BuildContext context = {});
};

}  // namespace tessera::nn
