// The checkpoint loader: the input is a checkpoint file's bytes. Each is verified as
// `tessera-ckpt verify` does, listed as `tessera-ckpt ls` does, and loaded into the model of the
// seed corpus's deck as `tessera generate` and a restart do (one rank).
#include "fuzz.hpp"
#include "tessera-ckpt/ckpt_commands.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/parallel/registry.hpp"
#include "tessera/train/trainer.hpp"

#include <mpi.h>
#include <Kokkos_Core.hpp>

#include <memory>

namespace {

std::unique_ptr<tessera::comm::ProcessGrid> g_grid;
std::unique_ptr<tessera::nn::Sequential> g_model;

void finish() {
  g_model.reset();
  g_grid.reset();
  Kokkos::finalize();
  MPI_Finalize();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  Kokkos::initialize();
  std::atexit(finish);
  // The model of tests/fuzz/corpus/checkpoint/*.h5, as tests/fuzz/make_corpus.sh wrote them.
  const tessera::deck::Deck d = tessera::deck::load(TESSERA_FUZZ_CHECKPOINT_MODEL);
  g_grid = std::make_unique<tessera::comm::ProcessGrid>(
      MPI_COMM_WORLD, tessera::comm::GridSpec{1, 1, 1, 1, {1, 1}});
  g_model = tessera::train::build_model(d, tessera::nn::BuildContext(*g_grid));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string file = tessera::fuzz::write_scratch("ckpt-1.h5", data, size);
  tessera::fuzz::expect_only_errors("tessera-ckpt verify",
                                    [&] { (void)tessera::ckpt::verify(MPI_COMM_WORLD, {file}); });
  tessera::fuzz::expect_only_errors("tessera-ckpt ls",
                                    [&] { (void)tessera::ckpt::ls(MPI_COMM_WORLD, file); });
  tessera::fuzz::expect_only_errors("io::load_checkpoint", [&] {
    (void)tessera::io::load_checkpoint(
        file, tessera::parallel::model_registry(*g_model, g_grid->place()), "", g_grid->trainer());
  });
  return 0;
}
