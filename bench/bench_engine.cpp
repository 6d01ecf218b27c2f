// Engine benchmarks: the dense and convolution layers against the BLAS they stand on.
//
//   tessera-bench-engine --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// The convolution layers run with each host backend the build has: `im2col` (im2col + OpenBLAS)
// and `dnnl` (oneDNN, when built with it), named by the last part of the benchmark's name; the
// `dnnl_format/` rows time the oneDNN kernel alone with each format strategy and algorithm choice
// (kernels::DnnlOptions): the default (`automatic`: oneDNN's blocked formats but plain ones for a
// few-channel input, oneDNN's choice of algorithm), the same with direct convolution only
// (`automatic_direct`), oneDNN's formats throughout (`any_direct`, reordered from and to the
// plain tensors) and the plain layouts throughout (`plain_direct`). The primitives oneDNN chose
// are printed in the context (dnnl_...) at the top.
//
// Everything runs on one core (OpenBLAS set to 1 thread, Kokkos Serial), as one MPI rank would.
// Before the benchmarks, the program measures OpenBLAS's own SGEMM rate on a 1024³ problem
// (median of 9 runs) in the same process; every benchmark then reports
//   GFLOP/s   nominal FLOPs per second: 2·M·N·K per GEMM; a convolution's forward pass counts
//             2·N·Cout·Do·Ho·Wo·Cin·k^d, forward + backward (input, weight and bias gradients)
//             3× that; a dense layer's forward 2·N·in·out, forward + backward 3× that;
//   frac_ref  GFLOP/s divided by the reference SGEMM rate;
//   wall_GFLOP/s  the same FLOPs per wall-clock second (equal to GFLOP/s on an idle machine).
// Both the reference and the counters use the process's CPU time: the build machines are shared
// (2 cores, other jobs compiling), and CPU time does not count the time this single-threaded
// process spends descheduled. On an idle machine it equals wall-clock time; the Time column is
// wall-clock, the CPU column CPU time, so the two can be compared run by run.
#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/kernels/conv_dnnl.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/nn/conv.hpp"
#include "tessera/nn/linear.hpp"

#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <ctime>
#include <string>
#include <vector>

namespace {
using tessera::Index;
using tessera::Shape;
using tessera::Tensor;
using tessera::kernels::Trans;

double g_reference_flops = 0.0;  // OpenBLAS SGEMM FLOP/s on the reference problem

/// CPU seconds used by the process so far.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

std::vector<float> random_values(Index n, std::uint64_t seed) {
  const tessera::rng::CounterRng gen(seed, 1);
  std::vector<float> v(static_cast<size_t>(n));
  for (Index i = 0; i < n; ++i) {
    v[static_cast<size_t>(i)] = 2.0F * gen.uniform(static_cast<std::uint64_t>(i)) - 1.0F;
  }
  return v;
}

Tensor random_tensor(const std::string& label, const Shape& shape, std::uint64_t seed) {
  return Tensor::from_host(label, shape, random_values(tessera::numel(shape), seed));
}

/// Runs `body` for the benchmark's iterations and sets the GFLOP/s and frac_ref counters from
/// the loop's CPU time, and wall_GFLOP/s from its wall-clock time.
template <class Body>
void run_timed(benchmark::State& state, double flops_per_iteration, Body&& body) {
  const tessera::Stopwatch wall;
  const double start = cpu_seconds();
  for (auto _ : state) {
    body();
  }
  const double seconds = cpu_seconds() - start;
  const double flops = flops_per_iteration * static_cast<double>(state.iterations());
  state.counters["GFLOP/s"] = flops / seconds / 1e9;
  state.counters["frac_ref"] = flops / seconds / g_reference_flops;
  state.counters["wall_GFLOP/s"] = flops / wall.seconds() / 1e9;
}

struct GemmShape {
  Trans ta;
  Trans tb;
  Index m;
  Index n;
  Index k;
};

/// C (m×n) = op(A) · op(B), row-major, leading dimensions as stored.
void gemm_once(const GemmShape& s, const Tensor& a, const Tensor& b, const Tensor& c) {
  const Index lda = s.ta == Trans::no ? s.k : s.m;
  const Index ldb = s.tb == Trans::no ? s.n : s.k;
  tessera::kernels::gemm(s.ta, s.tb, s.m, s.n, s.k, 1.0F, a.data(), lda, b.data(), ldb, 0.0F,
                         c.data(), s.n);
}

void bm_sgemm(benchmark::State& state, GemmShape s) {
  const Tensor a = random_tensor("A", {s.m * s.k}, 1);
  const Tensor b = random_tensor("B", {s.k * s.n}, 2);
  const Tensor c("C", {s.m * s.n});
  run_timed(state, 2.0 * static_cast<double>(s.m * s.n * s.k), [&] {
    gemm_once(s, a, b, c);
    benchmark::DoNotOptimize(c.data());
  });
}

/// OpenBLAS SGEMM FLOP/s on an n³ problem: median of `reps` runs after 2 warm-up runs, in CPU
/// time (`wall` receives the same median in wall-clock time).
double measure_reference(Index n, int reps, double& wall) {
  const GemmShape s{Trans::no, Trans::no, n, n, n};
  const Tensor a = random_tensor("A", {n * n}, 1);
  const Tensor b = random_tensor("B", {n * n}, 2);
  const Tensor c("C", {n * n});
  std::vector<double> cpu;
  std::vector<double> real;
  for (int r = 0; r < reps + 2; ++r) {
    const tessera::Stopwatch watch;
    const double start = cpu_seconds();
    gemm_once(s, a, b, c);
    if (r >= 2) {
      cpu.push_back(cpu_seconds() - start);
      real.push_back(watch.seconds());
    }
  }
  std::sort(cpu.begin(), cpu.end());
  std::sort(real.begin(), real.end());
  const double flops = 2.0 * static_cast<double>(n * n * n);
  wall = flops / real[real.size() / 2];
  return flops / cpu[cpu.size() / 2];
}

/// Linear forward (+ backward: input, weight and bias gradients) at batch n, in → out.
void bm_linear(benchmark::State& state, Index n, Index in, Index out, bool backward) {
  tessera::nn::Linear fc("fc", {in}, tessera::nn::LinearOptions{out});
  fc.initialize(1);
  const Tensor x = random_tensor("x", {n, in}, 3);
  const Tensor dy = random_tensor("dy", {n, out}, 4);
  const double fwd = 2.0 * static_cast<double>(n * in * out);
  run_timed(state, backward ? 3.0 * fwd : fwd, [&] {
    tessera::nn::ForwardResult r = fc.forward(x, {});
    if (backward) {
      const Tensor dx = fc.backward(dy, std::move(r.ctx));
      benchmark::DoNotOptimize(dx.data());
    }
    benchmark::DoNotOptimize(r.output.data());
  });
}

/// What a convolution benchmark runs: the forward pass, forward + backward with the input
/// gradient, or forward + backward without it (a first layer, whose input is data).
enum class Pass { fwd, fwd_bwd, fwd_bwd_no_dx };

const char* pass_name(Pass pass) {
  return pass == Pass::fwd ? "fwd" : pass == Pass::fwd_bwd ? "fwd+bwd" : "fwd+bwd_nodx";
}

/// Nominal FLOPs of one pass: the forward 2·N·Cout·Ho·Wo·Cin·k², each backward GEMM as much.
double conv_flops(Pass pass, double forward) {
  return pass == Pass::fwd ? forward : pass == Pass::fwd_bwd ? 3.0 * forward : 2.0 * forward;
}

/// Conv2d forward (+ backward: input, weight and bias gradients) at batch n, cin → cout on
/// h×w, k×k kernel, stride 1, padding pad, with the given host backend.
void bm_conv2d(benchmark::State& state, Index n, Index cin, Index cout, Index hw, Index k,
               Index pad, Pass pass, tessera::nn::ConvBackend backend) {
  tessera::nn::Conv2d conv("conv", {cin, hw, hw},
                           tessera::nn::ConvOptions{cout, {k}, {1}, {pad}, true, backend});
  conv.initialize(1);
  conv.set_needs_input_grad(pass != Pass::fwd_bwd_no_dx);
  const Shape out = conv.output_shape({cin, hw, hw});
  const Tensor x = random_tensor("x", {n, cin, hw, hw}, 3);
  const Tensor dy = random_tensor("dy", tessera::nn::batch_shape(n, out), 4);
  const double fwd = 2.0 * static_cast<double>(n * cout * out[1] * out[2] * cin * k * k);
  if (backend == tessera::nn::ConvBackend::im2col) {
    state.counters["chunk"] = static_cast<double>(conv.chunk());
  }
  run_timed(state, conv_flops(pass, fwd), [&] {
    tessera::nn::ForwardResult r = conv.forward(x, {});
    if (pass != Pass::fwd) {
      const Tensor dx = conv.backward(dy, std::move(r.ctx));
      benchmark::DoNotOptimize(dx.data());
    }
    benchmark::DoNotOptimize(r.output.data());
  });
}

/// Conv3d forward + backward (input, weight and bias gradients) at batch n, cin → cout on d³,
/// k³ kernel, stride 1, padding pad, with the given host backend.
void bm_conv3d(benchmark::State& state, Index n, Index cin, Index cout, Index d, Index k, Index pad,
               tessera::nn::ConvBackend backend) {
  tessera::nn::Conv3d conv("conv", {cin, d, d, d},
                           tessera::nn::ConvOptions{cout, {k}, {1}, {pad}, true, backend});
  conv.initialize(1);
  const Shape out = conv.output_shape({cin, d, d, d});
  const Tensor x = random_tensor("x", {n, cin, d, d, d}, 3);
  const Tensor dy = random_tensor("dy", tessera::nn::batch_shape(n, out), 4);
  const double fwd =
      2.0 * static_cast<double>(n * cout * out[1] * out[2] * out[3] * cin * k * k * k);
  run_timed(state, 3.0 * fwd, [&] {
    tessera::nn::ForwardResult r = conv.forward(x, {});
    const Tensor dx = conv.backward(dy, std::move(r.ctx));
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(r.output.data());
  });
}

/// The oneDNN kernel alone (no layer: no output or gradient allocation per call) with the given
/// options, forward + backward (with or without the input gradient).
void bm_dnnl_format(benchmark::State& state, Index n, Index cin, Index cout, Index hw, Index k,
                    Index pad, Pass pass, tessera::kernels::DnnlOptions options) {
  const auto g =
      tessera::kernels::ConvGeometry::make(cin, {1, hw, hw}, {1, k, k}, {1, 1, 1}, {0, pad, pad});
  tessera::kernels::DnnlConv conv("bench", g, cout, 2, true, options);
  const Shape out{n, cout, g.output[1], g.output[2]};
  const Tensor x = random_tensor("x", {n, cin, hw, hw}, 3);
  const Tensor w = random_tensor("w", {cout, cin, k, k}, 5);
  const Tensor b = random_tensor("b", {cout}, 6);
  const Tensor y("y", out);
  const Tensor dy = random_tensor("dy", out, 4);
  const Tensor dx = pass == Pass::fwd_bwd ? Tensor("dx", x.shape()) : Tensor();
  const Tensor dw("dw", w.shape());
  const Tensor db("db", b.shape());
  const double fwd = 2.0 * static_cast<double>(n * cout * out[2] * out[3] * cin * k * k);
  run_timed(state, conv_flops(pass, fwd), [&] {
    conv.forward(x, w, b, y);
    if (pass != Pass::fwd) {
      conv.backward(x, w, dy, dx, dw, db);
    }
    benchmark::DoNotOptimize(y.data());
  });
}

void register_all() {
  auto gemm = [](const std::string& what, GemmShape s) {
    const std::string name =
        fmt::format("sgemm/{}/m={}/n={}/k={}/{}{}", what, s.m, s.n, s.k,
                    s.ta == Trans::yes ? 'T' : 'N', s.tb == Trans::yes ? 'T' : 'N');
    benchmark::RegisterBenchmark(name.c_str(), bm_sgemm, s)

        ->Unit(benchmark::kMillisecond);
  };
  // (a) Raw SGEMM: the reference problem, then the shapes the layers call.
  gemm("reference", {Trans::no, Trans::no, 1024, 1024, 1024});
  struct Dense {
    Index n, in, out;
  };
  for (const Dense& d : {Dense{128, 784, 256}, Dense{128, 256, 128}, Dense{128, 1024, 1024}}) {
    const std::string tag = fmt::format("linear{}x{}", d.in, d.out);
    gemm(tag + "_fwd", {Trans::no, Trans::yes, d.n, d.out, d.in});  // y = x Wᵀ
    gemm(tag + "_dx", {Trans::no, Trans::no, d.n, d.in, d.out});    // dx = dy W
    gemm(tag + "_dW", {Trans::yes, Trans::no, d.out, d.in, d.n});   // dW = dyᵀ x
  }
  struct Conv {
    Index cin, cout, hw, k;
  };
  for (const Conv& c : {Conv{32, 64, 14, 3}, Conv{1, 32, 28, 3}}) {
    // Per sample: K = cin·k², P = hw² (stride 1, same padding).
    const Index kk = c.cin * c.k * c.k;
    const Index p = c.hw * c.hw;
    const std::string tag = fmt::format("conv{}x{}_{}", c.cin, c.cout, c.hw);
    gemm(tag + "_fwd", {Trans::no, Trans::no, c.cout, p, kk});    // y_n = W col_n
    gemm(tag + "_dW", {Trans::no, Trans::yes, c.cout, kk, p});    // dW += dy_n col_nᵀ
    gemm(tag + "_dcol", {Trans::yes, Trans::no, kk, p, c.cout});  // dcol_n = Wᵀ dy_n
  }

  // (b) Linear at batch 128: the Fashion-MNIST MLP (784 → 256 → 128) and a square 1024 layer.
  for (const Dense& d : {Dense{128, 784, 256}, Dense{128, 256, 128}, Dense{128, 1024, 1024}}) {
    for (const bool bwd : {false, true}) {
      const std::string name =
          fmt::format("linear/{}/N={}/in={}/out={}", bwd ? "fwd+bwd" : "fwd", d.n, d.in, d.out);
      benchmark::RegisterBenchmark(name.c_str(), bm_linear, d.n, d.in, d.out, bwd)

          ->Unit(benchmark::kMillisecond);
    }
  }

  // (c) Conv2d at batch 128: a small Fashion-MNIST CNN's second conv (32 → 64, 14×14) and its
  // first (1 → 32, 28×28), 3×3 kernels, padding 1, with each backend; the first conv also without
  // the input gradient, as in the network.
  std::vector<tessera::nn::ConvBackend> backends{tessera::nn::ConvBackend::im2col};
  if (tessera::kernels::dnnl_available()) {
    backends.push_back(tessera::nn::ConvBackend::dnnl);
  }
  for (const Conv& c : {Conv{32, 64, 14, 3}, Conv{1, 32, 28, 3}}) {
    for (const tessera::nn::ConvBackend backend : backends) {
      for (const Pass pass : {Pass::fwd, Pass::fwd_bwd, Pass::fwd_bwd_no_dx}) {
        if (pass == Pass::fwd_bwd_no_dx && c.cin != 1) {
          continue;
        }
        const std::string name =
            fmt::format("conv2d/{}/N=128/{}->{}/{}x{}/k={}/pad=1/{}", pass_name(pass), c.cin,
                        c.cout, c.hw, c.hw, c.k, tessera::nn::backend_name(backend));
        benchmark::RegisterBenchmark(name.c_str(), bm_conv2d, 128, c.cin, c.cout, c.hw, c.k, 1,
                                     pass, backend)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }

  // Conv3d at batch 8: 16 → 32 channels on 16³, 3×3×3, padding 1.
  for (const tessera::nn::ConvBackend backend : backends) {
    const std::string name = fmt::format("conv3d/fwd+bwd/N=8/16->32/16^3/k=3/pad=1/{}",
                                         tessera::nn::backend_name(backend));
    benchmark::RegisterBenchmark(name.c_str(), bm_conv3d, 8, 16, 32, 16, 3, 1, backend)
        ->Unit(benchmark::kMillisecond);
  }

  // (d) The oneDNN kernel alone with each format strategy (kernels::DnnlFormat) and algorithm
  // choice (DnnlOptions::auto_algorithm); the first conv both without the input gradient (as in
  // the network) and with it.
  if (tessera::kernels::dnnl_available()) {
    using tessera::kernels::DnnlFormat;
    using tessera::kernels::DnnlOptions;
    struct Variant {
      const char* name;
      DnnlOptions options;
    };
    const Variant variants[] = {{"automatic", {DnnlFormat::automatic, true}},
                                {"automatic_direct", {DnnlFormat::automatic, false}},
                                {"any_direct", {DnnlFormat::any, false}},
                                {"plain_direct", {DnnlFormat::plain, false}}};
    for (const Conv& c : {Conv{32, 64, 14, 3}, Conv{1, 32, 28, 3}}) {
      for (const Variant& v : variants) {
        for (const Pass pass : {Pass::fwd_bwd, Pass::fwd_bwd_no_dx}) {
          if (pass == Pass::fwd_bwd_no_dx && c.cin != 1) {
            continue;
          }
          const std::string name =
              fmt::format("dnnl_format/{}/N=128/{}->{}/{}x{}/k={}/pad=1/{}", pass_name(pass), c.cin,
                          c.cout, c.hw, c.hw, c.k, v.name);
          benchmark::RegisterBenchmark(name.c_str(), bm_dnnl_format, 128, c.cin, c.cout, c.hw, c.k,
                                       1, pass, v.options)
              ->Unit(benchmark::kMillisecond);
        }
        const auto g = tessera::kernels::ConvGeometry::make(c.cin, {1, c.hw, c.hw}, {1, c.k, c.k},
                                                            {1, 1, 1}, {0, 1, 1});
        tessera::kernels::DnnlConv conv("describe", g, c.cout, 2, true, v.options);
        std::string text = conv.describe(128);
        std::replace(text.begin(), text.end(), '\n', ';');
        benchmark::AddCustomContext(fmt::format("dnnl_{}->{}_{}", c.cin, c.cout, v.name), text);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  tessera::kernels::set_blas_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  double wall = 0.0;
  g_reference_flops = measure_reference(1024, 9, wall);
  const std::string reference = fmt::format(
      "OpenBLAS 1 thread, 1024^3 NN, median of 9: {:.1f} GFLOP/s (CPU time), {:.1f} "
      "GFLOP/s (wall clock)",
      g_reference_flops / 1e9, wall / 1e9);
  benchmark::AddCustomContext("reference_sgemm", reference);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
