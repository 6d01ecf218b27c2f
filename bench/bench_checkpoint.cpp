// tessera-bench-checkpoint: how fast a checkpoint is written and read back (io::save_checkpoint,
// io::load_checkpoint: collective parallel HDF5, checksums, fsync and the commit protocol
// included), for a model of about --mib MiB of parameters plus SGD momentum state.
//
//   mpiexec.mpich -n 1 build/bin/tessera-bench-checkpoint --dir data/bench-ckpt --mib 256
//
// Prints one line per round: "round R: wrote B bytes in S s (W MB/s); read in S s (R MB/s)".
// bench/ckpt_vs_dd.sh alternates it with dd to compare against the disk's raw write rate.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/parallel/data_parallel.hpp"

#include <fmt/format.h>
#include <mpi.h>
#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

using namespace tessera;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  Kokkos::initialize(argc, argv);
  int code = 0;
  {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::string dir = "data/bench-ckpt";
    double mib = 256.0;
    int rounds = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i];
      if (a == "--dir") {
        dir = argv[i + 1];
      } else if (a == "--mib") {
        mib = std::atof(argv[i + 1]);
      } else if (a == "--rounds") {
        rounds = std::max(1, std::atoi(argv[i + 1]));
      }
    }
    try {
      // Square dense layers of 4096 × 4096 (64 MiB of weights each) until `mib` is reached.
      const Index width = 4096;
      const int layers = std::max(1, static_cast<int>(std::lround(mib / 64.0)));
      nn::Sequential model("model", {width});
      for (int l = 0; l < layers; ++l) {
        nn::LinearOptions o;
        o.out = width;
        model.add(std::make_unique<nn::Linear>(fmt::format("fc{}", l), model.output_shape(), o));
      }
      model.initialize(1);
      comm::MpiCommunicator data(MPI_COMM_WORLD, "data");
      parallel::DataParallel dp(model, data, {});
      optim::Sgd sgd(optim::SgdOptions{0.9F, false, 0.0F});
      for (nn::Parameter* p : dp.parameters()) {  // momentum state that is not all zeros
        p->grad.fill(0.01F);
      }
      dp.step(sgd, 0.1);
      for (int r = 1; r <= rounds; ++r) {
        io::CheckpointInfo info;
        info.step = r;
        info.total_steps = rounds;
        info.optimizer = sgd.kind();
        info.optimizer_steps = sgd.steps();
        const io::SaveReport w = io::save_checkpoint(dir, info, dp.registry(sgd), data, 1);
        MPI_Barrier(MPI_COMM_WORLD);
        const Stopwatch clock;
        io::load_checkpoint(w.file, dp.registry(sgd), sgd.kind(), data);
        MPI_Barrier(MPI_COMM_WORLD);
        const double read_s = clock.seconds();
        const double bytes = static_cast<double>(std::filesystem::file_size(w.file));
        if (rank == 0) {
          std::printf(
              "round %d: wrote %.0f bytes in %.3f s (%.1f MB/s); read in %.3f s (%.1f MB/s)\n", r,
              bytes, w.seconds, bytes / w.seconds / 1e6, read_s, bytes / read_s / 1e6);
          std::fflush(stdout);
        }
      }
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank == 0) {
        std::filesystem::remove_all(dir);
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      code = 1;
    }
  }
  Kokkos::finalize();
  MPI_Finalize();
  return code;
}
