#include "tessera/nn/attention.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/kernels/gemm.hpp"

namespace tessera::nn {
using kernels::Trans;

namespace {
constexpr float kWeightStd = 0.02F;  // GPT-2's initialisation of every projection
}  // namespace

CausalSelfAttention::CausalSelfAttention(std::string name, const Shape& input,
                                         const AttentionOptions& options, BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_heads(options.heads),
      m_bias(options.bias),
      m_split(options.split),
      m_region(this->context(), this->name()) {
  if (input.size() != 2 || input[0] < 1 || input[1] < 1) {
    TESSERA_THROW("attention '{}': input shape {} must be (tokens, features) with extents >= 1",
                  this->name(), to_string(input));
  }
  m_tokens = input[0];
  m_features = input[1];
  if (m_heads < 1) {
    TESSERA_THROW("attention '{}': option heads = {} must be >= 1", this->name(), m_heads);
  }
  if (m_features % m_heads != 0) {
    TESSERA_THROW("attention '{}': heads = {} do not divide the input's {} features", this->name(),
                  m_heads, m_features);
  }
  const int tensor = m_split ? m_region.size() : 1;
  if (m_heads % tensor != 0) {
    TESSERA_THROW("attention '{}': heads = {} do not split over {} tensor ranks", this->name(),
                  m_heads, tensor);
  }
  m_local_heads = m_heads / tensor;
  m_local_features = m_local_heads * head_dim();
  const Index c = m_features;
  const InitSpec weight_init = InitSpec::normal(0.0F, kWeightStd);
  const InitSpec bias_init = InitSpec::constant(0.0F);
  Layout wqkv = Layout::replicated({3 * c, c});  // (3C, C)
  Layout bqkv = Layout::replicated({3 * c});     // (3C,)
  Layout wproj = Layout::replicated({c, c});     // (C, C): (out, in)
  if (m_split) {
    // Each rank its block of the q rows, of the k rows and of the v rows: its heads.
    wqkv.and_split(0, GridAxis::tensor, 3);
    bqkv.and_split(0, GridAxis::tensor, 3);
    wproj.and_split(1, GridAxis::tensor);  // the input columns of its heads
  }
  add_parameter("qkv.weight", wqkv, weight_init);
  if (m_bias) {
    add_parameter("qkv.bias", bqkv, bias_init, /*decay=*/false);
  }
  add_parameter("proj.weight", wproj, weight_init);
  if (m_bias) {
    add_parameter("proj.bias", Layout::replicated({c}), bias_init, /*decay=*/false);
  }
  // Layout's blocks of an even split are exactly this rank's heads: local rows [0, C_r) are q,
  // [C_r, 2·C_r) k, [2·C_r, 3·C_r) v, as forward slices them.
  TESSERA_CHECK(qkv_weight().value.shape() == (Shape{3 * m_local_features, c}) &&
                    proj_weight().value.shape() == (Shape{c, m_local_features}),
                "attention '{}': local blocks {} and {} do not hold {} heads of {} features",
                this->name(), to_string(qkv_weight().value.shape()),
                to_string(proj_weight().value.shape()), m_local_heads, head_dim());
  m_local_x = input;
  m_local_y = input;
}

Shape CausalSelfAttention::output_shape(const Shape& input) const {
  if (input != Shape{m_tokens, m_features}) {
    TESSERA_THROW("attention '{}': input sample shape {} does not fit, expected {}", name(),
                  to_string(input), to_string(Shape{m_tokens, m_features}));
  }
  return input;
}

Layout CausalSelfAttention::place_input(const Layout& input) {
  const Shape sample = output_shape(input.global_shape());
  m_sliced = m_split && m_region.is_sliced(input);
  if (!m_sliced) {
    require_whole(input);
  }
  const Layout out = m_split ? m_region.outside(sample) : Layout::replicated(sample);
  m_local_x = input.local_shape(context().place());
  m_local_y = out.local_shape(context().place());
  return out;
}

kernels::AttentionShape CausalSelfAttention::attention_shape(Index batch) const {
  return {batch, m_tokens, m_local_heads, head_dim()};
}

ForwardResult CausalSelfAttention::forward(const Tensor& x_in, const ForwardOptions& /*options*/) {
  check_batch(x_in, m_local_x, "input");
  // Split, every rank takes the whole input: as it is (copy_to), or joined from the token slices.
  const Tensor x = m_split ? m_region.enter_forward(x_in, m_sliced) : x_in;
  const Index n = x.dim(0);
  const Index rows = n * m_tokens;  // GEMM rows: every token of every sample
  const Index c = m_features;
  const Index c_r = m_local_features;
  // qkv (rows, 3·C_r) = bqkv + x (rows, C) · Wqkvᵀ (C, 3·C_r).
  const Tensor qkv = m_qkv.get(name() + ".qkv", {n, m_tokens, 3 * c_r});
  if (m_bias) {
    kernels::broadcast_bias(qkv.reshaped({rows, 3 * c_r}), qkv_bias().value);
  }
  kernels::gemm(Trans::no, Trans::yes, rows, 3 * c_r, c, 1.0F, x.data(), c,
                qkv_weight().value.data(), c, m_bias ? 1.0F : 0.0F, qkv.data(), 3 * c_r);
  // This rank's heads side by side, and every query row's log-sum-exp.
  const Tensor heads = m_heads_out.get(name() + ".heads", {n, m_tokens, c_r});
  const Tensor lse = m_lse.get(name() + ".lse", {n, m_local_heads, m_tokens});
  kernels::causal_attention_forward(
      qkv, attention_shape(n), heads, lse,
      m_scratch.get(name() + ".scores", kernels::attention_scratch_shape(m_tokens)));
  // out (rows, C) = bproj + heads (rows, C_r) · Wprojᵀ (C_r, C): partial over tensor when split,
  // the bias added once (tensor rank 0) before the sum.
  const Tensor out = m_output.get(name() + ".output", {n, m_tokens, c});
  const bool add_bias = m_bias && (!m_split || context().place().coord_of(GridAxis::tensor) == 0);
  if (add_bias) {
    kernels::broadcast_bias(out.reshaped({rows, c}), proj_bias().value);
  }
  kernels::gemm(Trans::no, Trans::yes, rows, c, c_r, 1.0F, heads.data(), c_r,
                proj_weight().value.data(), c_r, add_bias ? 1.0F : 0.0F, out.data(), c);
  Context ctx;
  ctx.saved = {x, qkv, heads, lse};
  ctx.input_shape = x_in.shape();
  if (m_split) {
    return {m_region.leave_forward(out), std::move(ctx)};  // partial over tensor → the sum (slice)
  }
  return {out, std::move(ctx)};
}

Tensor CausalSelfAttention::backward(const Tensor& dy_in, Context&& ctx) {
  check_batch(dy_in, m_local_y, "output grad");
  check_context(dy_in, ctx, m_local_x, 4);
  // Split, dy of the whole tokens (joined from the slices with sequence parallelism).
  const Tensor dy = m_split ? m_region.leave_backward(dy_in) : dy_in;
  const Tensor& x = ctx.saved[0];      // (N, T, C)
  const Tensor& qkv = ctx.saved[1];    // (N, T, 3·C_r)
  const Tensor& heads = ctx.saved[2];  // (N, T, C_r)
  const Tensor& lse = ctx.saved[3];    // (N, H_r, T)
  const Index n = dy.dim(0);
  const Index rows = n * m_tokens;
  const Index c = m_features;
  const Index c_r = m_local_features;
  // dWproj (C, C_r) += dyᵀ (C, rows) · heads (rows, C_r); dbproj += Σ_rows dy.
  kernels::gemm(Trans::yes, Trans::no, c, c_r, rows, 1.0F, dy.data(), c, heads.data(), c_r, 1.0F,
                proj_weight().grad.data(), c_r);
  if (m_bias) {
    kernels::bias_grad(dy.reshaped({rows, c}), proj_bias().grad);
  }
  // dheads (rows, C_r) = dy (rows, C) · Wproj (C, C_r).
  const Tensor dheads = m_heads_grad.get(name() + ".heads_grad", heads.shape());
  kernels::gemm(Trans::no, Trans::no, rows, c_r, c, 1.0F, dy.data(), c, proj_weight().value.data(),
                c_r, 0.0F, dheads.data(), c_r);
  const Tensor dqkv = m_qkv_grad.get(name() + ".qkv_grad", qkv.shape());
  kernels::causal_attention_backward(
      qkv, heads, lse, dheads, attention_shape(n), dqkv,
      m_scratch.get(name() + ".scores", kernels::attention_scratch_shape(m_tokens)));
  // dWqkv (3·C_r, C) += dqkvᵀ (3·C_r, rows) · x (rows, C); dbqkv += Σ_rows dqkv.
  kernels::gemm(Trans::yes, Trans::no, 3 * c_r, c, rows, 1.0F, dqkv.data(), 3 * c_r, x.data(), c,
                1.0F, qkv_weight().grad.data(), c);
  if (m_bias) {
    kernels::bias_grad(dqkv.reshaped({rows, 3 * c_r}), qkv_bias().grad);
  }
  if (!needs_input_grad()) {
    return Tensor();  // a first layer on data: nobody needs dL/dx
  }
  // dx (rows, C) = dqkv (rows, 3·C_r) · Wqkv (3·C_r, C).
  const Tensor dx = m_input_grad.get(name() + ".input_grad", x.shape());
  kernels::gemm(Trans::no, Trans::no, rows, c, 3 * c_r, 1.0F, dqkv.data(), 3 * c_r,
                qkv_weight().value.data(), c, 0.0F, dx.data(), c);
  if (m_split) {
    return m_region.enter_backward(dx, m_sliced);  // each rank's heads' part of dx → the sum
  }
  return dx;
}

}  // namespace tessera::nn
