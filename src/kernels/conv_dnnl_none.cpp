// The oneDNN backend of a build without oneDNN (CMake did not find it, or TESSERA_WITH_DNNL=OFF):
// it reports itself unavailable, and the convolution layers use im2col + GEMM. Compiled instead of
// conv_dnnl.cpp (src/kernels/CMakeLists.txt).
#include "tessera/core/check.hpp"
#include "tessera/kernels/conv_dnnl.hpp"

namespace tessera::kernels {

bool dnnl_available() {
  return false;
}

void set_dnnl_threads(int /*threads*/) {}

bool dnnl_gemm(bool /*trans_a*/, bool /*trans_b*/, Index /*m*/, Index /*n*/, Index /*k*/,
               float /*alpha*/, const float* /*a*/, Index /*lda*/, const float* /*b*/,
               Index /*ldb*/, float /*beta*/, float* /*c*/, Index /*ldc*/) {
  return false;
}

bool dnnl_gemm_bf16(bool /*trans_a*/, bool /*trans_b*/, Index /*m*/, Index /*n*/, Index /*k*/,
                    float /*alpha*/, const std::uint16_t* /*a*/, const std::uint16_t* /*b*/,
                    float /*beta*/, float* /*c*/, Index /*ldc*/) {
  return false;
}

struct DnnlConv::Impl {};

DnnlConv::DnnlConv(std::string what, const ConvGeometry& /*g*/, Index /*out_channels*/,
                   int /*ndims*/, bool /*bias*/, const DnnlOptions& /*options*/) {
  TESSERA_THROW(
      "{}: the oneDNN convolution backend is not in this build (install Debian's libdnnl-dev and "
      "reconfigure with TESSERA_WITH_DNNL=AUTO or ON)",
      what);
}

DnnlConv::~DnnlConv() = default;
DnnlConv::DnnlConv(DnnlConv&&) noexcept = default;
DnnlConv& DnnlConv::operator=(DnnlConv&&) noexcept = default;

void DnnlConv::forward(const Tensor& /*x*/, const Tensor& /*w*/, const Tensor& /*bias*/,
                       const Tensor& /*y*/) {}

void DnnlConv::backward(const Tensor& /*x*/, const Tensor& /*w*/, const Tensor& /*dy*/,
                        const Tensor& /*dx*/, const Tensor& /*dw*/, const Tensor& /*db*/) {}

void DnnlConv::forward_view(Index /*n*/, const float* /*x*/, const Tensor& /*w*/,
                            const Tensor& /*bias*/, float* /*y*/) {}

void DnnlConv::backward_view(Index /*n*/, const float* /*x*/, const Tensor& /*w*/,
                             const float* /*dy*/, float* /*dx*/, const Tensor& /*dw*/,
                             const Tensor& /*db*/) {}

bool DnnlConv::plain_activations(Index /*n*/) {
  return false;
}

std::string DnnlConv::describe(Index /*n*/) {
  return "oneDNN not in this build\n";
}

}  // namespace tessera::kernels
