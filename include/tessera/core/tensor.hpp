#pragma once
// Tensor: a labelled, contiguous, row-major Kokkos view plus its shape. The storage lives in the
// default execution space's memory (host memory in the Serial/OpenMP builds, device memory in a
// CUDA build of Kokkos). Copies of a Tensor share storage, like Kokkos views; clone() copies data.
#include "tessera/core/dtype.hpp"

#include <Kokkos_Core.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

/// A tensor's extents, outermost first: (N, C, H, W) for a batch of images.
using Shape = std::vector<Index>;

/// Number of elements of `shape` (1 for a rank-0 shape).
Index numel(const Shape& shape);
/// "(128, 32, 14, 14)".
std::string to_string(const Shape& shape);

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
/// Whether the host can address tensor memory: true in a host build, false where tensors live
/// in device memory (a CUDA build), where host code goes through host copies (Tensor::host_view).
inline constexpr bool kHostTensors =
    Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
using FloatView = Kokkos::View<float*, MemSpace>;
using IntView = Kokkos::View<std::int32_t*, MemSpace>;
using IndexView = Kokkos::View<Index*, MemSpace>;

/// While one lives on a thread, the tensors it constructs hold a shape and no storage (data() is
/// null): `tessera check` builds a model this way to see its shapes, sizes and memory without
/// allocating it. Only shapes may be read from such tensors.
class ShapeOnly {
 public:
  ShapeOnly();
  ~ShapeOnly();
  ShapeOnly(const ShapeOnly&) = delete;
  ShapeOnly& operator=(const ShapeOnly&) = delete;
  /// Whether one is alive on this thread.
  static bool active();
};

/// This machine's physical memory in bytes (no tensor may be larger).
double physical_memory_bytes();

class Tensor {
 public:
  /// An undefined tensor (no storage, rank 0, numel 0). defined() is false.
  Tensor() = default;
  /// A zero-filled tensor of `shape`; `label` names the Kokkos allocation ("Conv2d::weight").
  Tensor(const std::string& label, Shape shape, DType dtype = DType::f32);
  /// A tensor holding `values` (row-major); values.size() must equal numel(shape).
  static Tensor from_host(const std::string& label, Shape shape, const std::vector<float>& values);
  /// A tensor of `shape` whose storage is NOT initialised (no zero fill): for outputs that a kernel
  /// overwrites entirely. Reading an element before writing it gives an unspecified value.
  static Tensor uninitialized(const std::string& label, Shape shape, DType dtype = DType::f32);

  bool defined() const { return m_defined; }
  const std::string& label() const { return m_label; }
  const Shape& shape() const { return m_shape; }
  int rank() const { return static_cast<int>(m_shape.size()); }
  /// Extent of dimension `d`; negative `d` counts from the end (-1 is the last dimension).
  Index dim(int d) const;
  Index numel() const { return m_numel; }
  DType dtype() const { return m_dtype; }

  /// The flat storage (numel() elements, row-major).
  const FloatView& view() const { return m_view; }
  /// The storage's address, in the memory space of the build (a GPU's in a CUDA build): for
  /// kernels, BLAS/cuBLAS and communication buffers. Host code reads and writes values through
  /// host_view() / host_staging() + store(), at(), to_host() or copy_from_host().
  float* data() const { return m_view.data(); }

  /// Host memory holding this tensor's values (flat, numel() elements).
  using HostView = FloatView::HostMirror;
  /// The values where the host can read them: the tensor's own storage when the host can address
  /// it (every host build: no copy), else a host copy made now (a CUDA build). Writing into it
  /// changes the tensor only in the first case: pass it to store() after writing.
  HostView host_view() const;
  /// Host memory to write this tensor's values into and then hand to store(): its own storage
  /// when the host can address it, else an uninitialised host buffer of numel() elements.
  HostView host_staging() const;
  /// Makes `values` (from host_view() or host_staging() of this tensor, written on the host) the
  /// tensor's values: nothing to copy when they are its storage.
  void store(const HostView& values) const;
  /// Element `i` of the flat storage, copied to the host: for messages, not for loops.
  float at(Index i) const;

  /// A tensor of `shape` over elements [offset, offset + numel(shape)) of `storage`, shared, not
  /// copied: how parameters and gradients live in one contiguous arena (parallel::DataParallel).
  static Tensor alias(const std::string& label, const FloatView& storage, Index offset,
                      Shape shape);
  /// A tensor sharing this one's storage with another shape of the same numel.
  Tensor reshaped(Shape shape) const;
  /// A deep copy under a new label.
  Tensor clone(const std::string& label) const;

  void fill(float value) const;
  void zero() const { fill(0.0F); }
  std::vector<float> to_host() const;
  void copy_from_host(const std::vector<float>& values) const;
  /// Copies `other`'s values (same numel) into this tensor's storage.
  void copy_from(const Tensor& other) const;

 private:
  Tensor(const std::string& label, Shape shape, DType dtype, bool zero_fill);

  std::string m_label;
  Shape m_shape;
  Index m_numel = 0;
  DType m_dtype = DType::f32;
  bool m_defined = false;
  FloatView m_view;
};

/// Throws tessera::Error unless `t` has exactly `expected` shape; `what` names the caller
/// ("Linear 'fc1' input") so the message says which layer and which shapes.
void check_shape(const Tensor& t, const Shape& expected, const std::string& what);

}  // namespace tessera
