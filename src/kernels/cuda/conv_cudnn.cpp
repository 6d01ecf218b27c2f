// Convolution with cuDNN's legacy-compatible API (cudnn_cnn.h; deprecated in cuDNN 9 in favour of
// the graph API but complete and supported). The descriptors describe packed NC(D)HW float
// tensors; the algorithms come from cudnnGet*_v7 (heuristics) or cudnnFind* (timed), filtered by
// ConvOptions; the math type that goes with each algorithm is set on the convolution descriptor
// before each call, as cuDNN requires (an algorithm number alone does not say whether tensor
// cores run).
#include "tessera/kernels/cuda/conv.hpp"

#include "tessera/kernels/cuda/elementwise.hpp"

#include <algorithm>
#include <climits>
#include <initializer_list>
#include <limits>
#include <utility>

namespace tessera::kernels::cuda {
namespace {

std::string to_string(const std::vector<Index>& values) {
  std::string text = "(";
  for (std::size_t i = 0; i < values.size(); ++i) {
    text += (i > 0 ? ", " : "") + std::to_string(values[i]);
  }
  return text + (values.size() == 1 ? ",)" : ")");
}

std::vector<int> to_int(const std::vector<Index>& values) {
  return std::vector<int>(values.begin(), values.end());  // range checked by conv_output_shape
}

// The product of values[first..] (non-negative), saturating at the largest Index instead of
// overflowing, so that size checks on absurd geometries stay defined.
Index product(const std::vector<Index>& values, std::size_t first = 0) {
  Index p = 1;
  for (std::size_t i = first; i < values.size(); ++i) {
    if (__builtin_mul_overflow(p, values[i], &p)) {
      return std::numeric_limits<Index>::max();
    }
  }
  return p;
}

// --- RAII cuDNN descriptors ----------------------------------------------------------------------

class TensorDescriptor {
 public:
  TensorDescriptor() { TESSERA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&m_desc)); }
  ~TensorDescriptor() { static_cast<void>(cudnnDestroyTensorDescriptor(m_desc)); }
  TensorDescriptor(const TensorDescriptor&) = delete;
  TensorDescriptor& operator=(const TensorDescriptor&) = delete;

  /// A packed float tensor of shape `dims` (row-major strides).
  void set(const std::vector<Index>& dims) {
    const std::vector<int> extent = to_int(dims);
    std::vector<int> stride(extent.size(), 1);
    for (std::size_t i = extent.size() - 1; i > 0; --i) {
      stride[i - 1] = stride[i] * extent[i];
    }
    TESSERA_CUDNN_CHECK(cudnnSetTensorNdDescriptor(
        m_desc, CUDNN_DATA_FLOAT, static_cast<int>(extent.size()), extent.data(), stride.data()));
  }
  cudnnTensorDescriptor_t get() const { return m_desc; }

 private:
  cudnnTensorDescriptor_t m_desc = nullptr;
};

class FilterDescriptor {
 public:
  FilterDescriptor() { TESSERA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&m_desc)); }
  ~FilterDescriptor() { static_cast<void>(cudnnDestroyFilterDescriptor(m_desc)); }
  FilterDescriptor(const FilterDescriptor&) = delete;
  FilterDescriptor& operator=(const FilterDescriptor&) = delete;

  /// A packed (out, in, k...) float filter.
  void set(const std::vector<Index>& dims) {
    const std::vector<int> extent = to_int(dims);
    TESSERA_CUDNN_CHECK(cudnnSetFilterNdDescriptor(m_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                                   static_cast<int>(extent.size()), extent.data()));
  }
  cudnnFilterDescriptor_t get() const { return m_desc; }

 private:
  cudnnFilterDescriptor_t m_desc = nullptr;
};

class ConvolutionDescriptor {
 public:
  ConvolutionDescriptor() { TESSERA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&m_desc)); }
  ~ConvolutionDescriptor() { static_cast<void>(cudnnDestroyConvolutionDescriptor(m_desc)); }
  ConvolutionDescriptor(const ConvolutionDescriptor&) = delete;
  ConvolutionDescriptor& operator=(const ConvolutionDescriptor&) = delete;

  /// Cross-correlation (what deep-learning frameworks call convolution), no dilation, FP32
  /// accumulation.
  void set(const std::vector<Index>& padding, const std::vector<Index>& stride) {
    const std::vector<int> pad = to_int(padding);
    const std::vector<int> step = to_int(stride);
    const std::vector<int> dilation(pad.size(), 1);
    TESSERA_CUDNN_CHECK(cudnnSetConvolutionNdDescriptor(m_desc, static_cast<int>(pad.size()),
                                                        pad.data(), step.data(), dilation.data(),
                                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  }
  void set_math(cudnnMathType_t math) {
    TESSERA_CUDNN_CHECK(cudnnSetConvolutionMathType(m_desc, math));
  }
  cudnnConvolutionDescriptor_t get() const { return m_desc; }

 private:
  cudnnConvolutionDescriptor_t m_desc = nullptr;
};

// The first of cuDNN's ranked candidates that ran (or would run) and fits the options.
template <class Perf>
const Perf* first_acceptable(const std::vector<Perf>& ranked, int returned,
                             const ConvOptions& options) {
  for (int i = 0; i < returned; ++i) {
    const Perf& p = ranked[static_cast<std::size_t>(i)];
    if (p.status != CUDNN_STATUS_SUCCESS || p.memory > options.workspace_limit) {
      continue;
    }
    if (options.deterministic && p.determinism != CUDNN_DETERMINISTIC) {
      continue;
    }
    if (!options.allow_tf32 && p.mathType != CUDNN_FMA_MATH) {
      continue;
    }
    return &p;
  }
  return nullptr;
}

}  // namespace

std::vector<Index> conv_output_shape(const std::string& kind, const std::string& name,
                                     int spatial_dims, const ConvGeometry& geometry) {
  const std::string where = kind + " '" + name + "': ";
  const auto dims = static_cast<std::size_t>(spatial_dims);
  if (spatial_dims != 2 && spatial_dims != 3) {
    throw Error(where + std::to_string(spatial_dims) +
                " spatial dimensions; cuDNN convolutions here take 2 (H, W) or 3 (D, H, W)");
  }
  const char* layout = spatial_dims == 2 ? "(H, W)" : "(D, H, W)";
  const auto check_size = [&](const char* what, const std::vector<Index>& v, bool may_be_empty) {
    if (v.size() != dims && !(may_be_empty && v.empty())) {
      throw Error(where + what + " " + to_string(v) + " has " + std::to_string(v.size()) +
                  " extents, expected " + std::to_string(dims) + " " + layout);
    }
  };
  check_size("input", geometry.input, false);
  check_size("kernel", geometry.kernel, false);
  check_size("stride", geometry.stride, true);
  check_size("padding", geometry.padding, true);
  const std::vector<Index> stride =
      geometry.stride.empty() ? std::vector<Index>(dims, 1) : geometry.stride;
  const std::vector<Index> padding =
      geometry.padding.empty() ? std::vector<Index>(dims, 0) : geometry.padding;

  if (geometry.batch < 1 || geometry.in_channels < 1 || geometry.out_channels < 1) {
    throw Error(where + "batch " + std::to_string(geometry.batch) + ", in_channels " +
                std::to_string(geometry.in_channels) + " and out_channels " +
                std::to_string(geometry.out_channels) + " must all be >= 1");
  }
  const auto all_at_least = [](const std::vector<Index>& v, Index low) {
    return std::all_of(v.begin(), v.end(), [low](Index e) { return e >= low; });
  };
  if (!all_at_least(geometry.input, 1) || !all_at_least(geometry.kernel, 1) ||
      !all_at_least(stride, 1) || !all_at_least(padding, 0)) {
    throw Error(where + "input " + to_string(geometry.input) + " and kernel " +
                to_string(geometry.kernel) + " need extents >= 1, stride " + to_string(stride) +
                " >= 1, padding " + to_string(padding) + " >= 0");
  }
  // cuDNN's descriptors take int extents and strides: the largest stride of a packed tensor is
  // the size of one sample (or one filter bank).
  const Index limit = INT_MAX;
  const auto all_within_int = [limit](const std::vector<Index>& v) {
    return std::all_of(v.begin(), v.end(), [limit](Index e) { return e <= limit; });
  };
  if (!all_within_int(geometry.input) || !all_within_int(geometry.kernel) ||
      !all_within_int(stride) || !all_within_int(padding)) {
    throw Error(where + "input " + to_string(geometry.input) + ", kernel " +
                to_string(geometry.kernel) + ", stride " + to_string(stride) + " or padding " +
                to_string(padding) + " exceeds cuDNN's int extents");
  }
  std::vector<Index> output{geometry.batch, geometry.out_channels};
  for (std::size_t d = 0; d < dims; ++d) {
    const Index padded = geometry.input[d] + 2 * padding[d];
    if (padded < geometry.kernel[d]) {
      throw Error(where + "kernel " + to_string(geometry.kernel) + " is larger than the input " +
                  to_string(geometry.input) + " with padding " + to_string(padding));
    }
    output.push_back((padded - geometry.kernel[d]) / stride[d] + 1);
  }
  const Index sample_in = product({geometry.in_channels, product(geometry.input)});
  const Index sample_out = product(output, 1);
  const Index filter =
      product({geometry.out_channels, geometry.in_channels, product(geometry.kernel)});
  if (geometry.batch > limit || sample_in > limit || sample_out > limit || filter > limit) {
    throw Error(where + "input (" + std::to_string(geometry.batch) + ", " +
                std::to_string(geometry.in_channels) + ", " + to_string(geometry.input).substr(1) +
                ", output " + to_string(output) + " or weight (" +
                std::to_string(geometry.out_channels) + ", " +
                std::to_string(geometry.in_channels) + ", " + to_string(geometry.kernel).substr(1) +
                " exceeds cuDNN's int extents");
  }
  return output;
}

// --- Convolution -------------------------------------------------------------------------------

struct Convolution::Plan {
  CudnnHandle* handle;
  std::string kind;
  std::string name;
  int spatial_dims;
  ConvGeometry geometry;  // stride and padding filled in
  ConvOptions options;
  std::vector<Index> output;  // (N, C_out, out spatial...)

  TensorDescriptor x_desc;  // (N, C_in, spatial...)
  TensorDescriptor y_desc;  // (N, C_out, out spatial...)
  FilterDescriptor w_desc;  // (C_out, C_in, k...)
  ConvolutionDescriptor conv_desc;

  cudnnConvolutionFwdAlgo_t fwd_algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0;
  cudnnMathType_t fwd_math = CUDNN_FMA_MATH;
  cudnnMathType_t bwd_data_math = CUDNN_FMA_MATH;
  cudnnMathType_t bwd_filter_math = CUDNN_FMA_MATH;
  DeviceBuffer<unsigned char> workspace;

  Plan(CudnnHandle& h, std::string kind_, std::string name_, int dims, const ConvGeometry& g,
       const ConvOptions& o)
      : handle(&h),
        kind(std::move(kind_)),
        name(std::move(name_)),
        spatial_dims(dims),
        geometry(g),
        options(o),
        output(conv_output_shape(kind, name, dims, g)) {
    const auto n = static_cast<std::size_t>(dims);
    if (geometry.stride.empty()) {
      geometry.stride.assign(n, 1);
    }
    if (geometry.padding.empty()) {
      geometry.padding.assign(n, 0);
    }
    w_desc.set(weight_shape());
    conv_desc.set(geometry.padding, geometry.stride);
    configure();
  }

  std::string where() const { return kind + " '" + name + "'"; }

  std::vector<Index> input_shape() const {
    std::vector<Index> shape{geometry.batch, geometry.in_channels};
    shape.insert(shape.end(), geometry.input.begin(), geometry.input.end());
    return shape;
  }
  std::vector<Index> weight_shape() const {
    std::vector<Index> shape{geometry.out_channels, geometry.in_channels};
    shape.insert(shape.end(), geometry.kernel.begin(), geometry.kernel.end());
    return shape;
  }

  // Input/output descriptors for the current batch, algorithms, workspace.
  void configure() {
    x_desc.set(input_shape());
    y_desc.set(output);
    std::vector<int> cudnn_output(output.size());
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionNdForwardOutputDim(
        conv_desc.get(), x_desc.get(), w_desc.get(), static_cast<int>(cudnn_output.size()),
        cudnn_output.data()));
    if (std::vector<Index>(cudnn_output.begin(), cudnn_output.end()) != output) {
      throw Error(where() + ": cuDNN computes the output shape " +
                  to_string(std::vector<Index>(cudnn_output.begin(), cudnn_output.end())) +
                  ", Tessera " + to_string(output));
    }
    choose_algorithms();
  }

  std::string options_text() const {
    return std::string("allow_tf32 = ") + (options.allow_tf32 ? "true" : "false") +
           ", deterministic = " + (options.deterministic ? "true" : "false") +
           ", workspace_limit = " + std::to_string(options.workspace_limit) + " bytes";
  }

  [[noreturn]] void no_algorithm(const char* pass, int returned) const {
    throw Error(where() + ": none of the " + std::to_string(returned) + " cuDNN " + pass +
                " algorithms for input " + to_string(input_shape()) + ", weight " +
                to_string(weight_shape()) + " fits the options (" + options_text() + ")");
  }

  void choose_algorithms() {
    cudnnHandle_t h = handle->get();
    // The math type asked for limits what cuDNN proposes; each proposal states its own.
    conv_desc.set_math(options.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
    std::size_t needed = 0;
    std::size_t bytes = 0;

    int count = 0;
    int returned = 0;
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> fwd(static_cast<std::size_t>(count));
    if (options.benchmark) {
      TESSERA_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, x_desc.get(), w_desc.get(),
                                                               conv_desc.get(), y_desc.get(), count,
                                                               &returned, fwd.data()));
    } else {
      TESSERA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, x_desc.get(), w_desc.get(),
                                                                 conv_desc.get(), y_desc.get(),
                                                                 count, &returned, fwd.data()));
    }

    count = 0;
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> bwd_data(static_cast<std::size_t>(count));
    int returned_data = 0;
    if (options.benchmark) {
      TESSERA_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(
          h, w_desc.get(), y_desc.get(), conv_desc.get(), x_desc.get(), count, &returned_data,
          bwd_data.data()));
    } else {
      TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          h, w_desc.get(), y_desc.get(), conv_desc.get(), x_desc.get(), count, &returned_data,
          bwd_data.data()));
    }

    count = 0;
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> bwd_filter(static_cast<std::size_t>(count));
    int returned_filter = 0;
    if (options.benchmark) {
      TESSERA_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(
          h, x_desc.get(), y_desc.get(), conv_desc.get(), w_desc.get(), count, &returned_filter,
          bwd_filter.data()));
    } else {
      TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          h, x_desc.get(), y_desc.get(), conv_desc.get(), w_desc.get(), count, &returned_filter,
          bwd_filter.data()));
    }

    const auto* f = first_acceptable(fwd, returned, options);
    if (f == nullptr) {
      no_algorithm("forward", returned);
    }
    const auto* d = first_acceptable(bwd_data, returned_data, options);
    if (d == nullptr) {
      no_algorithm("backward-data", returned_data);
    }
    const auto* b = first_acceptable(bwd_filter, returned_filter, options);
    if (b == nullptr) {
      no_algorithm("backward-filter", returned_filter);
    }
    fwd_algo = f->algo;
    fwd_math = f->mathType;
    bwd_data_algo = d->algo;
    bwd_data_math = d->mathType;
    bwd_filter_algo = b->algo;
    bwd_filter_math = b->mathType;

    // Workspace sizes for the algorithm and math type that will run (the perf entries' memory
    // field is an estimate for Get*_v7).
    conv_desc.set_math(fwd_math);
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(
        h, x_desc.get(), w_desc.get(), conv_desc.get(), y_desc.get(), fwd_algo, &bytes));
    needed = std::max(needed, bytes);
    conv_desc.set_math(bwd_data_math);
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
        h, w_desc.get(), y_desc.get(), conv_desc.get(), x_desc.get(), bwd_data_algo, &bytes));
    needed = std::max(needed, bytes);
    conv_desc.set_math(bwd_filter_math);
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
        h, x_desc.get(), y_desc.get(), conv_desc.get(), w_desc.get(), bwd_filter_algo, &bytes));
    needed = std::max(needed, bytes);
    if (needed > workspace.bytes()) {
      workspace = DeviceBuffer<unsigned char>();  // free first: the peak is the new size only
      workspace = DeviceBuffer<unsigned char>(needed);
    }
  }

  void check_pointers(const char* call, std::initializer_list<const void*> pointers) const {
    for (const void* p : pointers) {
      if (p == nullptr) {
        throw Error(where() + ": " + call + " got a null device pointer");
      }
    }
  }
};

Convolution::Convolution(CudnnHandle& handle, std::string kind, std::string name, int spatial_dims,
                         const ConvGeometry& geometry, const ConvOptions& options)
    : m_plan(std::make_unique<Plan>(handle, std::move(kind), std::move(name), spatial_dims,
                                    geometry, options)) {}

Convolution::~Convolution() = default;
Convolution::Convolution(Convolution&&) noexcept = default;
Convolution& Convolution::operator=(Convolution&&) noexcept = default;

const std::string& Convolution::kind() const {
  return m_plan->kind;
}
const std::string& Convolution::name() const {
  return m_plan->name;
}
std::vector<Index> Convolution::input_shape() const {
  return m_plan->input_shape();
}
std::vector<Index> Convolution::weight_shape() const {
  return m_plan->weight_shape();
}
std::vector<Index> Convolution::output_shape() const {
  return m_plan->output;
}
std::vector<Index> Convolution::bias_shape() const {
  return {m_plan->geometry.out_channels};
}
std::size_t Convolution::workspace_bytes() const {
  return m_plan->workspace.bytes();
}
int Convolution::forward_algorithm() const {
  return static_cast<int>(m_plan->fwd_algo);
}
int Convolution::backward_data_algorithm() const {
  return static_cast<int>(m_plan->bwd_data_algo);
}
int Convolution::backward_filter_algorithm() const {
  return static_cast<int>(m_plan->bwd_filter_algo);
}

void Convolution::set_batch(Index batch) {
  Plan& p = *m_plan;
  if (batch == p.geometry.batch) {
    return;
  }
  ConvGeometry geometry = p.geometry;
  geometry.batch = batch;
  std::vector<Index> output = conv_output_shape(p.kind, p.name, p.spatial_dims, geometry);
  p.geometry = std::move(geometry);
  p.output = std::move(output);
  p.configure();
}

void Convolution::forward(const float* x, const float* w, const float* bias, float* y) {
  Plan& p = *m_plan;
  p.check_pointers("forward", {x, w, y});
  const float one = 1.0F;
  const float zero = 0.0F;
  p.conv_desc.set_math(p.fwd_math);
  TESSERA_CUDNN_CHECK(cudnnConvolutionForward(
      p.handle->get(), &one, p.x_desc.get(), x, p.w_desc.get(), w, p.conv_desc.get(), p.fwd_algo,
      p.workspace.data(), p.workspace.bytes(), &zero, p.y_desc.get(), y));
  if (bias != nullptr) {
    add_channel_bias(y, bias, p.output[0], p.output[1], product(p.output, 2), p.handle->stream());
  }
}

void Convolution::backward_data(const float* w, const float* dy, float* dx) {
  Plan& p = *m_plan;
  p.check_pointers("backward_data", {w, dy, dx});
  const float one = 1.0F;
  const float zero = 0.0F;
  p.conv_desc.set_math(p.bwd_data_math);
  TESSERA_CUDNN_CHECK(cudnnConvolutionBackwardData(
      p.handle->get(), &one, p.w_desc.get(), w, p.y_desc.get(), dy, p.conv_desc.get(),
      p.bwd_data_algo, p.workspace.data(), p.workspace.bytes(), &zero, p.x_desc.get(), dx));
}

void Convolution::backward_filter(const float* x, const float* dy, float* dw) {
  Plan& p = *m_plan;
  p.check_pointers("backward_filter", {x, dy, dw});
  const float one = 1.0F;
  p.conv_desc.set_math(p.bwd_filter_math);
  TESSERA_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
      p.handle->get(), &one, p.x_desc.get(), x, p.y_desc.get(), dy, p.conv_desc.get(),
      p.bwd_filter_algo, p.workspace.data(), p.workspace.bytes(), &one, p.w_desc.get(), dw));
}

void Convolution::backward_bias(const float* dy, float* db) {
  Plan& p = *m_plan;
  p.check_pointers("backward_bias", {dy, db});
  accumulate_channel_bias_grad(dy, db, p.output[0], p.output[1], product(p.output, 2),
                               p.handle->stream());
}

// --- Conv2d, Conv3d ----------------------------------------------------------------------------

Conv2d::Conv2d(CudnnHandle& handle, std::string name, const ConvGeometry& geometry,
               const ConvOptions& options)
    : Convolution(handle, "conv2d", std::move(name), 2, geometry, options) {}

Conv3d::Conv3d(CudnnHandle& handle, std::string name, const ConvGeometry& geometry,
               const ConvOptions& options)
    : Convolution(handle, "conv3d", std::move(name), 3, geometry, options) {}

}  // namespace tessera::kernels::cuda
