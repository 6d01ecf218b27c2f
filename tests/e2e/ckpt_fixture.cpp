// ckpt_fixture DIR — writes the small checkpoints tests/e2e/ckpt_cli.sh runs tessera-ckpt on
// (tests/support/ckpt_fixture.hpp), so that the script does not need a trained model:
//   DIR/good.h5       SGD with momentum, seed 1, step 100      DIR/same.h5   the same tensors
//   DIR/other.h5      seed 2 (every tensor differs)            DIR/adamw.h5  AdamW state
//   DIR/damaged.h5    good.h5 with one element of /model/linear1/weight changed after its checksum
//   DIR/nan.h5        good.h5 with a NaN in /model/linear1/weight, its checksum agreeing
//   DIR/v2.h5         format_version 2
//   DIR/run/ckpt/     ckpt-00000100.h5, ckpt-00000200.h5, latest → the second, and
//                     .ckpt-00000300.h5.partial (a save in progress)
#include "support/ckpt_fixture.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (argc != 2) {
    std::fprintf(stderr, "usage: ckpt_fixture DIR\n");
    MPI_Finalize();
    return 2;
  }
  namespace t = tessera::testing;
  const std::string dir = argv[1];
  std::filesystem::create_directories(dir + "/run/ckpt");
  t::write_fixture(dir + "/good.h5", t::make_fixture(1));
  t::FixtureCheckpoint same = t::make_fixture(1);
  same.root["created"] = std::string("2026-11-28T09:00:00Z");
  t::write_fixture(dir + "/same.h5", same);
  t::write_fixture(dir + "/other.h5", t::make_fixture(2));
  t::write_fixture(dir + "/adamw.h5", t::make_fixture(1, "adamw"));
  t::FixtureCheckpoint damaged = t::make_fixture(1);
  t::FixtureTensor& w = damaged.tensor("/model/linear1/weight");
  w.checksum = t::fixture_checksum(w.values);
  w.values[5] += 1.0F;
  t::write_fixture(dir + "/damaged.h5", damaged);
  t::FixtureCheckpoint nan = t::make_fixture(1);  // a NaN its checksum agrees with
  t::FixtureTensor& v = nan.tensor("/model/linear1/weight");
  v.values[3] = std::nanf("");
  v.checksum = t::fixture_checksum(v.values);
  t::write_fixture(dir + "/nan.h5", nan);
  t::FixtureCheckpoint v2 = t::make_fixture(1);
  v2.root["format_version"] = std::int64_t{2};
  t::write_fixture(dir + "/v2.h5", v2);
  t::write_fixture(dir + "/run/ckpt/ckpt-00000100.h5", t::make_fixture(1, "sgd", 0.9, 100));
  t::write_fixture(dir + "/run/ckpt/ckpt-00000200.h5", t::make_fixture(3, "sgd", 0.9, 200));
  std::ofstream(dir + "/run/ckpt/latest") << "ckpt-00000200.h5\n";
  std::ofstream(dir + "/run/ckpt/.ckpt-00000300.h5.partial") << "half a checkpoint";
  MPI_Finalize();
  return 0;
}
