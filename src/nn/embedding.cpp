#include "tessera/nn/embedding.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/gemm.hpp"

#include <algorithm>

namespace tessera::nn {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

constexpr float kTableStd = 0.02F;           // GPT-2's initialisation of both tables
constexpr Index kMaxVocab = Index{1} << 24;  // float32 holds every integer up to 2^24 exactly
constexpr Index kColumnChunk = 16;           // columns per work item of the token table's gradient

// Whether the float id is an integer in [0, vocab) (false for NaN and infinities).
KOKKOS_INLINE_FUNCTION bool valid_id(float id, Index vocab) {
  return id >= 0.0F && id < static_cast<float>(vocab) &&
         static_cast<float>(static_cast<Index>(id)) == id;
}

// The row of this rank's block of the token table that `id` selects, or -1 when another rank
// holds it.
KOKKOS_INLINE_FUNCTION Index local_row(float id, Range block) {
  const Index row = static_cast<Index>(id) - block.offset;
  return row >= 0 && row < block.count ? row : -1;
}
}  // namespace

namespace detail {
// Throws, naming the first bad id, unless every id of x (samples of `tokens` ids) is an integer in
// [0, vocab). A free function: nvcc refuses a device lambda in a private member function.
void check_embedding_ids(const Tensor& x, Index vocab, Index tokens, const std::string& name) {
  const FloatView ids = x.view();
  const Index count = x.numel();
  Index first_bad = 0;  // Min's reducer starts from its identity, the largest Index: none bad
  Kokkos::parallel_reduce(
      "Embedding::check_ids", Policy(0, count),
      KOKKOS_LAMBDA(const Index i, Index& bad) {
        if (!valid_id(ids(i), vocab) && i < bad) {
          bad = i;
        }
      },
      Kokkos::Min<Index>(first_bad));
  if (first_bad >= count) {
    return;
  }
  float id = 0.0F;
  Kokkos::deep_copy(Kokkos::View<float, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(&id),
                    Kokkos::subview(ids, first_bad));
  TESSERA_THROW(
      "embedding '{}': token id {} at sample {}, position {} is not an integer in [0, {}) "
      "(option vocab)",
      name, id, first_bad / tokens, first_bad % tokens, vocab);
}
}  // namespace detail

Embedding::Embedding(std::string name, const Shape& input, const EmbeddingOptions& options,
                     BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_vocab(options.vocab),
      m_dim(options.dim),
      m_positions(options.positions),
      m_split(options.split),
      m_region(this->context(), this->name()) {
  if (input.size() != 1 || input[0] < 1) {
    TESSERA_THROW("embedding '{}': input shape {} must be (tokens,) with tokens >= 1", this->name(),
                  to_string(input));
  }
  m_tokens = input[0];
  for (const auto& [key, value] : {std::pair{"vocab", m_vocab}, std::pair{"dim", m_dim},
                                   std::pair{"positions", m_positions}}) {
    if (value < 1) {
      TESSERA_THROW("embedding '{}': option {} = {} must be >= 1", this->name(), key, value);
    }
  }
  if (m_vocab > kMaxVocab) {
    TESSERA_THROW(
        "embedding '{}': option vocab = {} exceeds {}, the largest vocabulary whose ids float32 "
        "holds exactly",
        this->name(), m_vocab, kMaxVocab);
  }
  if (m_tokens > m_positions) {
    TESSERA_THROW(
        "embedding '{}': the sample's {} tokens exceed the position table's {} (option "
        "positions)",
        this->name(), m_tokens, m_positions);
  }
  const int tensor = m_split ? m_region.size() : 1;
  if (m_vocab < tensor) {
    TESSERA_THROW(
        "embedding '{}': split = true cuts its vocabulary of {} tokens over {} tensor ranks; "
        "every rank needs at least one",
        this->name(), m_vocab, tensor);
  }
  const Layout wte = m_split ? Layout::split({m_vocab, m_dim}, 0, GridAxis::tensor)
                             : Layout::replicated({m_vocab, m_dim});  // (V, C)
  const InitSpec init = InitSpec::normal(0.0F, kTableStd);
  add_parameter("wte", wte, init, /*decay=*/false);
  add_parameter("wpe", Layout::replicated({m_positions, m_dim}), init, /*decay=*/false);
  m_block = {wte.local_offset(this->context().place())[0],
             wte.local_shape(this->context().place())[0]};
  m_local_y = {m_tokens, m_dim};
}

Shape Embedding::output_shape(const Shape& input) const {
  if (input != Shape{m_tokens}) {
    TESSERA_THROW("embedding '{}': input sample shape {} does not fit, expected {}", name(),
                  to_string(input), to_string(Shape{m_tokens}));
  }
  return {m_tokens, m_dim};
}

Layout Embedding::place_input(const Layout& input) {
  require_whole(input);
  const Shape out = output_shape(input.global_shape());
  const Layout layout = m_split ? m_region.outside(out) : Layout::replicated(out);
  m_local_y = layout.local_shape(context().place());
  return layout;
}

ForwardResult Embedding::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, {m_tokens}, "input");
  detail::check_embedding_ids(x, m_vocab, m_tokens, name());
  const Tensor y = m_output.get(name() + ".output", {x.dim(0), m_tokens, m_dim});  // (N, T, C)
  const FloatView ids = x.view();                                                  // (N, T)
  const FloatView out = y.view();
  const FloatView wte = parameters()[0].value.view();  // (V_r, C): this rank's rows
  const FloatView wpe = parameters()[1].value.view();  // (P, C)
  const Range block = m_block;
  const Index tokens = m_tokens;
  const Index dim = m_dim;
  // Split, the position rows join once: tensor rank 0 adds them before the sum.
  const bool add_positions = !m_split || context().place().coord_of(GridAxis::tensor) == 0;
  Kokkos::parallel_for(
      "Embedding::forward", Policy(0, x.numel()), KOKKOS_LAMBDA(const Index i) {
        const Index row = local_row(ids(i), block);
        const Index t = i % tokens;
        for (Index c = 0; c < dim; ++c) {
          const float token = row >= 0 ? wte(row * dim + c) : 0.0F;
          out(i * dim + c) = add_positions ? token + wpe(t * dim + c) : token;
        }
      });
  Context ctx;
  ctx.saved = {x};
  ctx.input_shape = x.shape();
  if (m_split) {  // each rank's rows → the sum (this rank's token slice of it)
    return {m_region.leave_forward(y), std::move(ctx)};
  }
  return {y, std::move(ctx)};
}

Tensor Embedding::backward(const Tensor& dy_in, Context&& ctx) {
  check_batch(dy_in, m_local_y, "output grad");
  check_context(dy_in, ctx, {m_tokens}, 1);
  const Tensor dy = m_split ? m_region.leave_backward(dy_in) : dy_in;  // whole tokens
  const Tensor& x = ctx.saved[0];                                      // (N, T)
  const FloatView ids = x.view();
  const FloatView g = dy.view();                       // (N, T, C)
  const FloatView dwte = parameters()[0].grad.view();  // (V_r, C)
  const FloatView dwpe = parameters()[1].grad.view();  // (P, C)
  const Range block = m_block;
  const Index count = x.numel();
  const Index batch = dy.dim(0);
  const Index tokens = m_tokens;
  const Index dim = m_dim;
  // dwte[id] += dy[n, t] for every token of this rank's rows. A work item owns a chunk of columns
  // and walks the tokens in order: no two write the same element, and the sums do not depend on
  // the threads.
  Kokkos::parallel_for(
      "Embedding::token_grad", Policy(0, (dim + kColumnChunk - 1) / kColumnChunk),
      KOKKOS_LAMBDA(const Index chunk) {
        const Index c0 = chunk * kColumnChunk;
        const Index c1 = c0 + kColumnChunk < dim ? c0 + kColumnChunk : dim;
        for (Index i = 0; i < count; ++i) {
          const Index row = local_row(ids(i), block);
          if (row >= 0) {
            for (Index c = c0; c < c1; ++c) {
              dwte(row * dim + c) += g(i * dim + c);
            }
          }
        }
      });
  // dwpe[t] += Σ_n dy[n, t].
  Kokkos::parallel_for(
      "Embedding::position_grad", Policy(0, tokens), KOKKOS_LAMBDA(const Index t) {
        for (Index n = 0; n < batch; ++n) {
          for (Index c = 0; c < dim; ++c) {
            dwpe(t * dim + c) += g((n * tokens + t) * dim + c);
          }
        }
      });
  if (!needs_input_grad()) {
    return Tensor();  // the ids are data
  }
  const Tensor dx = m_input_grad.get(name() + ".input_grad", x.shape());
  dx.zero();  // the output is piecewise constant in the ids
  return dx;
}

// --- TiedHead ----------------------------------------------------------------------------------

TiedHead::TiedHead(std::string name, const Shape& input, BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_input(input),
      m_local_x(input),
      m_region(this->context(), this->name()) {
  if (input.size() != 2 || input[0] < 1 || input[1] < 1) {
    TESSERA_THROW("tied_head '{}': input shape {} must be (tokens, features) with extents >= 1",
                  this->name(), to_string(input));
  }
}

void TiedHead::bind(Embedding& embedding) {
  if (embedding.dim() != m_input[1]) {
    TESSERA_THROW(
        "tied_head '{}': its input has {} features but embedding '{}' has dim = {}; a tied head "
        "multiplies by the embedding's table, so they must be equal",
        name(), m_input[1], embedding.name(), embedding.dim());
  }
  m_embedding = &embedding;
  m_local_y = {m_input[0], embedding.wte().value.dim(0)};
}

void TiedHead::hold(std::unique_ptr<Embedding> copy) {
  TESSERA_CHECK(copy != nullptr, "tied_head '{}': null embedding", name());
  bind(*copy);
  m_copy = std::move(copy);
}

std::vector<Layer*> TiedHead::children() {
  if (m_copy) {
    return {m_copy.get()};
  }
  return {};
}

Embedding& TiedHead::embedding() const {
  TESSERA_CHECK(m_embedding != nullptr,
                "tied_head '{}' is not tied to an embedding: the model needs an embedding before "
                "it",
                name());
  return *m_embedding;
}

Shape TiedHead::output_shape(const Shape& input) const {
  if (input != m_input) {
    TESSERA_THROW("tied_head '{}': input sample shape {} does not fit, expected {}", name(),
                  to_string(input), to_string(m_input));
  }
  return {m_input[0], embedding().vocab()};
}

Layout TiedHead::place_input(const Layout& input) {
  const Shape out = output_shape(input.global_shape());
  const bool split = embedding().split();
  m_sliced = split && m_region.is_sliced(input);
  if (!m_sliced) {
    require_whole(input);
  }
  const Layout layout = split ? Layout::split(out, 1, GridAxis::tensor) : Layout::replicated(out);
  m_local_x = input.local_shape(context().place());
  m_local_y = layout.local_shape(context().place());
  return layout;
}

ForwardResult TiedHead::forward(const Tensor& x_in, const ForwardOptions& /*options*/) {
  check_batch(x_in, m_local_x, "input");
  Embedding& e = embedding();
  const Tensor x = e.split() ? m_region.enter_forward(x_in, m_sliced) : x_in;
  const Tensor& wte = e.wte().value;  // (V_r, C)
  const Index v = wte.dim(0);
  const Index c = m_input[1];
  const Index rows = x.numel() / c;
  const Tensor y = m_output.get(name() + ".output", {x.dim(0), m_input[0], v});
  // y (rows, V_r) = x (rows, C) · wteᵀ (C, V_r).
  kernels::gemm(kernels::Trans::no, kernels::Trans::yes, rows, v, c, 1.0F, x.data(), c, wte.data(),
                c, 0.0F, y.data(), v);
  Context ctx;
  ctx.saved = {x};
  ctx.input_shape = x_in.shape();
  return {y, std::move(ctx)};
}

Tensor TiedHead::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_y, "output grad");
  check_context(dy, ctx, m_local_x, 1);
  Embedding& e = embedding();
  const Tensor& x = ctx.saved[0];  // (N, T, C), whole tokens
  Parameter& wte = e.wte();
  const Index v = wte.value.dim(0);
  const Index c = m_input[1];
  const Index rows = x.numel() / c;
  // dwte (V_r, C) += dyᵀ (V_r, rows) · x (rows, C): the head's part of the tied gradient.
  kernels::gemm(kernels::Trans::yes, kernels::Trans::no, v, c, rows, 1.0F, dy.data(), v, x.data(),
                c, 1.0F, wte.grad.data(), c);
  if (!needs_input_grad()) {
    return Tensor();
  }
  // dx (rows, C) = dy (rows, V_r) · wte (V_r, C): partial over tensor when split.
  const Tensor dx = m_input_grad.get(name() + ".input_grad", x.shape());
  kernels::gemm(kernels::Trans::no, kernels::Trans::no, rows, c, v, 1.0F, dy.data(), v,
                wte.value.data(), c, 0.0F, dx.data(), c);
  return e.split() ? m_region.enter_backward(dx, m_sliced) : dx;
}

}  // namespace tessera::nn
