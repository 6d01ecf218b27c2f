// data_fixture — damages copies of datasets the way tests/e2e/bad_decks.sh needs them:
//   data_fixture set FILE DATASET INDEX VALUE   element INDEX (row-major) of DATASET ("/train/y")
//                                                becomes VALUE ("nan", "inf" and integers too),
//                                                converted to the stored type; checksums untouched
//   data_fixture unsum FILE [NAME]              removes every checksum (a file from before them),
//                                                or only those of the data sets called NAME ("y")
//   data_fixture empty FILE                     writes a classification split /train of 0 samples
//                                                of (1, 28, 28)
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace io = tessera::io;

namespace {
void set(const std::string& file, const std::string& dataset, hsize_t index, double value) {
  io::File f = io::File::open_serial_rw(file);
  {
    const io::Dataset d = f.root().open_dataset(dataset.substr(1));
    const std::vector<hsize_t> shape = d.shape();
    io::Box box{std::vector<hsize_t>(shape.size(), 0), std::vector<hsize_t>(shape.size(), 1)};
    for (size_t k = shape.size(); k-- > 0;) {
      box.offset[k] = index % shape[k];
      index /= shape[k];
    }
    d.write(box, io::ElementType::f64, &value, false);
  }
  f.close();
}

void unsum(const std::string& file, const std::string& only) {
  io::File f = io::File::open_serial_rw(file);
  {
    const io::Group root = f.root();
    for (const std::string& split : root.members()) {
      const io::Group g = root.open_group(split);
      for (const std::string& name : g.members()) {
        if (!only.empty() && name != only) {
          continue;
        }
        const io::Dataset d = g.open_dataset(name);
        const std::lock_guard<std::recursive_mutex> lock(io::hdf5_mutex());
        for (const char* a : {io::kChecksum, io::kChecksumRows}) {
          if (H5Aexists(d.id(), a) > 0) {
            H5Adelete(d.id(), a);
          }
        }
      }
    }
  }
  f.close();
}

void empty(const std::string& file) {
  io::File f = io::File::create(file, MPI_COMM_SELF);
  {
    const io::Group root = f.root();
    root.attributes().set("format", std::string(io::kDatasetFormat));
    root.attributes().set("format_version", io::kDatasetVersion);
    const io::Group g = root.create_group("train");
    g.attributes().set("task", std::string("classification"));
    (void)g.create_dataset("x", io::ElementType::u8, {0, 1, 28, 28});
    (void)g.create_dataset("y", io::ElementType::i32, {0});
  }
  f.close();
}
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const std::vector<std::string> a(argv + 1, argv + argc);
  int code = 0;
  try {
    if (a.size() == 5 && a[0] == "set") {
      set(a[1], a[2], std::stoull(a[3]), std::strtod(a[4].c_str(), nullptr));
    } else if ((a.size() == 2 || a.size() == 3) && a[0] == "unsum") {
      unsum(a[1], a.size() == 3 ? a[2] : "");
    } else if (a.size() == 2 && a[0] == "empty") {
      empty(a[1]);
    } else {
      std::fprintf(
          stderr,
          "usage: data_fixture set FILE DATASET INDEX VALUE | unsum FILE [NAME] | empty FILE\n");
      code = 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_fixture: %s\n", e.what());
    code = 1;
  }
  MPI_Finalize();
  return code;
}
