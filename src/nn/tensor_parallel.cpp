#include "tessera/nn/tensor_parallel.hpp"

#include "tessera/core/check.hpp"

namespace tessera::nn {

TensorRegion::TensorRegion(const BuildContext& context) : m_size(context.size(GridAxis::tensor)) {
  if (m_size > 1 && context.has_grid()) {
    m_comm = &context.axis(GridAxis::tensor);
  }
}

void TensorRegion::sum(const Tensor& t) const {
  if (m_size == 1) {
    return;
  }
  TESSERA_CHECK(m_comm != nullptr,
                "a layer split over {} tensor ranks was built without communicators (to be "
                "described, not run)",
                m_size);
  m_comm->allreduce(t)->wait();
}

}  // namespace tessera::nn
