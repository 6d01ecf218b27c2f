// ckpt_fixture DIR — writes the small checkpoints tests/e2e/ckpt_cli.sh runs tessera-ckpt on
// (tests/support/ckpt_fixture.hpp), so that the script does not need a trained model:
//   DIR/good.h5       SGD with momentum, seed 1, step 100      DIR/same.h5   the same tensors
//   DIR/other.h5      seed 2 (every tensor differs)            DIR/adamw.h5  AdamW state
//   DIR/damaged.h5    good.h5 with one element of /model/linear1/weight changed after its checksum
//   DIR/nan.h5        good.h5 with a NaN in /model/linear1/weight, its checksum agreeing
//   DIR/v2.h5         format_version 2
//   DIR/run/ckpt/     ckpt-00000100.h5, ckpt-00000200.h5, latest → the second, and
//                     .ckpt-00000300.h5.partial (a save in progress)
//   DIR/huge.h5       good.h5 with a parameter /model/linear9/weight and its momentum of 2^38
//                     float32 (1 TiB) each, chunked and never written: the file stores none of it
//   DIR/renamed/ckpt-00000500.h5   the checkpoint of step 200 under another step's name
// ckpt_fixture DIR --big MIB — writes DIR/big.h5 alone: good.h5 with a buffer /model/big/values of
// MIB MiB (a checkpoint that takes tessera-ckpt a while: tests/e2e/tool_signals.sh).
#include "support/ckpt_fixture.hpp"

#include <hdf5.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const bool big = argc == 4 && std::string(argv[2]) == "--big";
  if (argc != 2 && !big) {
    std::fprintf(stderr, "usage: ckpt_fixture DIR [--big MIB]\n");
    MPI_Finalize();
    return 2;
  }
  namespace t = tessera::testing;
  const std::string dir = argv[1];
  if (big) {
    t::FixtureCheckpoint c = t::make_fixture(1);
    t::FixtureTensor b;
    b.path = "/model/big/values";
    const std::size_t n = std::stoul(argv[3]) << 18;  // 4-byte elements
    b.shape = {n};
    b.values.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      b.values[i] = static_cast<float>(i % 1000) * 1e-3F;
    }
    b.kind = "buffer";
    c.tensors.push_back(std::move(b));
    c.root["tensors"] = static_cast<std::int64_t>(c.tensors.size());
    std::filesystem::create_directories(dir);
    t::write_fixture(dir + "/big.h5", c);
    MPI_Finalize();
    return 0;
  }
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
  std::filesystem::create_directories(dir + "/renamed");
  std::filesystem::copy_file(dir + "/run/ckpt/ckpt-00000200.h5", dir + "/renamed/ckpt-00000500.h5");
  // huge.h5, by HDF5's C API: the io library allocates every dataset's storage at creation.
  std::filesystem::copy_file(dir + "/good.h5", dir + "/huge.h5");
  const hid_t file = H5Fopen((dir + "/huge.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hsize_t shape = hsize_t{1} << 38;
  const hsize_t chunk = hsize_t{1} << 20;
  const hid_t space = H5Screate_simple(1, &shape, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, &chunk);
  const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  const hid_t str = H5Tcopy(H5T_C_S1);
  H5Tset_size(str, H5T_VARIABLE);
  const hid_t scalar = H5Screate(H5S_SCALAR);
  auto set_string = [&](hid_t object, const char* name, const char* value) {
    const hid_t a = H5Acreate2(object, name, str, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, str, &value);
    H5Aclose(a);
  };
  for (const auto& [path, kind] :
       {std::pair<const char*, const char*>{"model/linear9/weight", "parameter"},
        {"optimizer/linear9/weight/momentum", "state"}}) {
    const hid_t d = H5Dcreate2(file, path, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT);
    set_string(d, "kind", kind);
    set_string(d, "checksum", "0x0000000000000000");
    H5Dclose(d);
  }
  const std::int64_t tensors = 11;
  H5Adelete(file, "tensors");
  const hid_t a = H5Acreate2(file, "tensors", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &tensors);
  H5Aclose(a);
  H5Sclose(scalar);
  H5Tclose(str);
  H5Pclose(lcpl);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(file);
  MPI_Finalize();
  return 0;
}
