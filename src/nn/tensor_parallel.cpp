#include "tessera/nn/tensor_parallel.hpp"

#include "tessera/core/check.hpp"

namespace tessera::nn {

namespace {
// Moves blocks of `slice` elements between sample-major order (sample s, rank r: block s·m + r)
// and rank-major order (block r·n + s), n samples, m ranks: into sample-major when
// `to_sample_major`, into rank-major otherwise. One copy per block on the execution space's
// stream, wherever the tensors live (on the host a memcpy each: an element-wise kernel ran 4×
// slower there).
void permute_token_blocks(const FloatView& from, const FloatView& to, Index n, Index m, Index slice,
                          bool to_sample_major) {
  const ExecSpace exec;
  auto block_of = [slice](const FloatView& v, Index b) {
    return Kokkos::subview(v, std::make_pair(b * slice, (b + 1) * slice));
  };
  for (Index b = 0; b < n * m; ++b) {
    const Index source = to_sample_major ? (b % m) * n + b / m   // (s, r) ← (r, s)
                                         : (b % n) * m + b / n;  // (r, s) ← (s, r)
    Kokkos::deep_copy(exec, block_of(to, b), block_of(from, source));
  }
}
}  // namespace

TensorRegion::TensorRegion(const BuildContext& context, std::string name)
    : m_clock(&context.tensor_clock()),
      m_name(std::move(name)),
      m_size(context.size(GridAxis::tensor)),
      m_sequence_layout(context.sequence_parallel()),
      m_sequence(context.sequence_parallel() && m_size > 1) {
  if (m_size > 1 && context.has_grid()) {
    m_comm = &context.axis(GridAxis::tensor);
  }
}

Layout TensorRegion::outside(const Shape& shape) const {
  if (!m_sequence_layout || shape.size() < 2) {
    return Layout::replicated(shape);
  }
  if (shape[0] % m_size != 0) {
    TESSERA_THROW(
        "'{}': with parallel.sequence_parallel its {} tokens are cut into equal slices over the "
        "{} tensor ranks, which do not divide them (model.context must be a multiple of "
        "parallel.tensor)",
        m_name, shape[0], m_size);
  }
  return Layout::split(shape, 0, GridAxis::tensor);
}

bool TensorRegion::is_sliced(const Layout& input) const {
  return m_sequence_layout && input.rank() >= 2 && input == outside(input.global_shape());
}

comm::Communicator& TensorRegion::comm() const {
  TESSERA_CHECK(m_comm != nullptr,
                "'{}' is split over {} tensor ranks but was built without communicators (to be "
                "described, not run)",
                m_name, m_size);
  return *m_comm;
}

void TensorRegion::sum(const Tensor& t) {
  if (m_size == 1) {
    return;
  }
  comm::Communicator& c = comm();
  timed([&] { c.allreduce(t)->wait(); });
}

// A batch (N, T, ...) holds, per sample, the token slices of the ranks one after the other; MPI's
// allgather and reduce-scatter want each rank's slices of every sample together (rank-major). With
// N = 1 the two orders are the same and nothing is repacked.

Tensor TensorRegion::gather_tokens_forward(const Tensor& x) {
  if (!m_sequence) {
    return x;
  }
  TESSERA_CHECK(x.rank() >= 2, "'{}': gather_tokens of {} needs (N, T, ...)", m_name,
                to_string(x.shape()));
  Shape whole = x.shape();
  whole[1] *= m_size;
  const Tensor out = m_gathered.get(m_name + ".gathered", whole);
  const Index n = x.dim(0);
  const Index slice = x.numel() / n;  // one sample's slice: T/size tokens
  comm::Communicator& c = comm();
  timed([&] {
    if (n == 1) {
      c.allgather(x, out)->wait();
      return;
    }
    const Tensor pack = m_packs.get(m_name + ".pack", {x.numel() * m_size});
    c.allgather(x, pack)->wait();
    permute_token_blocks(pack.view(), out.view(), n, m_size, slice, true);
  });
  return out;
}

Tensor TensorRegion::reduce_scatter_tokens(const Tensor& t) {
  if (!m_sequence) {
    sum(t);
    return t;
  }
  TESSERA_CHECK(t.rank() >= 2 && t.dim(1) % m_size == 0,
                "'{}': reduce_scatter of {} needs (N, T, ...) with T a multiple of {}", m_name,
                to_string(t.shape()), m_size);
  Shape sliced = t.shape();
  sliced[1] /= m_size;
  const Tensor out = m_scattered.get(m_name + ".scattered", sliced);
  const Index n = t.dim(0);
  const Index slice = out.numel() / n;
  comm::Communicator& c = comm();
  timed([&] {
    if (n == 1) {
      c.reduce_scatter(t, out)->wait();
      return;
    }
    const Tensor pack = m_packs.get(m_name + ".pack", {t.numel()});
    permute_token_blocks(t.view(), pack.view(), n, m_size, slice, false);
    c.reduce_scatter(pack, out)->wait();
  });
  return out;
}

}  // namespace tessera::nn
