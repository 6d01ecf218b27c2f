// tessera-bench-reduce: the data-parallel gradient reduction (parallel::DataParallel, buckets
// started from the backward hook) against one raw MPI_Allreduce of the same bytes, side by side in
// one run.
//
//   mpiexec.mpich -n 2 build/bench/tessera-bench-reduce [--models mlp,cnn,big] [--bucket-mb 4]
//                                                       [--reduce mpi,shared] [--reps 30] [--zero]
//
// For each model (the gradient tensors of inputs/fashion_mlp.toml, inputs/fashion_cnn.toml, or
// "big": 24 tensors of 2^20 floats, 96 MiB) and each bucket size, one repetition is: a barrier,
// the backward hook called for every layer in backward order then finish_reduction() (bucketed),
// and, alternating with it, a barrier and one in-place MPI_Allreduce of the whole gradient (raw).
// Reported: the median time of each over the repetitions (rank 0's clock, after the barrier), the
// bytes per second of each and their ratio. --reduce lists DataParallel's reductions to measure
// (parallel.reduce: "mpi", MPI's non-blocking collectives; "shared", the node's shared memory).
// --zero reduces with ZeRO-1's reduce-scatter (its allgather of parameters comes after the
// optimizer and is not included).
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/parallel/data_parallel.hpp"

#include <fmt/format.h>
#include <mpi.h>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace tessera;

namespace {

// A layer that only holds parameters of given sizes: the reduction never looks at the math.
class Blob final : public nn::Layer {
 public:
  Blob(std::string name, Index size) : Layer(std::move(name)) {
    add_parameter("weight", {size}, InitSpec{});
  }
  const char* kind() const override { return "blob"; }
  Shape output_shape(const Shape& input) const override { return input; }
  nn::ForwardResult forward(const Tensor& x, const nn::ForwardOptions&) override { return {x, {}}; }
  Tensor backward(const Tensor& dy, nn::Context&&) override { return dy; }
};

std::vector<Index> model_tensors(const std::string& name) {
  if (name == "mlp") {  // 784-256-128-10
    return {784 * 256, 256, 256 * 128, 128, 128 * 10, 10};
  }
  if (name == "cnn") {  // conv 1→32, conv 32→64, fc 3136→128, fc 128→10
    return {32 * 9, 32, 64 * 32 * 9, 64, 3136 * 128, 128, 128 * 10, 10};
  }
  if (name == "big") {
    return std::vector<Index>(24, Index{1} << 20);
  }
  throw Error(fmt::format("--models: unknown model '{}' (known: mlp, cnn, big)", name));
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    out.push_back(item);
  }
  return out;
}

// Every (bucket size, reduction) pair, bucket sizes outermost.
std::vector<std::pair<std::string, std::string>> grid(const std::vector<std::string>& buckets,
                                                      const std::vector<std::string>& reductions) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& b : buckets) {
    for (const std::string& r : reductions) {
      out.emplace_back(b, r);
    }
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Kokkos::initialize(argc, argv);
  int code = 0;
  {
    int rank = 0;
    int size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    std::string models = "mlp,cnn,big";
    std::string buckets = "4";
    std::string reductions = "mpi,shared";
    int reps = 30;
    bool zero = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--models" && i + 1 < argc) {
        models = argv[++i];
      } else if (a == "--bucket-mb" && i + 1 < argc) {
        buckets = argv[++i];
      } else if (a == "--reduce" && i + 1 < argc) {
        reductions = argv[++i];
      } else if (a == "--reps" && i + 1 < argc) {
        reps = std::max(1, std::atoi(argv[++i]));
      } else if (a == "--zero") {
        zero = true;
      } else {
        if (rank == 0) {
          std::fprintf(stderr,
                       "usage: tessera-bench-reduce [--models mlp,cnn,big] [--bucket-mb 1,4,16] "
                       "[--reduce mpi,shared] [--reps N] [--zero]\n");
        }
        code = 2;
        break;
      }
    }
    try {
      comm::MpiCommunicator data(MPI_COMM_WORLD, "data");
      if (code == 0 && rank == 0) {
        std::printf("# %d ranks, %d repetitions, %s; medians\n", size, reps,
                    zero ? "ZeRO-1 reduce-scatter" : "allreduce");
        std::printf("%-5s %9s %9s %7s %7s %11s %11s %10s %10s %7s\n", "model", "MiB", "bucket_mb",
                    "buckets", "reduce", "bucketed_ms", "raw_ms", "bucket_GB/s", "raw_GB/s",
                    "ratio");
      }
      for (const std::string& m : code == 0 ? split_list(models) : std::vector<std::string>{}) {
        for (const auto& [b, how] : grid(split_list(buckets), split_list(reductions))) {
          nn::Sequential model("model", {1});
          const std::vector<Index> tensors = model_tensors(m);
          for (size_t t = 0; t < tensors.size(); ++t) {
            model.add(std::make_unique<Blob>(fmt::format("t{}", t), tensors[t]));
          }
          parallel::DataParallelOptions o;
          o.bucket_mb = std::stod(b);
          o.zero = zero;
          o.reduce = parallel::reduce_from_name(how);
          parallel::DataParallel dp(model, data, o);
          Index total = 0;
          for (Index n : tensors) {
            total += n;
          }
          std::vector<float> raw(static_cast<size_t>(total), 1.0F);
          std::vector<double> t_bucketed;
          std::vector<double> t_raw;
          for (int r = -3; r < reps; ++r) {  // 3 warm-up repetitions
            dp.begin_step();
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (size_t l = model.size(); l-- > 0;) {
              dp.on_backward(model[l]);
            }
            dp.finish_reduction();
            const double bucketed = MPI_Wtime() - t0;
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(total), MPI_FLOAT, MPI_SUM,
                          MPI_COMM_WORLD);
            const double plain = MPI_Wtime() - t0;
            if (r >= 0) {
              t_bucketed.push_back(bucketed);
              t_raw.push_back(plain);
            }
          }
          const double bytes = static_cast<double>(total) * 4.0;
          const double tb = median(t_bucketed);
          const double tr = median(t_raw);
          if (rank == 0) {
            std::printf("%-5s %9.2f %9s %7d %7s %11.3f %11.3f %10.2f %10.2f %7.3f\n", m.c_str(),
                        bytes / 1048576.0, b.c_str(), dp.bucket_count(),
                        dp.shared_reduction() ? "shared" : "mpi", tb * 1e3, tr * 1e3,
                        bytes / tb / 1e9, bytes / tr / 1e9, tr / tb);
            std::fflush(stdout);
          }
        }
      }
    } catch (const Error& e) {
      if (rank == 0) {
        std::fprintf(stderr, "error: %s\n", e.what());
      }
      code = 2;
    }
  }
  Kokkos::finalize();
  MPI_Finalize();
  return code;
}
