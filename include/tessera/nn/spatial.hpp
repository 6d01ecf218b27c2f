#pragma once
// Spatial decomposition of a model's samples (DESIGN.md, "a halo exchange object per layer"): each
// rank of the grid's spatial axes holds a block of every sample and of every activation, as a
// domain-decomposed stencil code holds its sub-box of the field. Sample dimension 1 + i (depth,
// height, width of (C, D, H, W); height, width of (C, H, W)) is split over grid axis spatial<i>.
//
// A window layer (convolution, pooling) computes the block of its output that the same split gives
// it — block_range(output extent, parts, coord) — and reads the input rows those outputs' windows
// cover: its own block plus a halo from each neighbour (kernel, stride, padding and odd extents
// decide how wide; the layer's padding is materialised where the window passes the volume's edge,
// so the local kernel runs unpadded). Halo gathers the halo's rows forward and, backward, sends the
// gradient of those rows back to their owners, who add it to their own (the adjoint).
//
// The exchange is dimension by dimension, each message carrying the rows already received along
// the dimensions before it (edges and corners travel through two or three hops, as in a stencil
// code's ghost exchange), with non-blocking send/recv on that dimension's axis communicator.
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/progress.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/build_context.hpp"

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace tessera::nn {

/// Grid axis spatial<i>, i in [0, 3).
GridAxis spatial_axis(int i);

/// The layout of a model's input samples (C, [D,] H, W) at `place`: spatial dimension i split over
/// grid axis spatial<i> where that axis has more than one rank. Throws tessera::Error when the grid
/// splits a dimension the sample does not have, or an extent into more parts than it has elements.
Layout spatial_input_layout(const Shape& sample, const GridPlace& place);

/// One spatial dimension of a window layer: input extent, window, stride, padding (both sides) and
/// output extent, split in `parts` blocks.
struct WindowAxis {
  Index in = 1;
  Index out = 1;
  Index kernel = 1;
  Index stride = 1;
  Index pad = 0;
  int parts = 1;

  Range input(int part) const { return block_range(in, parts, part); }
  Range output(int part) const { return block_range(out, parts, part); }
  /// First input row (may be negative: padding) that part's outputs read.
  Index need_begin(int part) const;
  /// One past the last input row (may pass `in`: padding) that part's outputs read.
  Index need_end(int part) const;
};

/// The halo exchange of one window layer at one grid place.
class Halo {
 public:
  /// `layer` names the owner in messages ("conv3d 'conv0'"); `input` is the layout of the layer's
  /// input samples (C, spatial...); `axes` one WindowAxis per spatial dimension, split as `input`
  /// says. Throws tessera::Error, the same on every rank, when a split leaves some rank no output
  /// or a window reaches past a neighbour's block (a kernel wider than a tile).
  Halo(std::string layer, const Layout& input, std::vector<WindowAxis> axes,
       const BuildContext& context);

  /// One sample of what the local kernel reads: (C, window...).
  const Shape& window() const { return m_window; }
  /// One sample of this rank's input block, (C, local...).
  const Shape& local_input() const { return m_local; }
  /// One sample of this rank's output block's spatial extents.
  const Shape& local_output() const { return m_local_out; }
  /// Whether any row comes from a neighbour (false: padding at most).
  bool exchanges() const { return m_exchanges; }

  /// x (N, C, local...) → (N, C, window...): the halo rows from the neighbours, `fill` where the
  /// window passes the volume's edge. Every rank of the spatial axes calls it together. x itself
  /// when the windows read exactly this rank's block (a 2×2 pooling of even tiles).
  Tensor gather(const Tensor& x, float fill) const;
  /// The adjoint: dwindow (N, C, window...) → dx (N, C, local...), the halo rows' gradients sent to
  /// their owners and added there; the padding's dropped.
  Tensor scatter(const Tensor& dwindow) const;

  // --- Overlap: the exchange in flight while the layer computes what needs none of it ----------
  // When the input is split along one spatial dimension only and the window is this rank's block
  // plus halo rows and padding (overlaps()), gather and scatter come in two halves: begin_* posts
  // the messages and returns, finish_* waits for them and completes the result. In between, the
  // layer computes the outputs whose windows read none of the pending rows (the interior);
  // backward, the outputs whose windows do read them go first, so that their gradients can leave.

  /// Whether gather/scatter can be split as above.
  bool overlaps() const { return m_overlap_dim >= 0; }
  /// The split spatial dimension (0 for the first of (D, H, W) or (H, W)); only when overlaps().
  int overlap_dim() const { return m_overlap_dim; }
  /// The window's rows along overlap_dim() that come from the lower and the upper neighbour, in
  /// window coordinates (count 0 where none).
  Range pending_low() const { return m_pending_low; }
  Range pending_high() const { return m_pending_high; }

  /// One dimension's messages in flight.
  struct Transfer {
    size_t dim = 0;
    bool backward = false;
    Range recv_low, recv_high;
    Tensor in_low, in_high, out_low, out_high;  // received and sent rows, where tensors live
    std::vector<std::unique_ptr<comm::Work>> work;
    /// Moves the messages while the layer computes (begin_gather / begin_scatter only).
    std::unique_ptr<comm::BackgroundProgress> progress;
  };
  /// A gather or scatter begun and not finished.
  struct InFlight {
    Tensor buffer;  ///< gather: the window, its pending rows not yet filled; scatter: dwindow
    Transfer transfer;
  };
  /// gather(x, fill)'s first half: the window with this rank's rows and the padding in place, the
  /// halo rows' messages posted. Only when overlaps().
  InFlight begin_gather(const Tensor& x, float fill) const;
  /// Waits for the halo rows and returns the whole window.
  Tensor finish_gather(InFlight&& flight) const;
  /// scatter(dwindow)'s first half: the gradients of the pending rows (complete in dwindow by
  /// now) sent to their owners, the neighbours' gradients of this rank's rows posted for.
  InFlight begin_scatter(const Tensor& dwindow) const;
  /// Waits, adds the neighbours' gradients and returns dx (N, C, local...).
  Tensor finish_scatter(InFlight&& flight) const;

 private:
  struct Dim {
    GridAxis axis = GridAxis::spatial0;
    int parts = 1;
    int coord = 0;
    Range own;             // this rank's input block
    Index begin = 0;       // buffer range [begin, end): own ∪ needed
    Index end = 0;         //
    Index need_begin = 0;  // the window, within the buffer range
    Index need_end = 0;
    Range from_low;   // rows received from coord - 1 (global), count 0 if none
    Range from_high;  // rows received from coord + 1
    Range to_low;     // rows sent to coord - 1
    Range to_high;    // rows sent to coord + 1
  };
  std::string m_layer;
  const BuildContext* m_context;
  Index m_channels = 1;
  std::vector<Dim> m_dims;
  Shape m_local, m_window, m_local_out, m_buffer;
  Shape m_extent;  // the whole input's spatial extents
  bool m_exchanges = false;
  bool m_window_is_buffer = true;
  bool m_window_is_own = true;  // the window is this rank's block (no halo, no padding)
  int m_overlap_dim = -1;
  Range m_pending_low, m_pending_high;

  /// Moves the halo rows of dimension `d` forward (received rows overwrite) or backward (sent
  /// back and added).
  void exchange(const Tensor& buffer, size_t d, bool backward) const;
  /// exchange() in two halves: post the messages, then wait and unpack.
  Transfer start_exchange(const Tensor& buffer, size_t d, bool backward) const;
  void finish_exchange(const Tensor& buffer, Transfer& t) const;
  /// gather's first part: a buffer with the padding filled and this rank's block copied in.
  Tensor fill_buffer(const Tensor& x, float fill) const;
  /// scatter's last part: this rank's block of the buffer.
  Tensor own_block(const Tensor& buffer) const;
  /// Adds `seconds` of halo time (one call) to the context's clock.
  void count(double seconds) const;
  /// begin_gather's and begin_scatter's exchange along the overlap dimension, its messages moved
  /// from a helper thread (comm/progress.hpp) while the caller computes.
  InFlight start_overlapped(Tensor buffer, bool backward) const;
};

/// What a window layer's place_input works out: the halo (none when the input is whole) and the
/// output's layout (split as the input is), and the spatial axes that split it.
struct WindowPlacement {
  std::unique_ptr<Halo> halo;
  Layout output;
  AxisSet split;
};
/// Places a window layer (`layer` names it in messages) with input `input` (C, spatial...) and
/// output samples `output`: `axes` gives every spatial dimension's extents, window, stride and
/// padding (parts are filled in here from the input's split). Throws tessera::Error unless the
/// input is whole or split over spatial axes only (not its channels, not partial).
WindowPlacement place_window(const std::string& layer, const Layout& input,
                             std::vector<WindowAxis> axes, const Shape& output,
                             const BuildContext& context);

}  // namespace tessera::nn
