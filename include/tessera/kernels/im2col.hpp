#pragma once
// im2col / col2im: the unfolding that turns a convolution into one GEMM (Chellapilla et al., 2006;
// Caffe). One implementation covers 1, 2 and 3 spatial dimensions: every extent is (D, H, W), and a
// 2-D convolution is a 3-D one of depth 1 (input depth 1, kernel 1, stride 1, pad 0).
//
// The output grid is Do·Ho "output rows" of Wo positions each; output row t = od·Ho + oh. For
// samples [first, first + count) of x (N, C, D, H, W) and output rows [t0, t1) (all of them by
// default) the column matrix is, with R = (t1 - t0)·Wo columns per sample,
//   col: (C·kd·kh·kw, count·R), row-major,
//   col(r, b·R + (t - t0)·Wo + ow) =
//       x(first + b, c, od·sd - pd + i, oh·sh - ph + j, ow·sw - pw + l)
// (0 where that index falls in the padding), with r = ((c·kd + i)·kh + j)·kw + l. Row r of the
// weight (Cout, C, kd, kh, kw) viewed as (Cout, C·kd·kh·kw) multiplies row r of col, so
// W · col(:, b·R : (b+1)·R) is sample b's output (Cout, Do·Ho·Wo) at positions [t0·Wo, t1·Wo) —
// with all rows, sample b's whole output, already in NCDHW. Restricting the rows bounds the
// buffer for large 3-D volumes, where one sample's columns would not fit in memory.
#include "tessera/core/tensor.hpp"

#include <array>

namespace tessera::kernels {

/// Extents of one convolution, spatial arrays ordered (D, H, W).
struct ConvGeometry {
  Index channels = 1;                    ///< C, input channels
  std::array<Index, 3> input{1, 1, 1};   ///< (D, H, W)
  std::array<Index, 3> kernel{1, 1, 1};  ///< (kd, kh, kw)
  std::array<Index, 3> stride{1, 1, 1};  ///< (sd, sh, sw)
  std::array<Index, 3> pad{0, 0, 0};     ///< zero padding on both sides, (pd, ph, pw)
  std::array<Index, 3> output{1, 1, 1};  ///< (Do, Ho, Wo)

  /// The geometry with output = (input + 2·pad - kernel) / stride + 1 (floor) in every dimension.
  /// An extent below 1 is returned as computed (possibly <= 0); callers validate and report it.
  static ConvGeometry make(Index channels, const std::array<Index, 3>& input,
                           const std::array<Index, 3>& kernel, const std::array<Index, 3>& stride,
                           const std::array<Index, 3>& pad);

  Index kernel_volume() const { return kernel[0] * kernel[1] * kernel[2]; }
  Index input_volume() const { return input[0] * input[1] * input[2]; }
  Index output_volume() const { return output[0] * output[1] * output[2]; }
  /// Output rows Do·Ho (each of Wo positions).
  Index output_rows() const { return output[0] * output[1]; }
  /// Rows of the column matrix: C·kd·kh·kw (the GEMM's reduction length).
  Index col_rows() const { return channels * kernel_volume(); }
  /// Elements of one input sample: C·D·H·W.
  Index sample_size() const { return channels * input_volume(); }
};

/// Output rows [begin, end) of the Do·Ho grid (see the top of this file).
struct OutputRows {
  Index begin = 0;
  Index end = 0;
  Index size() const { return end - begin; }
};

/// Unfolds samples [first, first + count) of x (N, C, D, H, W; any tensor of N·C·D·H·W elements)
/// into col, whose first col_rows()·count·rows.size()·Wo elements become the column matrix
/// described above. col may be larger (a reused scratch buffer).
void im2col(const Tensor& x, const ConvGeometry& g, Index first, Index count, OutputRows rows,
            const Tensor& col);
/// The same for all output rows: col (C·kd·kh·kw, count·Do·Ho·Wo).
void im2col(const Tensor& x, const ConvGeometry& g, Index first, Index count, const Tensor& col);

/// The adjoint of im2col: folds the column matrix in col back onto samples [first, first + count)
/// of dx (N, C, D, H, W), ACCUMULATING (+=): an input element covered by several kernel positions
/// receives the sum of their columns. col is treated as scratch: its entries that fall on the
/// zero padding (which carry no gradient) may be set to zero.
void col2im(const Tensor& col, const ConvGeometry& g, Index first, Index count, OutputRows rows,
            const Tensor& dx);
/// The same for all output rows.
void col2im(const Tensor& col, const ConvGeometry& g, Index first, Index count, const Tensor& dx);

}  // namespace tessera::kernels
