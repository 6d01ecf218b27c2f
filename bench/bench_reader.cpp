// Reader benchmark: does the prefetching DatasetReader keep a training loop fed?
//
//   tessera-data import fashion-mnist -o data/fashion-mnist.h5
//   tessera-bench-reader [--data data/fashion-mnist.h5:/train] [--repeats 3]
//   mpiexec.mpich -n 2 tessera-bench-reader        (the global batch split over the ranks)
//
// A trainer-like loop: one epoch per run, every step taking the next batch from a shuffling
// DatasetReader (global batch 128) and doing the real work of the Fashion-MNIST MLP
// 784-256-128-10 (ReLU) on it — forward, softmax cross-entropy, backward with kernels::gemm, the
// gradients summed over the ranks (MPI_Allreduce, as data parallelism does) and an SGD step. One
// BLAS thread per rank, Kokkos Serial. Per run it records the loop's wall-clock time and the time
// next() spent waiting for data (DatasetReader::wait_seconds()); the reader's construction (which
// reads the whole split when cached) is timed apart. The configurations are run interleaved,
// `repeats` times, and the medians printed; per run, each figure is the maximum over the ranks.
//
// Configurations:  prefetch2        prefetch = 2 (the default)
//                  prefetch0        prefetch = 0: every read inside next()
//                  cache            whole split in memory at open, prefetch = 0
//                  cache+prefetch2  whole split in memory at open, prefetch = 2
#include "app_main.hpp"
#include "median.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/kernels/elementwise.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/nn/loss.hpp"

#include <fmt/format.h>
#include <mpi.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {
using tessera::Index;
using tessera::Tensor;
using tessera::bench::median;
using tessera::kernels::ActivationKind;
using tessera::kernels::Trans;

struct Config {
  const char* name;
  int prefetch;
  bool cache;
};
constexpr std::array<Config, 4> kConfigs{{{"prefetch2", 2, false},
                                          {"prefetch0", 0, false},
                                          {"cache", 0, true},
                                          {"cache+prefetch2", 2, true}}};

// The MLP 784-256-128-10. Parameters and gradients each live in one flat buffer, so that one
// MPI_Allreduce sums every gradient and one loop applies SGD.
class Mlp {
 public:
  static constexpr std::array<Index, 4> kWidths{784, 256, 128, 10};

  explicit Mlp(std::uint64_t seed) {
    Index total = 0;
    for (size_t l = 0; l < 3; ++l) {
      total += kWidths[l + 1] * kWidths[l] + kWidths[l + 1];
    }
    m_params.assign(static_cast<size_t>(total), 0.0F);
    m_grads.assign(static_cast<size_t>(total), 0.0F);
    // PyTorch's default: weight and bias U(-1/sqrt(in), 1/sqrt(in)).
    std::mt19937_64 gen(seed);
    size_t at = 0;
    for (size_t l = 0; l < 3; ++l) {
      const auto bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kWidths[l])));
      std::uniform_real_distribution<float> u(-bound, bound);
      const auto count = static_cast<size_t>(kWidths[l + 1] * kWidths[l] + kWidths[l + 1]);
      for (size_t i = 0; i < count; ++i) {
        m_params[at + i] = u(gen);
      }
      m_offset[l] = at;
      at += count;
    }
  }

  // One step on this rank's `n` samples of a global batch of `global`; x: (n, 784). Returns this
  // rank's share of the loss and its correct predictions.
  tessera::nn::LossOutput step(const Tensor& x, const tessera::IntView& labels, Index global,
                               float lr) {
    const Index n = x.dim(0);
    const Tensor flat = x.reshaped({n, kWidths[0]});
    // Forward. a[l] is layer l's input: a[0] = x, a[1], a[2] the ReLU outputs.
    std::array<Tensor, 3> a{flat, Tensor("Mlp::a1", {n, kWidths[1]}),
                            Tensor("Mlp::a2", {n, kWidths[2]})};
    const Tensor logits("Mlp::logits", {n, kWidths[3]});
    for (size_t l = 0; l < 3; ++l) {
      const Tensor& out = l < 2 ? a[l + 1] : logits;
      affine(l, a[l], out);
      if (l < 2) {
        tessera::kernels::activation_forward(ActivationKind::relu, out, out);
      }
    }
    tessera::nn::LossOutput loss = tessera::nn::softmax_cross_entropy(logits, labels, global);

    // Backward: dW = dyᵀ · x, db = Σ_n dy, dx = dy · W, then through the ReLU (saved: its output).
    std::fill(m_grads.begin(), m_grads.end(), 0.0F);
    Tensor dy = loss.grad;
    for (size_t l = 3; l-- > 0;) {
      const Index in = kWidths[l];
      const Index out = kWidths[l + 1];
      float* dw = m_grads.data() + m_offset[l];
      float* db = dw + out * in;
      tessera::kernels::gemm(Trans::yes, Trans::no, out, in, n, 1.0F, dy.data(), out, a[l].data(),
                             in, 0.0F, dw, in);
      for (Index i = 0; i < n; ++i) {
        for (Index o = 0; o < out; ++o) {
          db[o] += dy.data()[i * out + o];
        }
      }
      if (l > 0) {
        const Tensor dx("Mlp::dx", {n, in});
        tessera::kernels::gemm(Trans::no, Trans::no, n, in, out, 1.0F, dy.data(), out,
                               m_params.data() + m_offset[l], in, 0.0F, dx.data(), in);
        tessera::kernels::activation_backward(ActivationKind::relu, a[l], dx, dx);
        dy = dx;
      }
    }
    // The gradients of the global mean: the sum over the ranks.
    MPI_Allreduce(MPI_IN_PLACE, m_grads.data(), static_cast<int>(m_grads.size()), MPI_FLOAT,
                  MPI_SUM, MPI_COMM_WORLD);
    for (size_t i = 0; i < m_params.size(); ++i) {
      m_params[i] -= lr * m_grads[i];
    }
    return loss;
  }

 private:
  // out (n, width[l+1]) = in (n, width[l]) · Wᵀ + b.
  void affine(size_t l, const Tensor& in, const Tensor& out) const {
    const Index n = in.dim(0);
    const Index k = kWidths[l];
    const Index m = kWidths[l + 1];
    const float* w = m_params.data() + m_offset[l];
    const float* b = w + m * k;
    float* y = out.data();
    for (Index i = 0; i < n; ++i) {
      std::copy_n(b, m, y + i * m);
    }
    tessera::kernels::gemm(Trans::no, Trans::yes, n, m, k, 1.0F, in.data(), k, w, k, 1.0F, y, m);
  }

  std::vector<float> m_params;
  std::vector<float> m_grads;
  std::array<size_t, 3> m_offset{};
};

struct RunResult {
  std::int64_t steps = 0;
  double open_seconds = 0.0;
  double seconds = 0.0;
  double wait_seconds = 0.0;
  double loss = 0.0;  // mean training loss over the epoch
  double accuracy = 0.0;
};

double max_over_ranks(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

double sum_over_ranks(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return v;
}

RunResult run_epoch(const std::string& spec, const Config& config, Index batch, std::uint64_t seed,
                    float lr) {
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  tessera::io::ReaderOptions options;
  options.batch = batch;
  options.seed = seed;
  options.shuffle = true;
  options.prefetch = config.prefetch;
  options.cache = config.cache;
  options.data_rank = rank;
  options.data_size = size;

  Mlp model(seed);
  MPI_Barrier(MPI_COMM_WORLD);
  const tessera::Stopwatch open;
  tessera::io::DatasetReader reader(spec, options);
  RunResult r;
  r.open_seconds = max_over_ranks(open.seconds());
  if (reader.info().task != tessera::io::Task::classification ||
      tessera::numel(reader.sample_shape()) != Mlp::kWidths[0]) {
    throw tessera::input_error(
        fmt::format("{}: the benchmark needs 784-value classification samples (Fashion-MNIST), "
                    "the split holds {} samples",
                    spec, tessera::to_string(reader.sample_shape())))
        .mark_on_all_ranks();
  }

  MPI_Barrier(MPI_COMM_WORLD);
  const tessera::Stopwatch loop;
  double loss = 0.0;
  Index correct = 0;
  const std::int64_t steps = reader.batches_per_epoch();
  for (std::int64_t s = 0; s < steps; ++s) {
    const tessera::io::Batch b = reader.next();
    const tessera::nn::LossOutput out = model.step(b.x, b.labels, b.global_size, lr);
    loss += out.loss;
    correct += out.correct;
  }
  const double seconds = loop.seconds();
  r.steps = steps;
  r.seconds = max_over_ranks(seconds);
  r.wait_seconds = max_over_ranks(reader.wait_seconds());
  r.loss = sum_over_ranks(loss) / static_cast<double>(steps);
  r.accuracy =
      sum_over_ranks(static_cast<double>(correct)) / static_cast<double>(reader.info().samples);
  return r;
}

// The 1-minute load average, to tell a quiet machine from a busy one (Linux; "?" elsewhere).
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  return in >> one ? one : std::string("?");
}

}  // namespace

int main(int argc, char** argv) {
  return tessera::apps::run_main(argc, argv, [](int ac, char** av) {
    CLI::App app{"tessera-bench-reader: time a training loop fed by the DatasetReader"};
    std::string spec = "data/fashion-mnist.h5:/train";
    Index batch = 128;
    int repeats = 3;
    std::uint64_t seed = 1;
    float lr = 0.05F;
    std::vector<std::string> only;
    app.add_option("--data", spec, "dataset file:/split")->capture_default_str();
    app.add_option("--batch", batch, "global batch size")->capture_default_str();
    app.add_option("--repeats", repeats, "runs per configuration (medians reported)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--seed", seed, "shuffle and initialisation seed")->capture_default_str();
    app.add_option("--lr", lr, "SGD learning rate")->capture_default_str();
    app.add_option("--config", only,
                   "configurations to run (prefetch2, prefetch0, cache, cache+prefetch2; "
                   "default all)");
    int rank = 0;
    int size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (const auto code = tessera::apps::parse_command_line(app, ac, av)) {
      return *code;
    }
    std::vector<Config> configs;
    for (const Config& c : kConfigs) {
      if (only.empty() || std::find(only.begin(), only.end(), c.name) != only.end()) {
        configs.push_back(c);
      }
    }
    if (configs.empty()) {
      if (rank == 0) {
        std::fprintf(stderr, "error: --config names no known configuration\n");
      }
      return 2;
    }
    tessera::kernels::set_blas_threads(1);
    if (rank == 0) {
      std::printf(
          "# tessera-bench-reader: %s, global batch %lld, %d rank(s), %d repeat(s), load "
          "average %s\n",
          spec.c_str(), static_cast<long long>(batch), size, repeats, load_average().c_str());
      std::printf("%-16s %3s %6s %8s %8s %8s %7s %8s %6s\n", "config", "run", "steps", "open_s",
                  "loop_s", "wait_s", "wait%", "loss", "acc");
    }
    std::vector<std::vector<RunResult>> results(configs.size());
    for (int rep = 0; rep < repeats; ++rep) {
      for (size_t c = 0; c < configs.size(); ++c) {
        const RunResult r = run_epoch(spec, configs[c], batch, seed, lr);
        results[c].push_back(r);
        if (rank == 0) {
          std::printf("%-16s %3d %6lld %8.3f %8.3f %8.4f %6.2f%% %8.4f %6.4f\n", configs[c].name,
                      rep, static_cast<long long>(r.steps), r.open_seconds, r.seconds,
                      r.wait_seconds, 100.0 * r.wait_seconds / r.seconds, r.loss, r.accuracy);
          std::fflush(stdout);
        }
      }
    }
    if (rank == 0) {
      std::printf("\nMedians of %d run(s), %d rank(s) (load average now %s):\n\n", repeats, size,
                  load_average().c_str());
      std::printf(
          "| configuration | ranks | steps | open (s) | loop (s) | wait in next() (s) | "
          "wait fraction |\n");
      std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
      for (size_t c = 0; c < configs.size(); ++c) {
        std::vector<double> open;
        std::vector<double> loop;
        std::vector<double> wait;
        std::vector<double> fraction;
        for (const RunResult& r : results[c]) {
          open.push_back(r.open_seconds);
          loop.push_back(r.seconds);
          wait.push_back(r.wait_seconds);
          fraction.push_back(r.wait_seconds / r.seconds);
        }
        std::printf("| %s | %d | %lld | %.3f | %.3f | %.4f | %.2f%% |\n", configs[c].name, size,
                    static_cast<long long>(results[c][0].steps), median(open), median(loop),
                    median(wait), 100.0 * median(fraction));
      }
    }
    return 0;
  });
}
