#include "tessera/kernels/attention.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/math.hpp"
#include "tessera/kernels/gemm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tessera::kernels {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

// --- row numerics --------------------------------------------------------------------------------

// Independent partial sums/maxima per row, so that the compiler can keep them in vector registers
// (a single float accumulator is a serial dependency it may not reorder).
constexpr int kLanes = 8;

// e^x to about one ulp for x <= 0 — scores minus their row's maximum or log-sum-exp — branch-free
// so that a loop of it vectorises: x = n·ln 2 + r with |r| <= ln 2 / 2 (n rounded by adding
// 1.5·2^23; ln 2 in two parts, Cody and Waite), e^r by its Taylor polynomial of degree 7 (error
// < 1e-8), 2^n built in the exponent bits. Below -87 (e^x < 2^-125) the result is e^-87 ≈ 1.6e-38,
// nothing next to the row's largest term, which is 1.
KOKKOS_INLINE_FUNCTION float exp_nonpositive(float x) {
  constexpr float kRound =
      12582912.0F;  // 1.5 · 2^23: t = y + kRound holds round(y) in its low bits
  constexpr std::int32_t kRoundBits = 0x4B400000;
  x = x < -87.0F ? -87.0F : x;
  const float t = x * 1.44269504088896341F + kRound;
  const float n = t - kRound;
  const float r = x - n * 0.693359375F + n * 2.12194440e-4F;
  const float p =
      1.0F + r * (1.0F + r * (0.5F + r * (1.0F / 6.0F +
                                          r * (1.0F / 24.0F +
                                               r * (1.0F / 120.0F +
                                                    r * (1.0F / 720.0F + r * (1.0F / 5040.0F)))))));
  std::int32_t bits = 0;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits - kRoundBits + 127) * (1 << 23);  // the exponent of 2^n
  float two_n = 0.0F;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

KOKKOS_INLINE_FUNCTION float lanes_max(const float* s, Index n) {
  float lane[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lane[l] = s[0];
  }
  Index j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lane[l] = s[j + l] > lane[l] ? s[j + l] : lane[l];
    }
  }
  float m = s[0];
  for (int l = 0; l < kLanes; ++l) {
    m = lane[l] > m ? lane[l] : m;
  }
  for (; j < n; ++j) {
    m = s[j] > m ? s[j] : m;
  }
  return m;
}

// Σ s[0..n), lanes of floats combined in double.
KOKKOS_INLINE_FUNCTION double lanes_sum(const float* s, Index n) {
  float lane[kLanes] = {};
  Index j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lane[l] += s[j + l];
    }
  }
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) {
    sum += static_cast<double>(lane[l]);
  }
  for (; j < n; ++j) {
    sum += static_cast<double>(s[j]);
  }
  return sum;
}

// Σ a[d] · b[d] over one head's D columns, in double.
KOKKOS_INLINE_FUNCTION double head_dot(const float* a, const float* b, Index d) {
  double sum = 0.0;
  for (Index j = 0; j < d; ++j) {
    sum += static_cast<double>(a[j]) * static_cast<double>(b[j]);
  }
  return sum;
}

// One query row of a block: s[0..cols) its scaled scores against keys 0..cols-1, of which the
// first `valid` are unmasked. Overwrites s with the probabilities (0 for masked keys) and returns
// the log-sum-exp of the unmasked scores.
KOKKOS_INLINE_FUNCTION float causal_softmax_row(float* s, Index valid, Index cols) {
  const float m = lanes_max(s, valid);
  for (Index j = 0; j < valid; ++j) {
    s[j] = exp_nonpositive(s[j] - m);
  }
  const double sum = lanes_sum(s, valid);
  const auto inv = static_cast<float>(1.0 / sum);
  for (Index j = 0; j < valid; ++j) {
    s[j] *= inv;
  }
  for (Index j = valid; j < cols; ++j) {
    s[j] = 0.0F;
  }
  return m + static_cast<float>(math::log(sum));
}

// One query row in backward: s the recomputed scaled scores, dp = dY · Vᵀ for that row. Overwrites
// s with P = exp(s - lse) and dp with dS = P ∘ (dp - delta), delta = dY · Y of the row; both 0 for
// masked keys.
KOKKOS_INLINE_FUNCTION void causal_softmax_backward_row(float* s, float* dp, Index valid,
                                                        Index cols, float lse, float delta) {
  for (Index j = 0; j < valid; ++j) {
    const float p = exp_nonpositive(s[j] - lse);
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
  for (Index j = valid; j < cols; ++j) {
    s[j] = 0.0F;
    dp[j] = 0.0F;
  }
}

// --- one head's slices of the tensors --------------------------------------------------------

// Where head h of sample n lives: q, k, v rows of stride ld = 3·H·D; y and dy rows of stride
// H·D; its T log-sum-exps.
struct HeadSlices {
  Index q = 0;    // offset of q's first element in qkv (k at + H·D, v at + 2·H·D)
  Index out = 0;  // offset in y / dy
  Index lse = 0;  // offset in lse
};

HeadSlices head_slices(const AttentionShape& s, Index n, Index h) {
  const Index w = s.width();
  return {n * s.tokens * 3 * w + h * s.head_dim, n * s.tokens * w + h * s.head_dim,
          (n * s.heads + h) * s.tokens};
}

void check_geometry(const char* op, const AttentionShape& s, const Tensor& qkv,
                    const Tensor& scratch) {
  TESSERA_CHECK(s.batch >= 1 && s.tokens >= 1 && s.heads >= 1 && s.head_dim >= 1,
                "{}: batch {}, tokens {}, heads {} and head_dim {} must be >= 1", op, s.batch,
                s.tokens, s.heads, s.head_dim);
  check_shape(qkv, {s.batch, s.tokens, 3 * s.width()}, std::string(op) + " qkv");
  TESSERA_CHECK(scratch.numel() >= numel(attention_scratch_shape(s.tokens)),
                "{}: scratch '{}' holds {} floats, needs {}", op, scratch.label(), scratch.numel(),
                numel(attention_scratch_shape(s.tokens)));
}

}  // namespace

Shape attention_scratch_shape(Index tokens) {
  return {2, std::min(tokens, kAttentionBlockRows), tokens};
}

void causal_attention_forward(const Tensor& qkv, const AttentionShape& shape, const Tensor& y,
                              const Tensor& lse, const Tensor& scratch) {
  check_geometry("causal_attention_forward", shape, qkv, scratch);
  check_shape(y, {shape.batch, shape.tokens, shape.width()}, "causal_attention_forward y");
  check_shape(lse, {shape.batch, shape.heads, shape.tokens}, "causal_attention_forward lse");
  const Index t_all = shape.tokens;
  const Index d = shape.head_dim;
  const Index ld = 3 * shape.width();  // a token's row of qkv
  const Index ld_out = shape.width();  // and of y
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  float* const scores = scratch.data();  // (block, T): this block's scores, then probabilities
  for (Index n = 0; n < shape.batch; ++n) {
    for (Index h = 0; h < shape.heads; ++h) {
      const HeadSlices at = head_slices(shape, n, h);
      const float* q = qkv.data() + at.q;  // (T, D), row stride ld
      const float* k = q + shape.width();
      const float* v = k + shape.width();
      float* const out = y.data() + at.out;      // (T, D), row stride ld_out
      float* const lse_h = lse.data() + at.lse;  // (T,)
      for (Index r0 = 0; r0 < t_all; r0 += kAttentionBlockRows) {
        const Index r1 = std::min(t_all, r0 + kAttentionBlockRows);  // keys [0, r1)
        // S (rows, r1) = q[r0:r1] · k[0:r1]ᵀ / √D.
        gemm(Trans::no, Trans::yes, r1 - r0, r1, d, scale, q + r0 * ld, ld, k, ld, 0.0F, scores,
             t_all);
        Kokkos::parallel_for(
            "Attention::softmax", Policy(0, r1 - r0), KOKKOS_LAMBDA(const Index i) {
              lse_h[r0 + i] = causal_softmax_row(scores + i * t_all, r0 + i + 1, r1);
            });
        // y[r0:r1] (rows, D) = P (rows, r1) · v[0:r1] (r1, D).
        gemm(Trans::no, Trans::no, r1 - r0, d, r1, 1.0F, scores, t_all, v, ld, 0.0F,
             out + r0 * ld_out, ld_out);
      }
    }
  }
}

void causal_attention_backward(const Tensor& qkv, const Tensor& y, const Tensor& lse,
                               const Tensor& dy, const AttentionShape& shape, const Tensor& dqkv,
                               const Tensor& scratch) {
  check_geometry("causal_attention_backward", shape, qkv, scratch);
  const Shape out_shape{shape.batch, shape.tokens, shape.width()};
  check_shape(y, out_shape, "causal_attention_backward y");
  check_shape(dy, out_shape, "causal_attention_backward dy");
  check_shape(lse, {shape.batch, shape.heads, shape.tokens}, "causal_attention_backward lse");
  check_shape(dqkv, qkv.shape(), "causal_attention_backward dqkv");
  const Index t_all = shape.tokens;
  const Index d = shape.head_dim;
  const Index ld = 3 * shape.width();
  const Index ld_out = shape.width();
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const Index block = std::min(t_all, kAttentionBlockRows);
  float* const probs = scratch.data();                   // (block, T): scores, then P
  float* const dprobs = scratch.data() + block * t_all;  // (block, T): dP, then dS
  const Index last_r0 = (t_all - 1) / kAttentionBlockRows * kAttentionBlockRows;
  for (Index n = 0; n < shape.batch; ++n) {
    for (Index h = 0; h < shape.heads; ++h) {
      const HeadSlices at = head_slices(shape, n, h);
      const float* q = qkv.data() + at.q;  // (T, D), row stride ld; k, v follow
      const float* k = q + shape.width();
      const float* v = k + shape.width();
      float* const dq = dqkv.data() + at.q;
      float* const dk = dq + shape.width();
      float* const dv = dk + shape.width();
      const float* yh = y.data() + at.out;  // (T, D), row stride ld_out
      const float* dyh = dy.data() + at.out;
      const float* lse_h = lse.data() + at.lse;
      // Blocks from the last: it reaches every key, so its dK and dV products overwrite (beta =
      // 0) and the earlier blocks add to them — no zero fill of dqkv.
      for (Index r0 = last_r0; r0 >= 0; r0 -= kAttentionBlockRows) {
        const Index r1 = std::min(t_all, r0 + kAttentionBlockRows);
        const Index rows = r1 - r0;
        const float beta = r0 == last_r0 ? 0.0F : 1.0F;
        // S (rows, r1) = q[r0:r1] · k[0:r1]ᵀ / √D, as forward computed it.
        gemm(Trans::no, Trans::yes, rows, r1, d, scale, q + r0 * ld, ld, k, ld, 0.0F, probs, t_all);
        // dP (rows, r1) = dy[r0:r1] (rows, D) · v[0:r1]ᵀ (D, r1).
        gemm(Trans::no, Trans::yes, rows, r1, d, 1.0F, dyh + r0 * ld_out, ld_out, v, ld, 0.0F,
             dprobs, t_all);
        Kokkos::parallel_for(
            "Attention::softmax_backward", Policy(0, rows), KOKKOS_LAMBDA(const Index i) {
              const Index t = r0 + i;
              const auto delta = static_cast<float>(head_dot(dyh + t * ld_out, yh + t * ld_out, d));
              causal_softmax_backward_row(probs + i * t_all, dprobs + i * t_all, t + 1, r1,
                                          lse_h[t], delta);
            });
        // dv[0:r1] (r1, D) (+)= Pᵀ (r1, rows) · dy[r0:r1] (rows, D).
        gemm(Trans::yes, Trans::no, r1, d, rows, 1.0F, probs, t_all, dyh + r0 * ld_out, ld_out,
             beta, dv, ld);
        // dq[r0:r1] (rows, D) = dS (rows, r1) · k[0:r1] (r1, D) / √D.
        gemm(Trans::no, Trans::no, rows, d, r1, scale, dprobs, t_all, k, ld, 0.0F, dq + r0 * ld,
             ld);
        // dk[0:r1] (r1, D) (+)= dSᵀ (r1, rows) · q[r0:r1] (rows, D) / √D.
        gemm(Trans::yes, Trans::no, r1, d, rows, scale, dprobs, t_all, q + r0 * ld, ld, beta, dk,
             ld);
      }
    }
  }
}

}  // namespace tessera::kernels
