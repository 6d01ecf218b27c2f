// The dataset inspector and reader: the input is a dataset file's bytes. Each is listed as
// `tessera-data ls --stats` does, inspected as `tessera check` does, and, when it passes, read for
// one batch of every split that the reader accepts (one rank, no prefetch thread).
#include "fuzz.hpp"
#include "tessera-data/commands.hpp"
#include "tessera/io/dataset.hpp"

#include <mpi.h>
#include <Kokkos_Core.hpp>

namespace {
void finish() {
  Kokkos::finalize();
  MPI_Finalize();
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  Kokkos::initialize();
  std::atexit(finish);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string file = tessera::fuzz::write_scratch("data.h5", data, size);
  tessera::fuzz::expect_only_errors("tessera-data ls",
                                    [&] { tessera::data::list_file(file, /*statistics=*/true); });
  for (const char* split : {"/train", "/test", "/validation"}) {
    tessera::fuzz::expect_only_errors("io::inspect_split", [&] {
      const tessera::io::SplitInfo info = tessera::io::inspect_split(file, split);
      tessera::io::ReaderOptions o;
      o.batch = 2;
      o.prefetch = 0;
      o.context = info.task == tessera::io::Task::language_modeling ? 8 : 0;
      tessera::io::DatasetReader reader(file + ":" + split, o);
      (void)reader.next();
    });
  }
  return 0;
}
