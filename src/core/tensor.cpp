#include "tessera/core/tensor.hpp"

#include "tessera/core/check.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <new>

namespace tessera {

Index numel(const Shape& shape) {
  Index n = 1;
  for (Index d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw Error(fmt::format("shape {} has more elements than a 64-bit count holds",
                              fmt::join(shape, " × ")));
    }
  }
  return n;
}

double physical_memory_bytes() {
  static const double bytes =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  return bytes;
}

namespace {
std::string gib(double bytes) {
  return fmt::format("{:.1f} GiB", bytes / (1024.0 * 1024.0 * 1024.0));
}

thread_local int t_shape_only = 0;
}  // namespace

ShapeOnly::ShapeOnly() {
  ++t_shape_only;
}
ShapeOnly::~ShapeOnly() {
  --t_shape_only;
}
bool ShapeOnly::active() {
  return t_shape_only > 0;
}

std::string to_string(const Shape& shape) {
  if (shape.size() == 1) {
    return fmt::format("({},)", shape[0]);
  }
  return fmt::format("({})", fmt::join(shape, ", "));
}

Tensor::Tensor(const std::string& label, Shape shape, DType dtype)
    : Tensor(label, std::move(shape), dtype, /*zero_fill=*/true) {}

Tensor::Tensor(const std::string& label, Shape shape, DType dtype, bool zero_fill)
    : m_label(label),
      m_shape(std::move(shape)),
      m_numel(tessera::numel(m_shape)),
      m_dtype(dtype),
      m_defined(true) {
  for (Index d : m_shape) {
    TESSERA_CHECK(d >= 0, "tensor '{}': negative extent in shape {}", label, to_string(m_shape));
  }
  TESSERA_CHECK(dtype == DType::f32, "tensor '{}': {} storage does not exist (float32 only)", label,
                dtype_name(dtype));
  const auto n = static_cast<std::size_t>(m_numel);
  // A size from a deck or a file that cannot be: one clear message (the deck's parser and
  // `tessera check` locate it at the layer that asked) instead of Kokkos's allocation failure or
  // the kernel's OOM killer.
  const double bytes = 4.0 * static_cast<double>(n);
  if (bytes > physical_memory_bytes()) {
    throw Error(
        fmt::format("tensor '{}' of shape {} needs {}, more than this machine's {} of "
                    "memory",
                    label, to_string(m_shape), gib(bytes), gib(physical_memory_bytes())));
  }
  if (ShapeOnly::active()) {
    return;
  }
  try {
    m_view = zero_fill ? FloatView(label, n)
                       : FloatView(Kokkos::view_alloc(label, Kokkos::WithoutInitializing), n);
  } catch (const std::bad_alloc&) {
    throw Error(fmt::format("tensor '{}' of shape {}: cannot allocate {} (out of memory)", label,
                            to_string(m_shape), gib(bytes)));
  }
}

Tensor Tensor::uninitialized(const std::string& label, Shape shape, DType dtype) {
  return Tensor(label, std::move(shape), dtype, /*zero_fill=*/false);
}

Tensor Tensor::from_host(const std::string& label, Shape shape, const std::vector<float>& values) {
  Tensor t = uninitialized(label, std::move(shape));  // every element is copied in
  t.copy_from_host(values);
  return t;
}

Index Tensor::dim(int d) const {
  const int r = rank();
  const int i = d < 0 ? d + r : d;
  TESSERA_CHECK(i >= 0 && i < r, "tensor '{}' of shape {} has no dimension {}", m_label,
                to_string(m_shape), d);
  return m_shape[static_cast<std::size_t>(i)];
}

Tensor Tensor::alias(const std::string& label, const FloatView& storage, Index offset,
                     Shape shape) {
  const Index n = tessera::numel(shape);
  TESSERA_CHECK(offset >= 0 && offset + n <= static_cast<Index>(storage.extent(0)),
                "tensor '{}': elements [{}, {}) are outside the {} of storage '{}'", label, offset,
                offset + n, storage.extent(0), storage.label());
  Tensor t;
  t.m_label = label;
  t.m_shape = std::move(shape);
  t.m_numel = n;
  t.m_defined = true;
  t.m_view = Kokkos::subview(storage, std::make_pair(offset, offset + n));
  return t;
}

Tensor Tensor::reshaped(Shape shape) const {
  TESSERA_CHECK(tessera::numel(shape) == m_numel, "tensor '{}': cannot reshape {} to {}", m_label,
                to_string(m_shape), to_string(shape));
  Tensor t = *this;
  t.m_shape = std::move(shape);
  return t;
}

Tensor Tensor::clone(const std::string& label) const {
  Tensor t(label, m_shape, m_dtype, /*zero_fill=*/false);  // every element is copied in
  Kokkos::deep_copy(t.m_view, m_view);
  return t;
}

void Tensor::fill(float value) const {
  if constexpr (kHostTensors) {
    if (value == 0.0F && !std::signbit(value)) {
      // +0.0f is all zero bits: memset runs 2-3x faster than Kokkos's element-wise fill loop.
      if (m_numel > 0 && data() != nullptr) {  // none in a ShapeOnly tensor
        std::memset(data(), 0, static_cast<std::size_t>(m_numel) * sizeof(float));
      }
      return;
    }
  }
  Kokkos::deep_copy(m_view, value);
}

std::vector<float> Tensor::to_host() const {
  std::vector<float> out(static_cast<std::size_t>(m_numel));
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> host(out.data(),
                                                                                        out.size());
  Kokkos::deep_copy(host, m_view);
  return out;
}

void Tensor::copy_from_host(const std::vector<float>& values) const {
  TESSERA_CHECK(static_cast<Index>(values.size()) == m_numel,
                "tensor '{}' of shape {}: {} values given, {} expected", m_label,
                to_string(m_shape), values.size(), m_numel);
  Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> host(
      values.data(), values.size());
  Kokkos::deep_copy(m_view, host);
}

Tensor::HostView Tensor::host_view() const {
  return Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m_view);
}

namespace {
// The tensor's own view where the host can address it, else a new host buffer. A template: in a
// non-template function `if constexpr` still compiles the discarded branch, and a CUDA build's
// device view does not convert to a host view (the CUDA build of the whole program failed here).
template <class View>
Tensor::HostView staging_of(const View& view, const std::string& label, Index numel) {
  if constexpr (kHostTensors) {
    return view;
  } else {  // (Kokkos 3's create_mirror_view takes no WithoutInitializing)
    return Tensor::HostView(Kokkos::view_alloc(label + " (host)", Kokkos::WithoutInitializing),
                            static_cast<std::size_t>(numel));
  }
}
}  // namespace

Tensor::HostView Tensor::host_staging() const {
  return staging_of(m_view, m_label, m_numel);
}

void Tensor::store(const HostView& values) const {
  TESSERA_CHECK(static_cast<Index>(values.extent(0)) == m_numel,
                "tensor '{}' of shape {}: {} host values stored, {} expected", m_label,
                to_string(m_shape), values.extent(0), m_numel);
  if (values.data() != m_view.data()) {
    Kokkos::deep_copy(m_view, values);
  }
}

float Tensor::at(Index i) const {
  TESSERA_CHECK(i >= 0 && i < m_numel, "tensor '{}' of shape {} has no element {}", m_label,
                to_string(m_shape), i);
  float value = 0.0F;
  Kokkos::deep_copy(value, Kokkos::subview(m_view, i));
  return value;
}

void Tensor::copy_from(const Tensor& other) const {
  TESSERA_CHECK(other.numel() == m_numel, "copy into tensor '{}' {} from '{}' {}: sizes differ",
                m_label, to_string(m_shape), other.label(), to_string(other.shape()));
  Kokkos::deep_copy(m_view, other.view());
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (t.shape() != expected) {
    throw Error(fmt::format("{}: expected shape {}, got {}", what, to_string(expected),
                            to_string(t.shape())));
  }
}

}  // namespace tessera
