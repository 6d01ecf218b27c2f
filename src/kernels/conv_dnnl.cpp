// Host convolutions with oneDNN 2.x (Debian 12: libdnnl-dev 2.6.3, OpenMP threading), compiled
// only when CMake finds it (cmake/TesseraDnnl.cmake); conv_dnnl_none.cpp replaces this file
// otherwise. See include/tessera/kernels/conv_dnnl.hpp for the interface.
//
// Per batch size, a Plan holds: the three primitive descriptors (backward ones hinted by the
// forward one, as oneDNN requires), the primitives (created on first use, so a first layer never
// JIT-compiles the backward-data kernel it does not run), one memory object per plain tensor whose
// data handle is pointed at the caller's storage on every call, for each argument whose chosen
// format differs from the plain layout a buffer in that format plus the reorder into (inputs) or
// out of (outputs) it, and one user-mode scratchpad shared by the plan's three convolution
// primitives (they run one after another; the reorders between plain and blocked layouts need
// none). The weight and bias gradients are always computed into buffers of the plan and then
// added to the caller's gradients by a reorder with a sum post-op (dst += src), which accumulates
// and converts the format in one pass. Plans are kept for every batch size seen (a training run
// sees two or three: the batch, an epoch's short last batch, the evaluation batch).
#include "tessera/kernels/conv_dnnl.hpp"

#include "tessera/core/check.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tessera::kernels {
namespace {
using dnnl::memory;
using Tag = memory::format_tag;
using Args = std::unordered_map<int, memory>;

/// The one CPU engine and stream of the process (oneDNN's CPU streams execute in order, in the
/// calling thread and its OpenMP team).
struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};
Runtime& runtime() {
  static Runtime r;
  return r;
}

/// A primitive and its arguments, bound once.
struct Step {
  dnnl::primitive primitive;
  Args args;
  void run() const { primitive.execute(runtime().stream, args); }
};

/// Layout string of a memory descriptor in oneDNN's verbose notation: dimensions as letters
/// outermost first, a blocked dimension upper-case, then the inner blocks ("aBcd16b" is nChw16c).
std::string format_of(const memory::desc& md) {
  const dnnl_memory_desc_t& d = md.data;
  if (d.format_kind != dnnl_blocked) {
    return "(not blocked)";
  }
  const dnnl_blocking_desc_t& b = d.format_desc.blocking;
  std::vector<int> order(static_cast<size_t>(d.ndims));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int l, int r) { return b.strides[l] > b.strides[r]; });
  std::string s;
  for (int i : order) {
    const bool blocked = std::any_of(b.inner_idxs, b.inner_idxs + b.inner_nblks,
                                     [&](dnnl_dim_t k) { return k == i; });
    s += static_cast<char>((blocked ? 'A' : 'a') + i);
  }
  for (int k = 0; k < b.inner_nblks; ++k) {
    s += fmt::format("{}{}", b.inner_blks[k], static_cast<char>('a' + b.inner_idxs[k]));
  }
  return s;
}

/// A plain tensor as a primitive sees it: `user` points at the caller's storage (set per call),
/// `inner` is the memory the primitive reads or writes — user itself when the primitive takes the
/// plain layout, else a buffer in the primitive's format with `reorder` between the two.
struct Bound {
  memory user;
  memory inner;
  std::optional<Step> reorder;

  /// An input: reorder user → inner when the formats differ.
  static Bound input(const memory& user, const memory::desc& want) {
    Bound b{user, user, std::nullopt};
    if (want != user.get_desc()) {
      b.inner = memory(want, runtime().engine);
      b.reorder =
          Step{dnnl::reorder(b.user, b.inner), {{DNNL_ARG_FROM, b.user}, {DNNL_ARG_TO, b.inner}}};
    }
    return b;
  }
  /// An output: reorder inner → user when the formats differ.
  static Bound output(const memory& user, const memory::desc& want) {
    Bound b{user, user, std::nullopt};
    if (want != user.get_desc()) {
      b.inner = memory(want, runtime().engine);
      b.reorder =
          Step{dnnl::reorder(b.inner, b.user), {{DNNL_ARG_FROM, b.inner}, {DNNL_ARG_TO, b.user}}};
    }
    return b;
  }
  /// An accumulated output: the primitive writes `inner` (always a buffer of its own), which a
  /// reorder with a sum post-op adds onto user.
  static Bound accumulated(const memory& user, const memory::desc& want) {
    Bound b{user, memory(want, runtime().engine), std::nullopt};
    dnnl::post_ops sum;
    sum.append_sum(1.0F);
    dnnl::primitive_attr attr;
    attr.set_post_ops(sum);
    const dnnl::reorder::primitive_desc pd(b.inner, b.user, attr);
    b.reorder = Step{dnnl::reorder(pd), {{DNNL_ARG_FROM, b.inner}, {DNNL_ARG_TO, b.user}}};
    return b;
  }
  void run_reorder() const {
    if (reorder) {
      reorder->run();
    }
  }
};

void set_handle(const memory& m, const Tensor& t) {
  m.set_data_handle(t.data());
}
void set_handle(const memory& m, const float* data) {
  m.set_data_handle(const_cast<float*>(data));  // oneDNN's handles are not const
}

/// The strides of a plain (N, channels, spatial...) tensor whose samples have extents `outer`
/// (the last `ndims` of them).
memory::dims plain_strides(Index channels, const std::array<Index, 3>& outer, int ndims) {
  const Index plane = outer[1] * outer[2];
  const Index sample = outer[0] * plane;
  if (ndims == 2) {
    return {channels * plane, plane, outer[2], 1};
  }
  return {channels * sample, sample, plane, outer[2], 1};
}

}  // namespace

bool dnnl_available() {
  return true;
}

void set_dnnl_threads(int threads) {
  omp_set_num_threads(std::max(1, threads));
}

namespace {
/// oneDNN's GEMMs, unless the environment sets TESSERA_HOST_GEMM=openblas (the tests run both).
bool gemm_enabled() {
  static const bool use = [] {
    const char* choice = std::getenv("TESSERA_HOST_GEMM");
    return choice == nullptr || std::string(choice) != "openblas";
  }();
  return use;
}
}  // namespace

bool dnnl_gemm(bool trans_a, bool trans_b, Index m, Index n, Index k, float alpha, const float* a,
               Index lda, const float* b, Index ldb, float beta, float* c, Index ldc) {
  if (!gemm_enabled()) {
    return false;
  }
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                                          a, lda, b, ldb, beta, c, ldc);
  TESSERA_CHECK(status == dnnl_success, "dnnl_sgemm failed with status {} (m {}, n {}, k {})",
                static_cast<int>(status), m, n, k);
  return true;
}

bool dnnl_gemm_bf16(bool trans_a, bool trans_b, Index m, Index n, Index k, float alpha,
                    const std::uint16_t* a, const std::uint16_t* b, float beta, float* c,
                    Index ldc) {
  if (!gemm_enabled()) {
    return false;
  }
  using dt = memory::data_type;
  const memory::desc src({m, k}, dt::bf16, trans_a ? memory::dims{1, m} : memory::dims{k, 1});
  const memory::desc weights({k, n}, dt::bf16, trans_b ? memory::dims{1, k} : memory::dims{n, 1});
  const memory::desc dst({m, n}, dt::f32, memory::dims{ldc, 1});
  // One matmul primitive per (transposes, m, n, k, ldc, alpha, beta): its JIT kernel is
  // specialised to them. An empty one records a shape oneDNN has no bf16 kernel for here.
  using Key = std::tuple<bool, bool, Index, Index, Index, Index, float, float>;
  static std::map<Key, std::optional<dnnl::matmul>> cache;
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  auto [at, fresh] = cache.try_emplace(Key{trans_a, trans_b, m, n, k, ldc, alpha, beta});
  if (fresh) {
    dnnl::primitive_attr attr;
    if (alpha != 1.0F) {
      attr.set_output_scales(0, {alpha});
    }
    if (beta != 0.0F) {
      dnnl::post_ops post;
      post.append_sum(beta);
      attr.set_post_ops(post);
    }
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), attr,
                                            runtime().engine);
      at->second.emplace(pd);
    } catch (const dnnl::error&) {
      // unimplemented for this CPU: kernels::gemm's fp32 fallback
    }
  }
  if (!at->second) {
    return false;
  }
  const dnnl::engine& engine = runtime().engine;
  // NOLINTBEGIN(cppcoreguidelines-pro-type-const-cast): oneDNN's handles are void*; inputs are read
  const memory src_mem(src, engine, const_cast<std::uint16_t*>(a));
  const memory weights_mem(weights, engine, const_cast<std::uint16_t*>(b));
  // NOLINTEND(cppcoreguidelines-pro-type-const-cast)
  const memory dst_mem(dst, engine, c);
  at->second->execute(
      runtime().stream,
      {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem}, {DNNL_ARG_DST, dst_mem}});
  runtime().stream.wait();
  return true;
}

struct DnnlConv::Impl {
  std::string what;
  ConvGeometry g;
  Index out = 0;
  int ndims = 2;
  bool bias = false;
  DnnlOptions options;

  /// Everything one batch size needs.
  struct Plan {
    dnnl::convolution_forward::primitive_desc fwd_pd;
    dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
    dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
    memory scratchpad;
    // Plain memories of the caller's tensors (handles set per call).
    memory x, w, b, y, dy, dx, dw, db;
    // Forward: x, w → y (+ b).
    std::optional<Step> fwd;
    Bound fwd_x, fwd_w, fwd_y;
    // Backward weights: x, dy → dw, db (accumulated).
    std::optional<Step> bwd_weights;
    Bound bw_x, bw_dy, bw_dw, bw_db;
    // Backward data: w, dy → dx. bd_dy shares bw_dy's buffer when both want one format.
    std::optional<Step> bwd_data;
    Bound bd_w, bd_dy, bd_dx;
    bool dy_shared = false;
  };
  std::map<Index, Plan> plans;

  memory::dims spatial(const std::array<Index, 3>& a) const {
    return memory::dims(a.begin() + (3 - ndims), a.end());
  }

  Plan& plan(Index n) {
    auto it = plans.find(n);
    if (it != plans.end()) {
      return it->second;
    }
    try {
      return plans.emplace(n, make_plan(n)).first->second;
    } catch (const dnnl::error& e) {
      TESSERA_THROW(
          "{}: oneDNN could not set up the convolution for batch {} (input {}, {} output "
          "channels): {} (status {})",
          what, n, describe_shapes(n), out, e.what(), static_cast<int>(e.status));
    }
  }

  std::string describe_shapes(Index n) const {
    Shape s{n, g.channels};
    for (Index e : spatial(g.input)) {
      s.push_back(e);
    }
    return to_string(s);
  }

  Plan make_plan(Index n) const {
    const dnnl::engine& eng = runtime().engine;
    const auto f32 = memory::data_type::f32;
    const Tag act = ndims == 2 ? Tag::nchw : Tag::ncdhw;
    const Tag wts = ndims == 2 ? Tag::oihw : Tag::oidhw;
    memory::dims src{n, g.channels};
    memory::dims dst{n, out};
    memory::dims weights{out, g.channels};
    for (Index e : spatial(g.input)) {
      src.push_back(e);
    }
    for (Index e : spatial(g.output)) {
      dst.push_back(e);
    }
    for (Index e : spatial(g.kernel)) {
      weights.push_back(e);
    }
    const memory::dims strides = spatial(g.stride);
    const memory::dims pad = spatial(g.pad);  // both sides, as the layer pads
    const memory::desc src_plain(src, f32, act), dst_plain(dst, f32, act);
    // The caller's x, dx and y, dy: the plain layouts, or boxes of larger tensors.
    const bool view = options.input_outer[2] > 0;
    const memory::desc src_user =
        view ? memory::desc(src, f32, plain_strides(g.channels, options.input_outer, ndims))
             : src_plain;
    const memory::desc dst_user =
        view ? memory::desc(dst, f32, plain_strides(out, options.output_outer, ndims)) : dst_plain;
    const memory::desc w_plain(weights, f32, wts), b_plain({out}, f32, Tag::a);
    const memory::desc src_any(src, f32, Tag::any), dst_any(dst, f32, Tag::any);
    const memory::desc w_any(weights, f32, Tag::any);
    const memory::desc b_md = bias ? b_plain : memory::desc();
    const auto direct = dnnl::algorithm::convolution_direct;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto forward_pd = [&](dnnl::algorithm alg, const memory::desc& s, const memory::desc& w,
                          const memory::desc& d) {
      return dnnl::convolution_forward::primitive_desc(
          dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, s, w, b_md, d,
                                          strides, pad, pad),
          attr, eng);
    };

    // Which primitives take oneDNN's formats (DnnlFormat): `any_pd` also serves as the hint of the
    // backward primitives that use them.
    const DnnlFormat format = options.format;
    const bool plain = format == DnnlFormat::plain;
    const dnnl::convolution_forward::primitive_desc any_pd =
        plain ? forward_pd(direct, src_plain, w_plain, dst_plain)
              : forward_pd(direct, src_any, w_any, dst_any);
    const bool small_input = format == DnnlFormat::automatic && any_pd.src_desc() == src_plain;
    const bool plain_fwd = plain || small_input;  // forward and backward data
    const bool blocked_fwd = !plain_fwd;
    const auto fwd_alg =
        blocked_fwd && options.auto_algorithm ? dnnl::algorithm::convolution_auto : direct;
    Plan p;
    if (plain_fwd) {
      p.fwd_pd = forward_pd(direct, src_plain, w_plain, dst_plain);
    } else {
      p.fwd_pd = fwd_alg == direct ? any_pd : forward_pd(fwd_alg, src_any, w_any, dst_any);
    }
    p.bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(direct, plain ? src_plain : src_any,
                                                 plain ? w_plain : w_any, b_md,
                                                 plain ? dst_plain : dst_any, strides, pad, pad),
        attr, eng, any_pd);
    p.bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(fwd_alg, plain_fwd ? src_plain : src_any,
                                              plain_fwd ? w_plain : w_any,
                                              plain_fwd ? dst_plain : dst_any, strides, pad, pad),
        attr, eng, p.fwd_pd);
    const size_t scratch = std::max({p.fwd_pd.scratchpad_desc().get_size(),
                                     p.bwd_weights_pd.scratchpad_desc().get_size(),
                                     p.bwd_data_pd.scratchpad_desc().get_size()});
    p.scratchpad = memory(
        memory::desc({static_cast<memory::dim>(scratch)}, memory::data_type::u8, Tag::a), eng);

    // The caller's tensors: no storage of their own, a handle set on every call.
    auto user = [&](const memory::desc& md) { return memory(md, eng, DNNL_MEMORY_NONE); };
    p.x = user(src_user);
    p.w = user(w_plain);
    p.y = user(dst_user);
    p.dy = user(dst_user);
    p.dx = user(src_user);
    p.dw = user(w_plain);
    if (bias) {
      p.b = user(b_plain);
      p.db = user(b_plain);
    }

    p.fwd_x = Bound::input(p.x, p.fwd_pd.src_desc());
    p.fwd_w = Bound::input(p.w, p.fwd_pd.weights_desc());
    p.fwd_y = Bound::output(p.y, p.fwd_pd.dst_desc());

    p.bw_x = Bound::input(p.x, p.bwd_weights_pd.src_desc());
    p.bw_dy = Bound::input(p.dy, p.bwd_weights_pd.diff_dst_desc());
    p.bw_dw = Bound::accumulated(p.dw, p.bwd_weights_pd.diff_weights_desc());
    if (bias) {
      p.bw_db = Bound::accumulated(p.db, p.bwd_weights_pd.diff_bias_desc());
    }

    p.bd_w = Bound::input(p.w, p.bwd_data_pd.weights_desc());
    p.dy_shared = p.bwd_data_pd.diff_dst_desc() == p.bw_dy.inner.get_desc();
    p.bd_dy = p.dy_shared ? Bound{p.dy, p.bw_dy.inner, std::nullopt}
                          : Bound::input(p.dy, p.bwd_data_pd.diff_dst_desc());
    p.bd_dx = options.accumulate_input_grad
                  ? Bound::accumulated(p.dx, p.bwd_data_pd.diff_src_desc())
                  : Bound::output(p.dx, p.bwd_data_pd.diff_src_desc());
    return p;
  }

  void check(const Tensor& t, const char* name, const Shape& expected) const {
    TESSERA_CHECK(t.defined() && t.numel() == numel(expected),
                  "{}: oneDNN convolution: {} has shape {}, expected {}", what, name,
                  to_string(t.shape()), to_string(expected));
  }
  // Checks the input and the weight of a pass; returns the batch size.
  Index check_input_and_weight(const Tensor& x, const Tensor& w) const {
    TESSERA_CHECK(x.defined() && x.rank() >= 1, "{}: oneDNN convolution: input is undefined", what);
    const Index n = x.dim(0);
    check(x, "input", input_shape(n));
    check(w, "weight", weight_shape());
    return n;
  }
  Shape input_shape(Index n) const { return batch(n, g.channels, g.input); }
  Shape output_shape(Index n) const { return batch(n, out, g.output); }
  Shape weight_shape() const { return batch(out, g.channels, g.kernel); }
  Shape batch(Index a, Index b, const std::array<Index, 3>& rest) const {
    Shape s{a, b};
    for (Index e : spatial(rest)) {
      s.push_back(e);
    }
    return s;
  }

  template <class F>
  void guarded(const char* op, Index n, F&& f) {
    try {
      f();
    } catch (const dnnl::error& e) {
      TESSERA_THROW("{}: oneDNN {} failed for input {}: {} (status {})", what, op,
                    to_string(input_shape(n)), e.what(), static_cast<int>(e.status));
    }
  }
};

DnnlConv::DnnlConv(std::string what, const ConvGeometry& g, Index out_channels, int ndims,
                   bool bias, const DnnlOptions& options)
    : m_impl(std::make_unique<Impl>()) {
  TESSERA_CHECK(ndims == 2 || ndims == 3,
                "{}: oneDNN convolution needs 2 or 3 spatial dimensions, got {}", what, ndims);
  TESSERA_CHECK(
      ndims == 3 || (g.input[0] == 1 && g.kernel[0] == 1 && g.stride[0] == 1 && g.pad[0] == 0),
      "{}: a 2-D convolution's geometry must have depth 1 (input, kernel, stride 1, pad 0)", what);
  TESSERA_CHECK(out_channels >= 1 && g.channels >= 1,
                "{}: oneDNN convolution needs >= 1 input and output channels, got {} and {}", what,
                g.channels, out_channels);
  m_impl->what = std::move(what);
  m_impl->g = g;
  m_impl->out = out_channels;
  m_impl->ndims = ndims;
  m_impl->bias = bias;
  m_impl->options = options;
}

DnnlConv::~DnnlConv() = default;
DnnlConv::DnnlConv(DnnlConv&&) noexcept = default;
DnnlConv& DnnlConv::operator=(DnnlConv&&) noexcept = default;

void DnnlConv::forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  Impl& m = *m_impl;
  const Index n = m.check_input_and_weight(x, w);
  m.check(y, "output", m.output_shape(n));
  forward_view(n, x.data(), w, bias, y.data());
}

void DnnlConv::forward_view(Index n, const float* x, const Tensor& w, const Tensor& bias,
                            float* y) {
  Impl& m = *m_impl;
  m.check(w, "weight", m.weight_shape());
  if (m.bias) {
    m.check(bias, "bias", {m.out});
  }
  Impl::Plan& p = m.plan(n);
  m.guarded("forward", n, [&] {
    if (!p.fwd) {
      p.fwd = Step{dnnl::convolution_forward(p.fwd_pd),
                   {{DNNL_ARG_SRC, p.fwd_x.inner},
                    {DNNL_ARG_WEIGHTS, p.fwd_w.inner},
                    {DNNL_ARG_DST, p.fwd_y.inner},
                    {DNNL_ARG_SCRATCHPAD, p.scratchpad}}};
      if (m.bias) {
        p.fwd->args.emplace(DNNL_ARG_BIAS, p.b);
      }
    }
    set_handle(p.x, x);
    set_handle(p.w, w);
    set_handle(p.y, y);
    if (m.bias) {
      set_handle(p.b, bias);
    }
    p.fwd_x.run_reorder();
    p.fwd_w.run_reorder();
    p.fwd->run();
    p.fwd_y.run_reorder();
    runtime().stream.wait();
  });
}

void DnnlConv::backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                        const Tensor& dw, const Tensor& db) {
  Impl& m = *m_impl;
  const Index n = m.check_input_and_weight(x, w);
  m.check(dy, "output grad", m.output_shape(n));
  if (dx.defined()) {
    m.check(dx, "input grad", m.input_shape(n));
  }
  backward_view(n, x.data(), w, dy.data(), dx.defined() ? dx.data() : nullptr, dw, db);
}

void DnnlConv::backward_view(Index n, const float* x, const Tensor& w, const float* dy, float* dx,
                             const Tensor& dw, const Tensor& db) {
  Impl& m = *m_impl;
  m.check(w, "weight", m.weight_shape());
  m.check(dw, "weight grad", m.weight_shape());
  TESSERA_CHECK(db.defined() == m.bias,
                "{}: oneDNN convolution: bias grad is {} but the "
                "convolution has {} bias",
                m.what, db.defined() ? "given" : "missing", m.bias ? "a" : "no");
  if (m.bias) {
    m.check(db, "bias grad", {m.out});
  }
  Impl::Plan& p = m.plan(n);
  m.guarded("backward", n, [&] {
    if (!p.bwd_weights) {
      p.bwd_weights = Step{dnnl::convolution_backward_weights(p.bwd_weights_pd),
                           {{DNNL_ARG_SRC, p.bw_x.inner},
                            {DNNL_ARG_DIFF_DST, p.bw_dy.inner},
                            {DNNL_ARG_DIFF_WEIGHTS, p.bw_dw.inner},
                            {DNNL_ARG_SCRATCHPAD, p.scratchpad}}};
      if (m.bias) {
        p.bwd_weights->args.emplace(DNNL_ARG_DIFF_BIAS, p.bw_db.inner);
      }
    }
    if (dx != nullptr && !p.bwd_data) {
      p.bwd_data = Step{dnnl::convolution_backward_data(p.bwd_data_pd),
                        {{DNNL_ARG_DIFF_DST, p.bd_dy.inner},
                         {DNNL_ARG_WEIGHTS, p.bd_w.inner},
                         {DNNL_ARG_DIFF_SRC, p.bd_dx.inner},
                         {DNNL_ARG_SCRATCHPAD, p.scratchpad}}};
    }
    set_handle(p.x, x);
    set_handle(p.w, w);
    set_handle(p.dy, dy);
    set_handle(p.dw, dw);
    if (m.bias) {
      set_handle(p.db, db);
    }
    p.bw_dy.run_reorder();
    if (dx != nullptr) {
      // Backward data first: dy (just reordered) is still in cache.
      set_handle(p.dx, dx);
      p.bd_dy.run_reorder();
      p.bd_w.run_reorder();
      p.bwd_data->run();
      p.bd_dx.run_reorder();
    }
    p.bw_x.run_reorder();
    p.bwd_weights->run();
    p.bw_dw.run_reorder();
    if (m.bias) {
      p.bw_db.run_reorder();
    }
    runtime().stream.wait();
  });
}

bool DnnlConv::plain_activations(Index n) {
  Impl& m = *m_impl;
  const Impl::Plan& p = m.plan(n);
  const memory::desc& src = p.fwd_pd.src_desc();
  return src ==
         memory::desc(src.dims(), memory::data_type::f32, m.ndims == 2 ? Tag::nchw : Tag::ncdhw);
}

std::string DnnlConv::describe(Index n) {
  Impl& m = *m_impl;
  const Impl::Plan& p = m.plan(n);
  auto line = [](const char* name, const dnnl::primitive_desc_base& pd, const memory::desc& a,
                 const memory::desc& b, const memory::desc& c) {
    return fmt::format("{}: {} src {} weights {} dst {}\n", name, pd.impl_info_str(), format_of(a),
                       format_of(b), format_of(c));
  };
  return line("forward", p.fwd_pd, p.fwd_pd.src_desc(), p.fwd_pd.weights_desc(),
              p.fwd_pd.dst_desc()) +
         line("backward_data", p.bwd_data_pd, p.bwd_data_pd.diff_src_desc(),
              p.bwd_data_pd.weights_desc(), p.bwd_data_pd.diff_dst_desc()) +
         line("backward_weights", p.bwd_weights_pd, p.bwd_weights_pd.src_desc(),
              p.bwd_weights_pd.diff_weights_desc(), p.bwd_weights_pd.diff_dst_desc());
}

}  // namespace tessera::kernels
