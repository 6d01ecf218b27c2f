// The sharded dataset reader at any rank count: every sample read exactly once per epoch across the
// ranks; every global batch identical, sample for sample, to the one a single rank reads; the
// values delivered are the ones stored; and bad files give one clear error on every rank together.
#include "tessera/comm/agree.hpp"
#include "tessera/core/check.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"

#include "support/mpi.hpp"

#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <numeric>
#include <set>

using namespace tessera;

namespace {
using tessera::testing::world_rank;
using tessera::testing::world_size;

// A folder shared by the ranks of this run (rank 0's pid names it), removed at the end.
class TempDir {
 public:
  TempDir() {
    long pid = static_cast<long>(getpid());
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    m_path = std::filesystem::temp_directory_path() / ("tessera-mpi-test-" + std::to_string(pid));
    if (world_rank() == 0) {
      std::filesystem::create_directories(m_path);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  ~TempDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      std::filesystem::remove_all(m_path);
    }
  }
  std::string file(const std::string& name) const { return (m_path / name).string(); }

 private:
  std::filesystem::path m_path;
};

// Sample n's element j holds n * 1000 + j: any misplaced sample or element shows.
constexpr Index kSamples = 37;
const Shape kSample{2, 3, 4};

struct FileSpec {
  Index samples = kSamples;
  Shape sample = kSample;
  Index labels = kSamples;  // length of y
  bool format_attribute = true;
  std::int64_t version = io::kDatasetVersion;
  bool with_y = true;
  bool y_is_group = false;  // "y" a group instead of a dataset
};

// Rank 0 writes a classification split "/train"; every rank waits for it.
void write_dataset(const std::string& path, const FileSpec& spec = {}) {
  if (world_rank() == 0) {
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group root = f.root();
      if (spec.format_attribute) {
        root.attributes().set("format", std::string(io::kDatasetFormat));
      }
      root.attributes().set("format_version", spec.version);
      const io::Group g = root.create_group("train");
      g.attributes().set("task", std::string("classification"));
      std::vector<hsize_t> shape{static_cast<hsize_t>(spec.samples)};
      for (Index e : spec.sample) {
        shape.push_back(static_cast<hsize_t>(e));
      }
      const Index per = numel(spec.sample);
      std::vector<float> x(static_cast<size_t>(spec.samples * per));
      for (Index n = 0; n < spec.samples; ++n) {
        for (Index j = 0; j < per; ++j) {
          x[static_cast<size_t>(n * per + j)] = static_cast<float>(n * 1000 + j);
        }
      }
      {
        const io::Dataset xd = g.create_dataset("x", io::ElementType::f32, shape);
        xd.write({std::vector<hsize_t>(shape.size(), 0), shape}, io::ElementType::f32, x.data(),
                 false);
      }
      if (spec.y_is_group) {
        g.create_group("y");
      } else if (spec.with_y) {
        std::vector<std::int32_t> y(static_cast<size_t>(spec.labels));
        for (Index n = 0; n < spec.labels; ++n) {
          y[static_cast<size_t>(n)] = static_cast<std::int32_t>(n % 5);
        }
        const io::Dataset yd =
            g.create_dataset("y", io::ElementType::i32, {static_cast<hsize_t>(spec.labels)});
        yd.write({{0}, {static_cast<hsize_t>(spec.labels)}}, io::ElementType::i32, y.data(), false);
      }
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Gathers every rank's ids of one batch on every rank, in rank order.
std::vector<std::int64_t> gather_ids(const std::vector<std::int64_t>& mine) {
  const int size = world_size();
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(static_cast<size_t>(size));
  MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> displs(static_cast<size_t>(size), 0);
  std::partial_sum(counts.begin(), counts.end() - 1, displs.begin() + 1);
  std::vector<std::int64_t> all(static_cast<size_t>(displs.back() + counts.back()));
  MPI_Allgatherv(mine.data(), count, MPI_INT64_T, all.data(), counts.data(), displs.data(),
                 MPI_INT64_T, MPI_COMM_WORLD);
  return all;
}

io::ReaderOptions options(Index batch, int prefetch = 2, bool cache = false) {
  io::ReaderOptions o;
  o.batch = batch;
  o.seed = 11;
  o.prefetch = prefetch;
  o.cache = cache;
  o.data_rank = world_rank();
  o.data_size = world_size();
  return o;
}

// Checks that a batch's values are the stored ones for its ids (and labels id % 5).
void expect_values(const io::Batch& b) {
  const Index per = numel(kSample);
  const std::vector<float> x = b.x.to_host();
  const auto labels = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), b.labels);
  ASSERT_EQ(b.x.dim(0), static_cast<Index>(b.ids.size()));
  for (size_t k = 0; k < b.ids.size(); ++k) {
    for (Index j = 0; j < per; ++j) {
      ASSERT_EQ(x[k * static_cast<size_t>(per) + static_cast<size_t>(j)],
                static_cast<float>(b.ids[k] * 1000 + j));
    }
    ASSERT_EQ(labels(k), static_cast<std::int32_t>(b.ids[k] % 5));
  }
}

}  // namespace

TEST(EpochPermutation, IsAPermutationDrawnFromTheSeed) {
  const auto p0 = io::epoch_permutation(1000, 5, 0, true);
  const auto p1 = io::epoch_permutation(1000, 5, 1, true);
  std::vector<std::int64_t> sorted = p0;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> ids(1000);
  std::iota(ids.begin(), ids.end(), 0);
  EXPECT_EQ(sorted, ids);
  EXPECT_NE(p0, p1);                                       // a new order every epoch
  EXPECT_EQ(p0, io::epoch_permutation(1000, 5, 0, true));  // reproducible
  EXPECT_NE(p0, io::epoch_permutation(1000, 6, 0, true));  // keyed by the seed
  EXPECT_EQ(io::epoch_permutation(10, 5, 3, false),
            std::vector<std::int64_t>(ids.begin(), ids.begin() + 10));
}

TEST(DatasetReader, EverySampleOncePerEpochAndBatchesIndependentOfRankCount) {
  const TempDir dir;
  const std::string path = dir.file("ds.h5");
  write_dataset(path);
  for (Index batch : {Index{8}, Index{5}, Index{37}, Index{64}}) {
    io::DatasetReader reader(path + ":/train", options(batch));
    // The same reader on one rank: the reference for every global batch's composition.
    io::ReaderOptions single = options(batch, 0);
    single.data_rank = 0;
    single.data_size = 1;
    io::DatasetReader reference(path + ":/train", single);
    const std::int64_t per_epoch = (kSamples + batch - 1) / batch;
    ASSERT_EQ(reader.batches_per_epoch(), per_epoch);
    for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
      std::vector<int> seen(static_cast<size_t>(kSamples), 0);
      for (std::int64_t b = 0; b < per_epoch; ++b) {
        const io::Batch mine = reader.next();
        const io::Batch whole = reference.next();
        EXPECT_EQ(mine.cursor, (io::Cursor{epoch, b}));
        EXPECT_EQ(mine.global_size, whole.global_size);
        expect_values(mine);
        const std::vector<std::int64_t> all = gather_ids(mine.ids);
        EXPECT_EQ(all, whole.ids) << "batch " << b << " of epoch " << epoch << " at batch size "
                                  << batch << " differs from the single-rank batch";
        // This rank's block: offset is where its ids start in the global batch.
        EXPECT_TRUE(std::equal(mine.ids.begin(), mine.ids.end(),
                               whole.ids.begin() + static_cast<std::ptrdiff_t>(mine.offset)));
        for (std::int64_t id : all) {
          ++seen[static_cast<size_t>(id)];
        }
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), kSamples) << "epoch " << epoch;
    }
  }
}

TEST(DatasetReader, CacheAndSynchronousReadsGiveTheSameBatches) {
  const TempDir dir;
  const std::string path = dir.file("ds.h5");
  write_dataset(path);
  io::DatasetReader prefetched(path + ":/train", options(6, 3));
  io::DatasetReader synchronous(path + ":/train", options(6, 0));
  io::DatasetReader cached(path + ":/train", options(6, 1, true));
  for (int i = 0; i < 10; ++i) {  // crosses an epoch boundary (7 batches per epoch)
    const io::Batch a = prefetched.next();
    const io::Batch b = synchronous.next();
    const io::Batch c = cached.next();
    EXPECT_EQ(a.ids, b.ids);
    EXPECT_EQ(a.ids, c.ids);
    EXPECT_EQ(a.x.to_host(), b.x.to_host());
    EXPECT_EQ(a.x.to_host(), c.x.to_host());
  }
}

TEST(DatasetReader, CursorResumesExactly) {
  const TempDir dir;
  const std::string path = dir.file("ds.h5");
  write_dataset(path);
  io::DatasetReader first(path + ":/train", options(4));
  for (int i = 0; i < 12; ++i) {  // 10 batches per epoch: stop in epoch 1
    (void)first.next();
  }
  const io::Cursor stop = first.cursor();
  EXPECT_EQ(stop, (io::Cursor{1, 2}));
  io::DatasetReader resumed(path + ":/train", options(4));
  resumed.seek(stop);
  for (int i = 0; i < 5; ++i) {
    const io::Batch a = first.next();
    const io::Batch b = resumed.next();
    EXPECT_EQ(a.cursor, b.cursor);
    EXPECT_EQ(a.ids, b.ids);
  }
}

TEST(DatasetReader, ReadsOnlyASpatialSubBox) {
  const TempDir dir;
  const std::string path = dir.file("ds.h5");
  write_dataset(path);
  io::ReaderOptions o = options(8);
  o.box = io::SubBox{{1, 2}, {2, 2}};  // rows 1-2, columns 2-3 of the 3x4 plane
  io::DatasetReader reader(path + ":/train", o);
  EXPECT_EQ(reader.sample_shape(), (Shape{2, 2, 2}));
  const io::Batch b = reader.next();
  const std::vector<float> x = b.x.to_host();
  for (size_t k = 0; k < b.ids.size(); ++k) {
    for (Index c = 0; c < 2; ++c) {
      for (Index i = 0; i < 2; ++i) {
        for (Index j = 0; j < 2; ++j) {
          const Index stored = c * 12 + (i + 1) * 4 + (j + 2);  // index inside the 2x3x4 sample
          EXPECT_EQ(x[k * 8 + static_cast<size_t>(c * 4 + i * 2 + j)],
                    static_cast<float>(b.ids[k] * 1000 + stored));
        }
      }
    }
  }
}

namespace {
// Runs `open` on every rank under comm::agree and returns the agreed message ("" if none).
std::string agreed_error(const std::function<void()>& open) {
  try {
    comm::agree(MPI_COMM_WORLD, open);
  } catch (const Error& e) {
    EXPECT_TRUE(e.on_all_ranks());
    EXPECT_EQ(e.exit_code(), 2) << e.what();
    return e.what();
  }
  return "";
}
}  // namespace

TEST(DatasetReader, BadFilesGiveOneClearErrorOnEveryRank) {
  const TempDir dir;
  const auto open = [&](const std::string& spec) {
    return agreed_error([&] { io::DatasetReader r(spec, options(4)); });
  };
  EXPECT_EQ(open(dir.file("missing.h5") + ":/train"), dir.file("missing.h5") + ": no such file");

  const std::string text = dir.file("text.h5");
  if (world_rank() == 0) {
    std::FILE* f = std::fopen(text.c_str(), "w");
    std::fputs("not hdf5\n", f);
    std::fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(open(text + ":/train"), text + ": not an HDF5 file (or truncated)");
  const std::string folder = dir.file("folder.h5");
  if (world_rank() == 0) {
    std::filesystem::create_directories(folder);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(open(folder + ":/train"), folder + ": is a folder, not a file");

  const std::string good = dir.file("good.h5");
  write_dataset(good);
  EXPECT_EQ(open(good + ":/valid"), good + ":/valid: split not found (the file holds: /train)");

  // A split that is a dataset, a split and an x that are soft links leading nowhere.
  const std::string linked = dir.file("linked.h5");
  write_dataset(linked);
  if (world_rank() == 0) {
    const io::File f = io::File::open_serial_rw(linked);
    f.root().create_dataset("flat", io::ElementType::f32, {4});
    ASSERT_GE(H5Lcreate_soft("/nowhere", f.root().id(), "gone", H5P_DEFAULT, H5P_DEFAULT), 0);
    ASSERT_GE(
        H5Lmove(f.root().id(), "train/x", f.root().id(), "train/x0", H5P_DEFAULT, H5P_DEFAULT), 0);
    ASSERT_GE(H5Lcreate_soft("/train/missing", f.root().id(), "train/x", H5P_DEFAULT, H5P_DEFAULT),
              0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(open(linked + ":/flat"),
            linked +
                ":/flat: is a dataset, not a group (a split is a group holding x and y, or "
                "tokens: docs/dataset-format.md)");
  EXPECT_EQ(open(linked + ":/gone"),
            linked + ":/gone: the split is a soft link to '/nowhere', which leads nowhere");
  EXPECT_EQ(open(linked + ":/train"),
            linked + ":/train: 'x' is a soft link to '/train/missing', which leads nowhere");

  const std::string no_y = dir.file("no_y.h5");
  FileSpec spec;
  spec.with_y = false;
  write_dataset(no_y, spec);
  EXPECT_EQ(open(no_y + ":/train"), no_y + ":/train: dataset 'y' is missing");

  const std::string y_group = dir.file("y_group.h5");
  spec = {};
  spec.y_is_group = true;
  write_dataset(y_group, spec);
  EXPECT_EQ(open(y_group + ":/train"), y_group + ":/train/y: is a group, not a dataset");

  const std::string short_y = dir.file("short_y.h5");
  spec = {};
  spec.labels = kSamples - 3;
  write_dataset(short_y, spec);
  EXPECT_EQ(open(short_y + ":/train"), short_y + ":/train: x holds 37 samples but y holds 34");

  const std::string flat = dir.file("flat.h5");
  spec = {};
  spec.sample = {24};
  write_dataset(flat, spec);
  EXPECT_EQ(open(flat + ":/train"),
            flat + ":/train: x has rank 2, expected (N, C, H, W) or (N, C, D, H, W)");

  const std::string foreign = dir.file("foreign.h5");
  spec = {};
  spec.format_attribute = false;
  write_dataset(foreign, spec);
  EXPECT_EQ(
      open(foreign + ":/train"),
      foreign + ": not a Tessera dataset (root attribute format = \"tessera-dataset\" missing)");

  const std::string future = dir.file("future.h5");
  spec = {};
  spec.version = 99;
  write_dataset(future, spec);
  EXPECT_EQ(open(future + ":/train"),
            future + ": dataset format version 99 is not supported (this Tessera reads version 1)");

  // A sample shape the model does not take.
  io::ReaderOptions o = options(4);
  o.expect_sample_shape = Shape{1, 28, 28};
  EXPECT_EQ(agreed_error([&] { io::DatasetReader r(good + ":/train", o); }),
            good + ":/train: samples are (2, 3, 4) but the model takes (1, 28, 28)");
  EXPECT_EQ(agreed_error([&] { io::DatasetReader r(good + ":/train", options(0)); }),
            good + ":/train: batch = 0 must be >= 1");
}

namespace {
// Rank 0 changes `path` through `change` (its root group, the file open read-write); every rank
// waits for it.
void rewrite(const std::string& path, const std::function<void(const io::Group&)>& change) {
  MPI_Barrier(MPI_COMM_WORLD);  // no rank holds it open (HDF5 locks a file open for writing)
  if (world_rank() == 0) {
    io::File f = io::File::open_serial_rw(path);
    change(f.root());
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Rank 0 adds the checksums tessera-data writes; every rank waits.
void add_checksums(const std::string& path) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    io::write_checksums(path);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// verify_split() of `spec`'s split, each rank its share, under comm::agree: the agreed message.
std::string verified(const std::string& file, const std::string& split, Index classes = 0) {
  return agreed_error([&] {
    (void)io::verify_split(io::inspect_split(file, split), {classes, world_rank(), world_size()});
  });
}

// One float of x (sample n, element j) or one label, overwritten in place.
void set_x(const std::string& path, Index n, Index j, float value) {
  rewrite(path, [&](const io::Group& root) {
    const io::Dataset x = root.open_dataset("train/x");
    std::vector<float> sample(static_cast<size_t>(numel(kSample)));
    const io::Box box{{static_cast<hsize_t>(n), 0, 0, 0}, {1, 2, 3, 4}};
    x.read(box, io::ElementType::f32, sample.data());
    sample[static_cast<size_t>(j)] = value;
    x.write(box, io::ElementType::f32, sample.data(), false);
  });
}

void set_label(const std::string& path, Index n, std::int32_t label) {
  rewrite(path, [&](const io::Group& root) {
    root.open_dataset("train/y").write({{static_cast<hsize_t>(n)}, {1}}, io::ElementType::i32,
                                       &label, false);
  });
}
}  // namespace

TEST(DatasetVerify, ChecksumsFindDamageInAnyRanksShare) {
  const TempDir dir;
  const std::string plain = dir.file("plain.h5");
  write_dataset(plain);
  EXPECT_FALSE(io::inspect_split(plain, "/train").checksummed());  // accepted, unverified
  EXPECT_EQ(io::inspect_split(plain, "/train").without_checksums,
            (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(verified(plain, "/train", 5), "");

  const std::string summed = dir.file("summed.h5");
  write_dataset(summed);
  add_checksums(summed);
  const io::SplitInfo info = io::inspect_split(summed, "/train");
  EXPECT_TRUE(info.checksummed());
  EXPECT_EQ(verified(summed, "/train", 5), "");
  {
    io::DatasetReader r(summed + ":/train", options(8));
    expect_values(r.next());  // the attributes change nothing that is read
  }
  // One element of the last sample changed after the checksums were written (whichever rank
  // verifies that block).
  set_x(summed, kSamples - 1, 5, 1.5F);
  EXPECT_EQ(verified(summed, "/train", 5),
            summed +
                ":/train: x of samples [0, 37) do not match their checksum (crc32): the file "
                "is damaged or was changed after it was written");
}

TEST(DatasetVerify, ASplitWhoseYLostItsChecksumsStillVerifiesX) {
  const TempDir dir;
  const std::string path = dir.file("y-rewritten.h5");
  write_dataset(path);
  add_checksums(path);
  rewrite(path, [](const io::Group& root) {  // y rewritten by a tool that keeps no checksums
    const io::Dataset y = root.open_dataset("train/y");
    const std::lock_guard<std::recursive_mutex> lock(io::hdf5_mutex());
    ASSERT_GE(H5Adelete(y.id(), io::kChecksum), 0);
    ASSERT_GE(H5Adelete(y.id(), io::kChecksumRows), 0);
  });
  const io::SplitInfo info = io::inspect_split(path, "/train");
  EXPECT_FALSE(info.checksummed());
  EXPECT_EQ(info.without_checksums, std::vector<std::string>{"y"});
  EXPECT_EQ(verified(path, "/train", 5), "");
  set_x(path, 3, 0, 2.5F);
  EXPECT_EQ(verified(path, "/train", 5),
            path +
                ":/train: x of samples [0, 37) do not match their checksum (crc32): the file is "
                "damaged or was changed after it was written");
}

TEST(DatasetVerify, LabelsOutsideTheClassesAreRefusedNamingTheSample) {
  const TempDir dir;
  const std::string path = dir.file("labels.h5");
  write_dataset(path);  // labels n % 5
  EXPECT_EQ(verified(path, "/train", 5), "");
  EXPECT_EQ(verified(path, "/train", 4),
            path + ":/train: sample 4 has label y[4] = 4, outside the 4 classes [0, 4)");
  set_label(path, 33, 2147483647);
  EXPECT_EQ(verified(path, "/train", 5),
            path + ":/train: sample 33 has label y[33] = 2147483647, outside the 5 classes [0, 5)");
  set_label(path, 33, -1);
  EXPECT_EQ(verified(path, "/train", 5),
            path + ":/train: sample 33 has label y[33] = -1, outside the 5 classes [0, 5)");
}

TEST(DatasetVerify, NonFiniteSamplesAreRefusedNamingSampleAndElement) {
  const TempDir dir;
  const std::string path = dir.file("nan.h5");
  write_dataset(path);
  set_x(path, 30, 17, std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(verified(path, "/train", 5),
            path +
                ":/train: sample 30 of x holds NaN at element 17: samples must be finite (NaN "
                "and Inf are refused)");
  set_x(path, 30, 17, 0.0F);
  set_x(path, 2, 0, -std::numeric_limits<float>::infinity());
  EXPECT_EQ(verified(path, "/train", 5),
            path +
                ":/train: sample 2 of x holds -Inf at element 0: samples must be finite (NaN "
                "and Inf are refused)");
}

TEST(DatasetVerify, EmptySplitsAndImpossibleShapesAreRefusedBeforeAnyAllocation) {
  const TempDir dir;
  const std::string empty = dir.file("empty.h5");
  FileSpec spec;
  spec.samples = 0;
  spec.labels = 0;
  write_dataset(empty, spec);
  const auto open = [&](const std::string& s) {
    return agreed_error([&] { io::DatasetReader r(s, options(4)); });
  };
  EXPECT_EQ(open(empty + ":/train"), empty + ":/train: the split is empty: x and y hold 0 samples");

  const std::string hollow = dir.file("hollow.h5");
  spec = {};
  spec.sample = {2, 0, 4};
  write_dataset(hollow, spec);
  EXPECT_EQ(open(hollow + ":/train"),
            hollow + ":/train: x has shape (37, 2, 0, 4): a sample has no elements");

  // Normalisation attributes that would turn every sample into NaN or Inf.
  const std::string norm = dir.file("norm.h5");
  write_dataset(norm);
  rewrite(norm, [](const io::Group& root) {
    root.open_group("train").attributes().set(
        "std", std::vector<double>{1.0, std::numeric_limits<double>::infinity()});
  });
  EXPECT_EQ(open(norm + ":/train"),
            norm + ":/train: attribute std[1] = inf must be finite and > 0");
  rewrite(norm, [](const io::Group& root) {
    root.open_group("train").attributes().set("std", std::vector<double>{1.0, 1.0});
    root.open_group("train").attributes().set("mean", std::vector<double>{0.0, std::nan("")});
  });
  EXPECT_EQ(open(norm + ":/train"), norm + ":/train: attribute mean[1] = nan must be finite");
  rewrite(norm, [](const io::Group& root) {
    root.open_group("train").attributes().set("mean", std::vector<double>{0.0, 0.0});
    root.open_group("train").attributes().set("scale", 0.0);
  });
  EXPECT_EQ(open(norm + ":/train"), norm + ":/train: attribute scale = 0 must be finite and not 0");

  // A header that claims 2^40 tokens (as a damaged file may): refused, not allocated.
  const std::string huge = dir.file("huge.h5");
  write_dataset(huge);
  rewrite(huge, [&](const io::Group& root) {
    const io::Group g = root.create_group("lm");
    g.attributes().set("task", std::string("language_modeling"));
    g.attributes().set("vocab", std::int64_t{256});
    const std::lock_guard<std::recursive_mutex> lock(io::hdf5_mutex());
    const hsize_t dims[1] = {hsize_t{1} << 40};
    const hsize_t chunk[1] = {1 << 20};
    const hid_t space = H5Screate_simple(1, dims, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, chunk);  // chunks allocated when written: none is
    const hid_t d =
        H5Dcreate2(g.id(), "tokens", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(space);
  });
  io::ReaderOptions o = options(4);
  o.context = 8;
  EXPECT_EQ(agreed_error([&] { io::DatasetReader r(huge + ":/lm", o); }),
            huge +
                ":/lm/tokens: shape (1099511627776) needs 1.0 TiB but the file stores 0 bytes "
                "of it: the file is damaged or incomplete");

  // The opposite: a chunk index claiming 2.7 GiB for x's 512 bytes (found by fuzzing: HDF5 then
  // allocates a buffer of the claimed size), the fuzzer's input as it was.
  const std::string claimed = std::string(TESSERA_SOURCE_DIR) +
                              "/tests/fuzz/corpus/dataset/finding-chunk-storage-beyond-its-shape";
  EXPECT_EQ(open(claimed + ":/train"),
            claimed +
                ":/train/x: shape (8, 1, 4, 4) stores at most 512 bytes, but the file says "
                "2.7 GiB: the file is damaged");
}

TEST(DatasetReader, AFileTruncatedWhileReadIsAnErrorNotZeros) {
  const TempDir dir;
  const std::string path = dir.file("truncated.h5");
  write_dataset(path);
  io::DatasetReader r(path + ":/train", options(4, /*prefetch=*/0));
  expect_values(r.next());
  MPI_Barrier(MPI_COMM_WORLD);  // every rank has read before the file shrinks
  if (world_rank() == 0) {
    std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  try {
    for (int b = 0; b < 9; ++b) {  // a whole epoch: every rank reads some samples
      (void)r.next();
    }
    ADD_FAILURE() << "read a truncated file without an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(path + ":/train: ", 0), 0U) << m;
    EXPECT_NE(m.find("the file changed while it was being read (sample"), std::string::npos) << m;
  }
}
