// tessera-data import fashion-mnist: the HDF5 file holds exactly the bytes of Debian's IDX files
// (read here independently with zlib and the HDF5 C API), and damaged IDX files give one clear
// error on every rank.
#include "commands.hpp"
#include "tessera/core/error.hpp"
#include "tessera/io/dataset.hpp"

#include "support/mpi.hpp"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <vector>

namespace {
using tessera::testing::world_rank;
using tessera::testing::world_size;

const std::string kSource = "/usr/share/datasets/fashion-mnist";

std::vector<unsigned char> gunzip(const std::string& path) {
  std::vector<unsigned char> out;
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    ADD_FAILURE() << "cannot open " << path;
    return out;
  }
  unsigned char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) {
    out.insert(out.end(), buf, buf + n);
  }
  gzclose(f);
  return out;
}

void gzip_to(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

std::vector<unsigned char> read_h5(const std::string& file, const std::string& dataset,
                                   hid_t mem_type, size_t element_size) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const hid_t s = H5Dget_space(d);
  std::vector<unsigned char> out(static_cast<size_t>(H5Sget_simple_extent_npoints(s)) *
                                 element_size);
  H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
  return out;
}

std::string shared_dir() {
  long pid = static_cast<long>(getpid());
  MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  return (std::filesystem::temp_directory_path() / ("tessera-import-test-" + std::to_string(pid)))
      .string();
}

}  // namespace

TEST(ImportFashionMnist, ReproducesTheIdxFilesExactly) {
  if (!std::filesystem::exists(kSource + "/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Debian's dataset-fashion-mnist is not installed (tools/setup.sh installs it)";
  }
  const std::string dir = shared_dir();
  tessera::data::ImportOptions o;
  o.output = dir + "/fashion-mnist.h5";
  tessera::data::import_fashion_mnist(o);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    EXPECT_FALSE(std::filesystem::exists(o.output + ".partial"));
    struct Split {
      const char* group;
      const char* images;
      const char* labels;
      size_t count;
    };
    for (const Split& s :
         {Split{"/train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000},
          Split{"/test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000}}) {
      const std::vector<unsigned char> images = gunzip(kSource + "/" + s.images);
      const std::vector<unsigned char> labels = gunzip(kSource + "/" + s.labels);
      ASSERT_EQ(images.size(), 16 + s.count * 784);
      ASSERT_EQ(labels.size(), 8 + s.count);
      const std::vector<unsigned char> x =
          read_h5(o.output, std::string(s.group) + "/x", H5T_NATIVE_UINT8, 1);
      EXPECT_TRUE(std::equal(x.begin(), x.end(), images.begin() + 16, images.end()))
          << s.group << "/x differs from " << s.images;
      const std::vector<unsigned char> y =
          read_h5(o.output, std::string(s.group) + "/y", H5T_NATIVE_INT32, 4);
      ASSERT_EQ(y.size(), 4 * s.count);
      for (size_t i = 0; i < s.count; ++i) {
        std::int32_t v = 0;
        std::memcpy(&v, &y[4 * i], 4);
        ASSERT_EQ(v, labels[8 + i]) << s.group << "/y[" << i << "]";
      }
    }
    std::filesystem::remove_all(dir);
  }
}

TEST(ImportFashionMnist, DamagedFilesGiveOneClearError) {
  const std::string dir = shared_dir() + "-bad";
  // A tiny but valid set: 3 images of 28x28 and 3 labels.
  std::vector<unsigned char> images{0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28};
  images.resize(16 + 3 * 784, 7);
  std::vector<unsigned char> labels{0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3};
  auto write_set = [&](const std::vector<unsigned char>& img,
                       const std::vector<unsigned char>& lab) {
    if (world_rank() == 0) {
      std::filesystem::create_directories(dir);
      for (const char* prefix : {"train", "t10k"}) {
        gzip_to(dir + "/" + prefix + "-images-idx3-ubyte.gz", img);
        gzip_to(dir + "/" + prefix + "-labels-idx1-ubyte.gz", lab);
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  auto import_error = [&]() -> std::string {
    tessera::data::ImportOptions o;
    o.source = dir;
    o.output = dir + "/out.h5";
    try {
      tessera::data::import_fashion_mnist(o);
    } catch (const tessera::Error& e) {
      EXPECT_TRUE(e.on_all_ranks());
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_FALSE(std::filesystem::exists(o.output));  // nothing half-written left as if good
      return e.what();
    }
    return "";
  };
  const std::string img = dir + "/train-images-idx3-ubyte.gz";
  const std::string lab = dir + "/train-labels-idx1-ubyte.gz";

  write_set(images, labels);
  EXPECT_EQ(import_error(), "");  // the valid set imports
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/out.h5"));
    std::filesystem::remove(dir + "/out.h5");
  }

  std::vector<unsigned char> truncated(images.begin(), images.end() - 100);
  write_set(truncated, labels);
  EXPECT_EQ(import_error(), img +
                                ": truncated: the data (2352 values) needs 2352 bytes, the file "
                                "ends after 2252");

  // Sizes from a damaged header: never allocated before the data is there.
  std::vector<unsigned char> huge = images;
  huge[4] = huge[5] = huge[6] = 0x7f;  // 2139062019 images of 28x28: 1.5 TiB
  write_set(huge, labels);
  EXPECT_EQ(import_error(), img +
                                ": truncated: the data (1677024622896 values) needs 1677024622896 "
                                "bytes, the file ends after 2352");
  std::vector<unsigned char> overflow = images;
  for (size_t k = 4; k < 16; ++k) {
    overflow[k] = 0xff;
  }
  write_set(overflow, labels);
  EXPECT_EQ(import_error(), img +
                                ": the header's sizes 4294967295 x 4294967295 x 4294967295 make "
                                "more than 2^64 values: the file is damaged");

  // The imported file verifies: its checksums are there and match (each rank its share).
  std::vector<unsigned char> varied = images;
  varied[16] = 0;  // a standard deviation > 0, which the reader needs
  write_set(varied, labels);
  EXPECT_EQ(import_error(), "");
  MPI_Barrier(MPI_COMM_WORLD);
  try {
    const tessera::io::SplitInfo info = tessera::io::inspect_split(dir + "/out.h5", "/train");
    EXPECT_TRUE(info.checksummed());
    EXPECT_EQ(info.samples, 3);
    (void)tessera::io::verify_split(info, {10, world_rank(), world_size()});
  } catch (const tessera::Error& e) {
    ADD_FAILURE() << e.what();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::filesystem::remove(dir + "/out.h5");
  }

  std::vector<unsigned char> magic = images;
  magic[3] = 2;
  write_set(magic, labels);
  EXPECT_EQ(import_error(), img +
                                ": wrong magic number 0x00000802: expected 0x00000803 (unsigned "
                                "bytes, 3 dimensions)");

  std::vector<unsigned char> longer = labels;
  longer.push_back(4);
  write_set(images, longer);
  EXPECT_EQ(import_error(), lab + ": 3 values expected, but more bytes follow");

  std::vector<unsigned char> four{0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4};
  write_set(images, four);
  EXPECT_EQ(import_error(), img + " holds 3 images but " + lab + " holds 4 labels");

  std::vector<unsigned char> bad_label = labels;
  bad_label[9] = 12;
  write_set(images, bad_label);
  EXPECT_EQ(import_error(), lab + ": label 12 of sample 1 is not a class 0-9");

  if (world_rank() == 0) {
    std::filesystem::remove_all(dir);
  }
}
