// tessera-ckpt, called in-process at 1-4 ranks on checkpoints written here straight from
// docs/checkpoint-format.md (tests/support/ckpt_fixture.hpp): the checksum against a value computed
// with numpy from the doc's formula; verify finding every problem, with exact messages, and every
// flipped byte of tensor data (the bit-flip trial); diff, export (.h5 and .npz read back by a ZIP
// and .npy reader written here), average and deck against values computed in the test. The
// commands spread their elements over the ranks; the expectations do not depend on the count.
#include "ckpt_commands.hpp"
#include "ckpt_file.hpp"
#include "tessera/core/error.hpp"

#include "support/ckpt_fixture.hpp"
#include "support/mpi.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>

namespace {
namespace fs = std::filesystem;
namespace ckpt = tessera::ckpt;
using tessera::testing::fixture_checksum;
using tessera::testing::FixtureCheckpoint;
using tessera::testing::make_fixture;
using tessera::testing::world_rank;
using tessera::testing::world_size;
using tessera::testing::write_fixture;

// A folder every rank agrees on, removed at the end of each test.
class CkptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    long pid = static_cast<long>(getpid());
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    m_dir = (fs::temp_directory_path() /
             ("tessera-ckpt-tool-test-" + std::to_string(pid) + "-" + info->name()))
                .string();
    if (world_rank() == 0) {
      fs::create_directories(m_dir);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      fs::remove_all(m_dir);
    }
  }
  std::string path(const std::string& name) const { return m_dir + "/" + name; }
  // Rank 0 writes the checkpoint; every rank returns once it is there.
  std::string write(const std::string& name, const FixtureCheckpoint& c) const {
    if (world_rank() == 0) {
      write_fixture(path(name), c);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return path(name);
  }
  void on_root(const std::function<void()>& f) const {
    if (world_rank() == 0) {
      f();
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  std::string m_dir;
};

// The message of the Error `f` throws, which must be an input error every rank holds.
std::string input_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const tessera::Error& e) {
    EXPECT_TRUE(e.on_all_ranks()) << e.what();
    EXPECT_EQ(e.exit_code(), 2) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) {
    out.push_back(line);
  }
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  const auto lines = lines_of(text);
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

// Adds an optimizer state of 2 values at `path`, counted in the root's `tensors` (9 before).
void add_state(FixtureCheckpoint& c, const std::string& path) {
  c.tensors.push_back(
      {path, {2}, {1.0F, 2.0F}, "", std::nullopt, true, tessera::io::ElementType::f32});
  c.root["tensors"] = std::int64_t{10};
}

std::int64_t count_elements(const FixtureCheckpoint& c) {
  std::int64_t n = 0;
  for (const auto& t : c.tensors) {
    n += static_cast<std::int64_t>(t.values.size());
  }
  return n;
}

std::vector<float> values_of(const FixtureCheckpoint& c, const std::string& path) {
  for (const auto& t : c.tensors) {
    if (t.path == path) {
      return t.values;
    }
  }
  ADD_FAILURE() << "no tensor " << path;
  return {};
}

std::string read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary | std::ios::ate);
  std::string bytes(static_cast<std::size_t>(in.tellg()), '\0');
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

// The root attribute "step" of an open checkpoint file.
std::int64_t step_attribute(hid_t file) {
  std::int64_t step = 0;
  const hid_t a = H5Aopen(file, "step", H5P_DEFAULT);
  H5Aread(a, H5T_NATIVE_INT64, &step);
  H5Aclose(a);
  return step;
}

}  // namespace

// --- the checksum and the element split ---------------------------------------------------------

TEST(CkptChecksum, MatchesTheValueNumpyComputesFromTheDocsFormula) {
  // numpy, with the function in docs/checkpoint-format.md: checksum([1.0, -2.5, 3.25]).
  const std::vector<float> x{1.0F, -2.5F, 3.25F};
  EXPECT_EQ(tessera::io::checksum_partial(x.data(), 0, 3), 0x8e8604633ac5a652ULL);
  EXPECT_EQ(tessera::io::checksum_string(tessera::io::checksum_partial(x.data(), 0, 3)),
            "0x8e8604633ac5a652");
  // Partial sums over any split add up (mod 2^64).
  EXPECT_EQ(tessera::io::checksum_partial(x.data(), 0, 1) +
                tessera::io::checksum_partial(x.data() + 1, 1, 2),
            0x8e8604633ac5a652ULL);
}

TEST(CkptSplit, FlatBoxesCoverExactlyTheRangeInOrder) {
  const std::vector<std::vector<hsize_t>> shapes{{7}, {3, 4, 5}, {2, 1, 3, 2}, {4, 6}};
  for (const auto& shape : shapes) {
    std::int64_t n = 1;
    for (hsize_t d : shape) {
      n *= static_cast<std::int64_t>(d);
    }
    for (std::int64_t a = 0; a <= n; ++a) {
      for (std::int64_t b = a; b <= n; ++b) {
        std::vector<std::int64_t> got;
        const auto boxes = ckpt::flat_boxes(shape, a, b - a);
        EXPECT_LE(boxes.size(), 2 * shape.size());
        for (const auto& box : boxes) {
          // Every index of the box in row-major order, as flat indices (naive loops).
          std::vector<hsize_t> idx(box.offset);
          while (true) {
            std::int64_t flat = 0;
            for (std::size_t d = 0; d < shape.size(); ++d) {
              flat = flat * static_cast<std::int64_t>(shape[d]) + static_cast<std::int64_t>(idx[d]);
            }
            got.push_back(flat);
            std::size_t d = shape.size();
            while (d > 0) {
              --d;
              if (++idx[d] < box.offset[d] + box.count[d]) {
                break;
              }
              idx[d] = box.offset[d];
              if (d == 0) {
                d = shape.size() + 1;
                break;
              }
            }
            if (d == shape.size() + 1) {
              break;
            }
          }
        }
        std::vector<std::int64_t> want;
        for (std::int64_t i = a; i < b; ++i) {
          want.push_back(i);
        }
        ASSERT_EQ(got, want) << "shape rank " << shape.size() << ", range [" << a << ", " << b
                             << ")";
      }
    }
  }
}

TEST(CkptSplit, EveryElementOnExactlyOneRankBalanced) {
  const std::vector<std::int64_t> sizes{5, 0, 17, 3, 1};
  for (int ranks = 1; ranks <= 6; ++ranks) {
    std::vector<int> owner_count(5 + 17 + 3 + 1, 0);
    std::vector<std::int64_t> offsets{0, 5, 5, 22, 25};
    for (int r = 0; r < ranks; ++r) {
      std::int64_t mine = 0;
      std::int64_t last = -1;
      for (const auto& p : ckpt::split_elements(sizes, r, ranks)) {
        EXPECT_GT(p.count, 0);
        for (std::int64_t i = 0; i < p.count; ++i) {
          const std::int64_t global = offsets[p.tensor] + p.first + i;
          EXPECT_EQ(global, last + 1 == 0 ? global : last + 1);  // contiguous on each rank
          last = global;
          ++owner_count[static_cast<std::size_t>(global)];
        }
        mine += p.count;
      }
      EXPECT_GE(mine, 26 / ranks);
      EXPECT_LE(mine, 26 / ranks + 1);
    }
    for (int c : owner_count) {
      EXPECT_EQ(c, 1) << ranks << " ranks";
    }
  }
}

// --- verify ------------------------------------------------------------------------------------

TEST_F(CkptTest, VerifyPassesAGoodCheckpoint) {
  for (const std::string optimizer : {"sgd", "adamw"}) {
    const FixtureCheckpoint c = make_fixture(1, optimizer);
    const std::string f = write(optimizer + ".h5", c);
    const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, f);
    EXPECT_TRUE(v.ok()) << optimizer << ": " << (v.problems.empty() ? v.unreadable : v.problems[0]);
    EXPECT_EQ(v.tensors, optimizer == "sgd" ? 9 : 13);
    EXPECT_EQ(v.bytes, 4 * count_elements(c));
    const ckpt::Outcome o = ckpt::verify(MPI_COMM_WORLD, {f});
    EXPECT_EQ(o.exit_code, 0);
    if (world_rank() == 0) {
      EXPECT_EQ(o.out, fmt::format("{}: OK ({} tensors, {} B, checksums match)\n", f,
                                   c.tensors.size(), 4 * count_elements(c)));
    } else {
      EXPECT_EQ(o.out, "");
    }
  }
  // SGD without momentum keeps no state: a checkpoint with none verifies.
  FixtureCheckpoint plain = make_fixture(1, "sgd", 0.0);
  EXPECT_EQ(plain.tensors.size(), 5U);
  EXPECT_TRUE(ckpt::verify_file(MPI_COMM_WORLD, write("plain.h5", plain)).ok());
}

TEST_F(CkptTest, VerifyUnreadableFilesExit2WithOneMessage) {
  const std::string good = write("good.h5", make_fixture());
  const std::string text = path("text.h5");
  const std::string truncated = path("truncated.h5");
  const std::string stub = path("stub.h5");
  std::size_t full_size = 0;
  on_root([&] {
    std::ofstream(text) << "step = 100\n";
    const std::string bytes = read_bytes(good);
    full_size = bytes.size();
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    std::ofstream(stub, std::ios::binary) << bytes.substr(0, 8);  // the signature alone
  });
  MPI_Bcast(&full_size, 1, MPI_UNSIGNED_LONG, 0, MPI_COMM_WORLD);
  const std::vector<std::pair<std::string, std::string>> cases{
      {path("missing.h5"), path("missing.h5") + ": no such file"},
      {m_dir, m_dir + ": is a folder, not a checkpoint file"},
      {text, text + ": not an HDF5 file"},
      {truncated, fmt::format("{}: truncated: the file has {} bytes, its HDF5 superblock says {}",
                              truncated, full_size / 2, full_size)},
  };
  for (const auto& [file, message] : cases) {
    const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, file);
    EXPECT_EQ(v.unreadable, message);
    EXPECT_TRUE(v.problems.empty());
    const ckpt::Outcome o = ckpt::verify(MPI_COMM_WORLD, {file});
    EXPECT_EQ(o.exit_code, 2);
    EXPECT_EQ(o.out, "");
    EXPECT_EQ(o.err, world_rank() == 0 ? "error: " + message + "\n" : "");
  }
  const ckpt::FileVerdict s = ckpt::verify_file(MPI_COMM_WORLD, stub);
  EXPECT_EQ(s.unreadable.rfind(stub + ": truncated or damaged: HDF5 cannot read it (", 0), 0U)
      << s.unreadable;
  // Several files: each reported, the worst exit code wins.
  const ckpt::Outcome o = ckpt::verify(MPI_COMM_WORLD, {good, path("missing.h5")});
  EXPECT_EQ(o.exit_code, 2);
  if (world_rank() == 0) {
    EXPECT_EQ(o.out, good + ": OK (9 tensors, 224 B, checksums match)\n");
    EXPECT_EQ(o.err, "error: " + path("missing.h5") + ": no such file\n");
  }
}

TEST_F(CkptTest, VerifyNamesEachProblemExactly) {
  struct Case {
    const char* name;
    std::function<void(FixtureCheckpoint&)> damage;
    std::vector<std::string> problems;
  };
  const std::vector<Case> cases{
      {"version",
       [](FixtureCheckpoint& c) { c.root["format_version"] = std::int64_t{2}; },
       {"format_version 2 is not one this Tessera reads (it reads 1); a newer Tessera wrote it?"}},
      {"format",
       [](FixtureCheckpoint& c) { c.root["format"] = std::string("tessera-dataset"); },
       {"not a Tessera checkpoint (format is \"tessera-dataset\", expected "
        "\"tessera-checkpoint\")"}},
      {"no-format",
       [](FixtureCheckpoint& c) { c.root.erase("format"); },
       {"not a Tessera checkpoint (no root attribute 'format')"}},
      {"missing-attribute",
       [](FixtureCheckpoint& c) { c.root.erase("cursor_batch"); },
       {"root attribute 'cursor_batch' is missing"}},
      {"wrong-type",
       [](FixtureCheckpoint& c) {
         c.root["step"] = std::string("100");
         c.root["grid"] = 2.0;
       },
       {"root attribute 'step' is a string, expected int64",
        "root attribute 'grid' is a float, expected a string"}},
      {"optimizer-name",
       [](FixtureCheckpoint& c) { c.root["optimizer"] = std::string("lamb"); },
       {"root attribute optimizer = \"lamb\" is not \"sgd\" or \"adamw\""}},
      {"tensors-count",
       [](FixtureCheckpoint& c) { c.root["tensors"] = std::int64_t{10}; },
       {"root attribute tensors = 10, but the file holds 9 tensor datasets (under /model and "
        "/optimizer)"}},
      {"missing-state",
       [](FixtureCheckpoint& c) {
         c.remove("/optimizer/linear1/bias/momentum");
         c.root["tensors"] = std::int64_t{8};
       },
       {"/model/linear1/bias: optimizer state /optimizer/linear1/bias/momentum is missing (sgd "
        "with momentum 0.9)"}},
      {"state-shape",
       [](FixtureCheckpoint& c) {
         auto& m = c.tensor("/optimizer/linear2/weight/momentum");
         m.shape = {4, 2};
       },
       {"/optimizer/linear2/weight/momentum: shape (4, 2) differs from its parameter's (2, 4) "
        "(/model/linear2/weight)"}},
      {"no-checksum",
       [](FixtureCheckpoint& c) { c.tensor("/model/linear2/bias").write_checksum = false; },
       {"/model/linear2/bias: no checksum attribute"}},
      {"bad-checksum-text",
       [](FixtureCheckpoint& c) { c.tensor("/model/linear2/bias").checksum = "0x12"; },
       {"/model/linear2/bias: checksum attribute \"0x12\" is not \"0x\" and 16 hexadecimal "
        "digits"}},
      {"out-of-range",
       [](FixtureCheckpoint& c) {
         c.root["step"] = std::int64_t{-5};
         c.root["zero"] = std::int64_t{2};
         c.root["ranks"] = std::int64_t{0};
       },
       {"root attribute step = -5 must be >= 0", "root attribute ranks = 0 must be >= 1",
        "root attribute zero = 2 must be in [0, 1]"}},
      {"version-string",
       [](FixtureCheckpoint& c) { c.root["format_version"] = std::string("1"); },
       {"root attribute 'format_version' is a string, expected int64"}},
      {"nan-under-a-valid-checksum",
       [](FixtureCheckpoint& c) {
         c.tensor("/model/linear1/weight").values[2] = std::nanf("");
         c.tensor("/model/linear1/weight").values[5] = -std::numeric_limits<float>::infinity();
       },
       {"/model/linear1/weight: 2 values are not finite (NaN or infinite)"}},
      // Text from the file is printed escaped (a kind, a format, a tensor's name).
      {"kind-escaped",
       [](FixtureCheckpoint& c) { c.tensor("/model/norm/running_mean").kind = "\x1b[31m"; },
       {"/model/norm/running_mean: kind \"\\x1b[31m\" is not \"parameter\" or \"buffer\""}},
      {"format-escaped",
       [](FixtureCheckpoint& c) { c.root["format"] = std::string("\x1b]0;x\x07"); },
       {"not a Tessera checkpoint (format is \"\\x1b]0;x\\x07\", expected "
        "\"tessera-checkpoint\")"}},
      // Tensors the checkpoint's model cannot have: an optimizer state without its parameter
      // (counted in `tensors`), a state the optimizer does not keep.
      {"state-without-parameter",
       [](FixtureCheckpoint& c) { add_state(c, "/optimizer/linear9\x1b/weight/momentum"); },
       {"/optimizer/linear9\\x1b/weight/momentum: an optimizer state without a parameter "
        "/model/linear9\\x1b/weight in the file"}},
      {"state-of-another-optimizer",
       [](FixtureCheckpoint& c) { add_state(c, "/optimizer/linear2/bias/exp_avg"); },
       {"/optimizer/linear2/bias/exp_avg: state \"exp_avg\" is not one that sgd with momentum "
        "0.9 keeps"}},
      {"no-kind",
       [](FixtureCheckpoint& c) { c.tensor("/model/norm/running_mean").kind = ""; },
       {"/model/norm/running_mean: attribute 'kind' is missing or not a string (\"parameter\" "
        "or \"buffer\")"}},
  };
  // A variance below zero (AdamW's exp_avg_sq; BatchNorm's running_var alike) under a valid
  // checksum: the next step would turn it into NaN.
  {
    FixtureCheckpoint c = make_fixture(1, "adamw");
    c.tensor("/optimizer/linear2/weight/exp_avg_sq").values[0] = -0.5F;
    c.tensor("/optimizer/linear2/weight/exp_avg_sq").values[3] = -1e-30F;
    const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, write("negative.h5", c));
    EXPECT_EQ(v.problems, std::vector<std::string>{"/optimizer/linear2/weight/exp_avg_sq: 2 "
                                                   "values are negative, but it holds variances"});
  }
  for (const Case& k : cases) {
    FixtureCheckpoint c = make_fixture();
    k.damage(c);
    const std::string f = write(std::string(k.name) + ".h5", c);
    const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, f);
    EXPECT_EQ(v.unreadable, "") << k.name;
    EXPECT_EQ(v.problems, k.problems) << k.name;
    const ckpt::Outcome o = ckpt::verify(MPI_COMM_WORLD, {f});
    EXPECT_EQ(o.exit_code, 1) << k.name;
  }

  // AdamW needs both states; a float64 tensor and a changed element are found together with
  // everything else wrong in the same file, each on its own line, in file order.
  FixtureCheckpoint c = make_fixture(1, "adamw");
  c.remove("/optimizer/linear1/weight/exp_avg_sq");
  c.root.erase("rng_seed");
  auto& w = c.tensor("/model/linear2/weight");
  const std::string stored = corrupt(w, 3, -w.values[3]);  // one element changed on the way
  const std::string recomputed = fixture_checksum(w.values);
  auto& mean = c.tensor("/model/norm/running_mean");
  mean.type = tessera::io::ElementType::f64;
  const std::string f = write("many.h5", c);
  const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, f);
  const std::vector<std::string> want{
      "root attribute 'rng_seed' is missing",
      "root attribute tensors = 13, but the file holds 12 tensor datasets (under /model and "
      "/optimizer)",
      "/model/linear1/weight: optimizer state /optimizer/linear1/weight/exp_avg_sq is missing "
      "(adamw)",
      "/model/linear2/weight: checksum " + recomputed + " does not match the stored " + stored,
      "/model/norm/running_mean: dtype float64, expected float32",
  };
  EXPECT_EQ(v.problems, want);
  const ckpt::Outcome o = ckpt::verify(MPI_COMM_WORLD, {f});
  EXPECT_EQ(o.exit_code, 1);
  if (world_rank() == 0) {
    std::string text;
    for (const auto& p : want) {
      text += f + ": " + p + "\n";
    }
    EXPECT_EQ(o.out, text + f + ": FAILED (5 problems)\n");
  }
}

// The acceptance trial: every single byte of tensor data flipped in the file, one at a
// time, is caught by verify, naming that tensor; the file verifies again once restored.
TEST_F(CkptTest, BitFlipTrialCatchesEveryFlippedByteOfTensorData) {
  const FixtureCheckpoint c = make_fixture(3, "adamw");
  const std::string f = write("trial.h5", c);
  // Each dataset's bytes in the file (contiguous layout): H5Dget_offset and the storage size,
  // checked against the values the fixture wrote, so that the trial flips tensor data only.
  struct Range {
    std::string path;
    std::int64_t offset;
    std::int64_t bytes;
  };
  std::vector<Range> ranges;
  {
    const hid_t file = H5Fopen(f.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const std::string bytes = read_bytes(f);
    for (const auto& t : c.tensors) {
      const hid_t d = H5Dopen2(file, t.path.c_str(), H5P_DEFAULT);
      const haddr_t offset = H5Dget_offset(d);
      const hsize_t size = H5Dget_storage_size(d);
      H5Dclose(d);
      ASSERT_NE(offset, HADDR_UNDEF) << t.path;
      ASSERT_EQ(size, t.values.size() * 4) << t.path;
      ASSERT_EQ(std::memcmp(bytes.data() + offset, t.values.data(), size), 0) << t.path;
      ranges.push_back(
          {t.path, static_cast<std::int64_t>(offset), static_cast<std::int64_t>(size)});
    }
    H5Fclose(file);
  }
  MPI_Barrier(MPI_COMM_WORLD);  // every rank has read the file before rank 0 changes it
  const int fd = world_rank() == 0 ? ::open(f.c_str(), O_RDWR) : -1;
  auto flip = [&](std::int64_t at, unsigned char mask) {
    if (world_rank() == 0) {
      unsigned char b = 0;
      ASSERT_EQ(::pread(fd, &b, 1, at), 1);
      b = static_cast<unsigned char>(b ^ mask);
      ASSERT_EQ(::pwrite(fd, &b, 1, at), 1);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  // Every byte with all its bits flipped; at 1 and 2 ranks also every single bit of every byte.
  std::vector<unsigned char> masks{0xFF};
  if (world_size() <= 2) {
    for (int bit = 0; bit < 8; ++bit) {
      masks.push_back(static_cast<unsigned char>(1U << bit));
    }
  }
  std::int64_t tried = 0;
  std::int64_t caught = 0;
  for (const Range& r : ranges) {
    const std::regex named("^" + std::regex_replace(r.path, std::regex("/"), "\\/") +
                           ": checksum 0x[0-9a-f]{16} does not match the stored 0x[0-9a-f]{16}$");
    for (std::int64_t at = r.offset; at < r.offset + r.bytes; ++at) {
      for (unsigned char mask : masks) {
        flip(at, mask);
        const ckpt::FileVerdict v = ckpt::verify_file(MPI_COMM_WORLD, f);
        ++tried;
        if (v.problems.size() == 1 && std::regex_match(v.problems[0], named)) {
          ++caught;
        } else {
          ADD_FAILURE() << "byte " << at << " of " << r.path << " (mask " << int{mask}
                        << "): " << (v.problems.empty() ? "not caught" : v.problems[0]);
        }
        flip(at, mask);
      }
    }
  }
  if (fd >= 0) {
    ::close(fd);
  }
  const std::int64_t data_bytes = 4 * count_elements(c);
  EXPECT_EQ(tried, data_bytes * static_cast<std::int64_t>(masks.size()));
  EXPECT_EQ(caught, tried);
  EXPECT_TRUE(ckpt::verify_file(MPI_COMM_WORLD, f).ok());
  if (world_rank() == 0) {
    std::printf(
        "bit-flip trial at %d ranks: %lld bytes of tensor data in %zu tensors, %lld flips "
        "tried, %lld caught\n",
        world_size(), static_cast<long long>(data_bytes), ranges.size(),
        static_cast<long long>(tried), static_cast<long long>(caught));
  }
}

// --- ls and deck -------------------------------------------------------------------------------

TEST_F(CkptTest, LsShowsTheMetadataAndTheTensorTree) {
  const FixtureCheckpoint c = make_fixture();
  const std::string f = write("ls.h5", c);
  const ckpt::Outcome o = ckpt::ls(MPI_COMM_WORLD, f);
  EXPECT_EQ(o.exit_code, 0);
  if (world_rank() != 0) {
    EXPECT_EQ(o.out, "");
    return;
  }
  const std::string& out = o.out;
  EXPECT_TRUE(has_line(out, f + ": tessera-checkpoint version 1, written by Tessera 0.1.0 at "
                                "2026-11-27T14:02:11Z"))
      << out;
  EXPECT_TRUE(has_line(out, "  step 100 of 1000; data cursor at epoch 1, batch 30; rng_seed 7"));
  EXPECT_TRUE(has_line(out, "  optimizer sgd, 100 optimizer steps"));
  EXPECT_TRUE(has_line(out,
                       "  grid: trainers 1 × data 2 × pipeline 1 × tensor 1 × spatial [1, 1] "
                       "(ranks 2, data_size 2, zero 0)"));
  EXPECT_TRUE(has_line(out, "  deck: 15 lines (tessera-ckpt deck " + f + ")")) << out;
  EXPECT_EQ(out.find("[optimizer]"), std::string::npos);  // not the whole deck
  const std::string w = fixture_checksum(values_of(c, "/model/linear1/weight"));
  EXPECT_TRUE(has_line(out, "      weight        (4, 3)  float32     48  " + w + "  parameter"))
      << out;
  EXPECT_TRUE(has_line(out, "  model/"));
  EXPECT_TRUE(has_line(out, "    linear1/"));
  EXPECT_TRUE(has_line(out, "  optimizer/"));
  EXPECT_TRUE(
      has_line(out, "        momentum    (4, 3)  float32     48  " +
                        fixture_checksum(values_of(c, "/optimizer/linear1/weight/momentum"))));
  EXPECT_TRUE(has_line(out,
                       "total: 9 tensors, 56 elements, 224 B (model: 5 tensors, 120 B; "
                       "optimizer: 4 tensors, 104 B)"))
      << out;
}

TEST_F(CkptTest, LsListsAFoldersCheckpoints) {
  const std::string dir = path("run");
  on_root([&] {
    fs::create_directories(dir);
    write_fixture(dir + "/ckpt-00000100.h5", make_fixture(1, "sgd", 0.9, 100));
    write_fixture(dir + "/ckpt-00000200.h5", make_fixture(2, "sgd", 0.9, 200));
    std::ofstream(dir + "/latest") << "ckpt-00000200.h5\n";
    std::ofstream(dir + "/.ckpt-00000300.h5.partial") << "half";
    std::ofstream(dir + "/notes.txt") << "not a checkpoint";
  });
  const ckpt::Outcome o = ckpt::ls(MPI_COMM_WORLD, dir);
  EXPECT_EQ(o.exit_code, 0);
  if (world_rank() == 0) {
    const auto lines = lines_of(o.out);
    ASSERT_EQ(lines.size(), 5U) << o.out;
    EXPECT_EQ(lines[0], dir + ": 2 checkpoints, 1 incomplete; latest names ckpt-00000200.h5");
    EXPECT_EQ(lines[1].substr(0, 20), "step  file          ");
    EXPECT_EQ(lines[2].find(" 100  ckpt-00000100.h5 "), 0U) << lines[2];
    EXPECT_NE(lines[2].find("2026-11-27T14:02:11Z"), std::string::npos);
    EXPECT_EQ(lines[3].find(" 200  ckpt-00000200.h5 "), 0U);
    EXPECT_NE(lines[3].find("<- latest"), std::string::npos);
    EXPECT_EQ(lines[4].find(" 300  .ckpt-00000300.h5.partial  "), 0U);
    EXPECT_NE(lines[4].find("4 B"), std::string::npos);
    EXPECT_NE(lines[4].find("incomplete"), std::string::npos);
  }
  // A `latest` holding control bytes is printed escaped, never sent to the terminal as is.
  on_root([&] { std::ofstream(dir + "/latest") << "\x1b[31mred\x07\n"; });
  if (const ckpt::Outcome red = ckpt::ls(MPI_COMM_WORLD, dir); world_rank() == 0) {
    const auto lines = lines_of(red.out);
    ASSERT_EQ(lines.size(), 6U) << red.out;
    EXPECT_EQ(lines[0], dir + ": 2 checkpoints, 1 incomplete; latest names \\x1b[31mred\\x07");
    EXPECT_EQ(lines[5],
              "warning: 'latest' names \\x1b[31mred\\x07, which is not a checkpoint of this "
              "folder");
  }
  EXPECT_EQ(input_error_of([&] { ckpt::ls(MPI_COMM_WORLD, path("nowhere")); }),
            path("nowhere") + ": no such file or folder");
  on_root([&] { std::ofstream(path("data.h5")) << "x"; });
  EXPECT_EQ(input_error_of([&] { ckpt::ls(MPI_COMM_WORLD, path("data.h5")); }),
            path("data.h5") + ": not an HDF5 file");
}

TEST_F(CkptTest, DeckPrintsTheEmbeddedDeck) {
  const std::string f = write("deck.h5", make_fixture(1, "adamw"));
  const ckpt::Outcome o = ckpt::deck(MPI_COMM_WORLD, f);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, world_rank() == 0 ? tessera::testing::fixture_deck("adamw", 0.0) : "");
  FixtureCheckpoint no_deck = make_fixture();
  no_deck.root.erase("deck");
  const std::string g = write("nodeck.h5", no_deck);
  EXPECT_EQ(input_error_of([&] { ckpt::deck(MPI_COMM_WORLD, g); }),
            g + ": root attribute 'deck' is missing");
  FixtureCheckpoint v2 = make_fixture();
  v2.root["format_version"] = std::int64_t{2};
  const std::string h = write("v2.h5", v2);
  EXPECT_EQ(input_error_of([&] { ckpt::deck(MPI_COMM_WORLD, h); }),
            h + ": format_version 2 is not one this Tessera reads (it reads 1); a newer Tessera "
                "wrote it?");
}

// --- diff --------------------------------------------------------------------------------------

TEST_F(CkptTest, DiffMeasuresEveryTensorAndDecidesOnDataAlone) {
  FixtureCheckpoint a = make_fixture(1);
  FixtureCheckpoint b = make_fixture(1);
  b.root["created"] = std::string("2026-12-01T00:00:00Z");
  b.root["step"] = std::int64_t{101};
  const std::string fa = write("a.h5", a);
  const std::string fb = write("b.h5", b);
  ckpt::DiffResult r = ckpt::diff_files(MPI_COMM_WORLD, fa, fb, 0.0);
  EXPECT_TRUE(r.equal);
  EXPECT_EQ(r.tensors.size(), 9U);
  const std::vector<std::string> metadata{
      "created: \"2026-11-27T14:02:11Z\" | \"2026-12-01T00:00:00Z\"", "step: 100 | 101"};
  EXPECT_EQ(r.metadata, metadata);
  ckpt::Outcome o = ckpt::diff(MPI_COMM_WORLD, fa, fb, 0.0);
  EXPECT_EQ(o.exit_code, 0);
  if (world_rank() == 0) {
    EXPECT_EQ(lines_of(o.out).back(), "verdict: equal: 9 tensors, bit for bit");
  }

  // B: linear1.weight with two elements changed, linear2.bias with another shape, norm's buffer
  // gone, one extra state.
  auto& w = b.tensor("/model/linear1/weight");
  w.values[2] += 1e-4F;
  w.values[7] = -w.values[7];
  b.tensor("/model/linear2/bias").shape = {1, 2};
  b.remove("/model/norm/running_mean");
  b.tensors.push_back({"/optimizer/extra/state",
                       {3},
                       {1.0F, 2.0F, 3.0F},
                       "",
                       std::nullopt,
                       true,
                       tessera::io::ElementType::f32});
  const std::string fc = write("c.h5", b);
  // Expected, computed here with naive loops over the fixture's values.
  const auto& va = a.tensor("/model/linear1/weight").values;
  const auto& vb = w.values;
  double max_abs = 0.0;
  double max_b = 0.0;
  for (std::size_t i = 0; i < va.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(static_cast<double>(va[i]) - static_cast<double>(vb[i])));
    max_b = std::max(max_b, std::abs(static_cast<double>(vb[i])));
  }
  for (const double tolerance : {0.0, 1e-3, 10.0}) {
    r = ckpt::diff_files(MPI_COMM_WORLD, fa, fc, tolerance);
    EXPECT_FALSE(r.equal);
    using S = ckpt::TensorDiff::Status;
    std::map<std::string, const ckpt::TensorDiff*> by;
    for (const auto& d : r.tensors) {
      by[d.path] = &d;
    }
    ASSERT_EQ(r.tensors.size(), 10U);
    const ckpt::TensorDiff& dw = *by.at("/model/linear1/weight");
    EXPECT_EQ(dw.differing, 2);
    EXPECT_EQ(dw.max_abs, max_abs);
    EXPECT_EQ(dw.max_rel, max_abs / max_b);
    EXPECT_EQ(dw.status, tolerance >= max_abs / max_b ? S::within : S::differs);
    EXPECT_EQ(by.at("/model/linear2/bias")->status, S::shape);
    EXPECT_EQ(by.at("/model/norm/running_mean")->status, S::only_a);
    EXPECT_EQ(by.at("/optimizer/extra/state")->status, S::only_b);
    EXPECT_EQ(by.at("/model/linear1/bias")->status, S::equal);
    EXPECT_EQ(by.at("/model/linear1/bias")->max_abs, 0.0);
  }
  // An absolute allowance: within when max |A-B| <= atol + tolerance * max |B|.
  using S = ckpt::TensorDiff::Status;
  const auto weight_status = [&](double tolerance, double atol) {
    for (const auto& d : ckpt::diff_files(MPI_COMM_WORLD, fa, fc, tolerance, atol).tensors) {
      if (d.path == "/model/linear1/weight") {
        return d.status;
      }
    }
    return S::only_a;
  };
  EXPECT_EQ(weight_status(0.0, max_abs), S::within);
  EXPECT_EQ(weight_status(0.0, max_abs * 0.99), S::differs);
  EXPECT_EQ(weight_status(0.5 * max_abs / max_b, 0.51 * max_abs), S::within);
  EXPECT_EQ(weight_status(0.5 * max_abs / max_b, 0.49 * max_abs), S::differs);
  // Only the changed tensor, within a tolerance: equal within tolerance, exit 0.
  FixtureCheckpoint d = make_fixture(1);
  d.tensor("/model/linear1/weight").values[2] += 1e-4F;
  const std::string fd = write("d.h5", d);
  o = ckpt::diff(MPI_COMM_WORLD, fa, fd, 1e-3);
  EXPECT_EQ(o.exit_code, 0);
  o = ckpt::diff(MPI_COMM_WORLD, fa, fd, 0.0);
  EXPECT_EQ(o.exit_code, 1);
  if (world_rank() == 0) {
    EXPECT_EQ(lines_of(o.out).back(),
              "verdict: different: 1 of 9 tensors differ (1 beyond tolerance)");
  }
  o = ckpt::diff(MPI_COMM_WORLD, fa, fc, 0.0);
  if (world_rank() == 0) {
    EXPECT_EQ(lines_of(o.out).back(),
              "verdict: different: 4 of 10 tensors differ (1 beyond "
              "tolerance, 1 only in A, 1 only in B, 1 with another shape)");
  }
  EXPECT_EQ(input_error_of([&] { ckpt::diff(MPI_COMM_WORLD, fa, path("none.h5"), 0.0); }),
            path("none.h5") + ": no such file");
}

// --- export ------------------------------------------------------------------------------------

namespace {
std::uint64_t le(const std::string& s, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) {
    v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  }
  return v;
}

// A reader for what numpy.savez writes (stored members, ZIP64 or not), written for this test.
std::map<std::string, std::string> read_zip(const std::string& path) {
  const std::string s = read_bytes(path);
  std::map<std::string, std::string> out;
  const std::size_t eocd = s.rfind(std::string("PK\x05\x06", 4));
  EXPECT_NE(eocd, std::string::npos);
  if (eocd == std::string::npos) {
    return out;
  }
  std::uint64_t entries = le(s, eocd + 10, 2);
  std::uint64_t dir = le(s, eocd + 16, 4);
  if (entries == 0xFFFF || dir == 0xFFFFFFFF) {
    EXPECT_EQ(s.substr(eocd - 20, 4), std::string("PK\x06\x07", 4));
    const std::size_t record = le(s, eocd - 20 + 8, 8);
    EXPECT_EQ(s.substr(record, 4), std::string("PK\x06\x06", 4));
    entries = le(s, record + 32, 8);
    dir = le(s, record + 48, 8);
  }
  std::size_t p = dir;
  for (std::uint64_t e = 0; e < entries; ++e) {
    EXPECT_EQ(s.substr(p, 4), std::string("PK\x01\x02", 4));
    EXPECT_EQ(le(s, p + 10, 2), 0U) << "stored, not compressed";
    const auto crc = static_cast<std::uint32_t>(le(s, p + 16, 4));
    std::uint64_t csize = le(s, p + 20, 4);
    std::uint64_t usize = le(s, p + 24, 4);
    const std::size_t name_len = le(s, p + 28, 2);
    const std::size_t extra_len = le(s, p + 30, 2);
    const std::size_t comment_len = le(s, p + 32, 2);
    std::uint64_t local = le(s, p + 42, 4);
    const std::string name = s.substr(p + 46, name_len);
    std::size_t x = p + 46 + name_len;
    while (x < p + 46 + name_len + extra_len) {
      const auto id = le(s, x, 2);
      const auto len = le(s, x + 2, 2);
      if (id == 1) {
        std::size_t f = x + 4;
        for (std::uint64_t* field : {&usize, &csize, &local}) {
          if (*field == 0xFFFFFFFF) {
            *field = le(s, f, 8);
            f += 8;
          }
        }
      }
      x += 4 + len;
    }
    EXPECT_EQ(csize, usize);
    EXPECT_EQ(s.substr(local, 4), std::string("PK\x03\x04", 4));
    const std::size_t data = local + 30 + le(s, local + 26, 2) + le(s, local + 28, 2);
    const std::string bytes = s.substr(data, usize);
    EXPECT_EQ(
        crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())),
        crc)
        << name;
    out[name] = bytes;
    p += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

// A .npy file → its shape text (as in the header: "(4, 3)") and float32 values.
std::pair<std::string, std::vector<float>> read_npy(const std::string& npy) {
  EXPECT_EQ(npy.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(npy[6], 1);
  const std::size_t len = le(npy, 8, 2);
  const std::string header = npy.substr(10, len);
  EXPECT_EQ((10 + len) % 64, 0U);
  EXPECT_EQ(header.back(), '\n');
  std::smatch m;
  EXPECT_TRUE(std::regex_search(
      header, m,
      std::regex(
          "^\\{'descr': '<f4', 'fortran_order': False, 'shape': (\\([0-9, ]*\\)), \\} *\n$")))
      << header;
  std::vector<float> values((npy.size() - 10 - len) / 4);
  std::memcpy(values.data(), npy.data() + 10 + len, values.size() * 4);
  return {m.size() > 1 ? m[1].str() : "", values};
}

bool system_numpy() {
  return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}
}  // namespace

TEST_F(CkptTest, ExportWritesTheModelTensorsAsH5AndNpz) {
  const FixtureCheckpoint c = make_fixture(4);
  const std::string f = write("src.h5", c);
  const std::map<std::string, std::string> shapes{{"linear1.weight", "(4, 3)"},
                                                  {"linear1.bias", "(4,)"},
                                                  {"linear2.weight", "(2, 4)"},
                                                  {"linear2.bias", "(2,)"},
                                                  {"norm.running_mean", "(4,)"}};
  // .npz (and the same forced to ZIP64 records), read back by the reader above.
  for (const bool zip64 : {false, true}) {
    const std::string out = path(zip64 ? "w64.npz" : "w.npz");
    const ckpt::Outcome o = ckpt::export_model(MPI_COMM_WORLD, f, out, zip64);
    EXPECT_EQ(o.exit_code, 0);
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      EXPECT_EQ(o.out, "exported 5 tensors (120 B) of " + f + " (step 100) to " + out + "\n");
      EXPECT_FALSE(fs::exists(path(zip64 ? ".w64.npz.partial" : ".w.npz.partial")));
      const auto members = read_zip(out);
      ASSERT_EQ(members.size(), 5U);
      for (const auto& [name, shape] : shapes) {
        const auto it = members.find(name + ".npy");
        ASSERT_NE(it, members.end()) << name;
        const auto [got_shape, values] = read_npy(it->second);
        EXPECT_EQ(got_shape, shape) << name;
        EXPECT_EQ(values, values_of(c, tessera::io::model_path(name))) << name;
      }
    }
  }
  // numpy itself, where Debian's python3-numpy is installed: both archives load, equal.
  if (world_rank() == 0 && system_numpy()) {
    const std::string script =
        "import numpy as np, sys\n"
        "a = np.load(sys.argv[1]); b = np.load(sys.argv[2])\n"
        "assert sorted(a.files) == sorted(b.files) == ['linear1.bias', 'linear1.weight', "
        "'linear2.bias', 'linear2.weight', 'norm.running_mean'], a.files\n"
        "assert all(a[k].dtype == np.float32 and (a[k] == b[k]).all() for k in a.files)\n"
        "assert a['linear1.weight'].shape == (4, 3)\n";
    std::ofstream(path("check.py")) << script;
    EXPECT_EQ(std::system(("/usr/bin/python3 " + path("check.py") + " " + path("w.npz") + " " +
                           path("w64.npz"))
                              .c_str()),
              0);
  }
  // .h5: datasets named like the parameters, with step and source.
  const std::string h5 = path("w.h5");
  EXPECT_EQ(ckpt::export_model(MPI_COMM_WORLD, f, h5).exit_code, 0);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    const hid_t file = H5Fopen(h5.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    for (const auto& t : c.tensors) {
      if (t.path.rfind("/model/", 0) != 0) {
        continue;
      }
      std::string name = t.path.substr(7);
      std::replace(name.begin(), name.end(), '/', '.');
      const hid_t d = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
      ASSERT_GE(d, 0) << name;
      std::vector<float> v(t.values.size());
      H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
      EXPECT_EQ(v, t.values) << name;
      H5Dclose(d);
    }
    EXPECT_LT(H5Oexists_by_name(file, "optimizer", H5P_DEFAULT), 1);
    EXPECT_EQ(step_attribute(file), 100);
    H5Fclose(file);
  }
  EXPECT_EQ(input_error_of([&] { ckpt::export_model(MPI_COMM_WORLD, f, path("w.pt")); }),
            "export: " + path("w.pt") + ": the output must end in .h5 (HDF5) or .npz (numpy)");
  FixtureCheckpoint bad = make_fixture(4);
  auto& w = bad.tensor("/model/linear2/weight");
  const std::string stored = corrupt(w, 0, 7.0F);
  const std::string g = write("bad.h5", bad);
  EXPECT_EQ(input_error_of([&] { ckpt::export_model(MPI_COMM_WORLD, g, path("bad.npz")); }),
            g + ": /model/linear2/weight: checksum " + fixture_checksum(w.values) +
                " does not match the stored " + stored +
                ": the checkpoint does not verify, nothing exported (tessera-ckpt verify " + g +
                ")");
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(path("bad.npz")));
  EXPECT_FALSE(fs::exists(path(".bad.npz.partial")));
}

// --- average -----------------------------------------------------------------------------------

TEST_F(CkptTest, AverageWritesTheMeanAsAVerifiedCheckpoint) {
  const std::vector<FixtureCheckpoint> in{make_fixture(1), make_fixture(2), make_fixture(5)};
  std::vector<std::string> files;
  for (std::size_t i = 0; i < in.size(); ++i) {
    files.push_back(write("in" + std::to_string(i) + ".h5", in[i]));
  }
  for (const std::size_t k : {std::size_t{2}, std::size_t{3}}) {
    const std::vector<std::string> inputs(files.begin(), files.begin() + static_cast<long>(k));
    const std::string out = path("avg" + std::to_string(k) + ".h5");
    const ckpt::Outcome o = ckpt::average(MPI_COMM_WORLD, inputs, out);
    EXPECT_EQ(o.exit_code, 0);
    EXPECT_FALSE(fs::exists(path(".avg" + std::to_string(k) + ".h5.partial")));
    EXPECT_TRUE(ckpt::verify_file(MPI_COMM_WORLD, out).ok());
    if (world_rank() != 0) {
      continue;
    }
    EXPECT_EQ(o.out, fmt::format("averaged {} checkpoints into {}: 5 model tensors averaged, 4 "
                                 "optimizer tensors copied from {} (224 B)\n",
                                 k, out, files[0]));
    const hid_t f = H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    for (std::size_t t = 0; t < in[0].tensors.size(); ++t) {
      const auto& ref = in[0].tensors[t];
      const hid_t d = H5Dopen2(f, ref.path.c_str(), H5P_DEFAULT);
      ASSERT_GE(d, 0) << ref.path;
      std::vector<float> got(ref.values.size());
      H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got.data());
      H5Dclose(d);
      const bool model = ref.path.rfind("/model/", 0) == 0;
      for (std::size_t e = 0; e < got.size(); ++e) {
        double sum = 0.0;
        for (std::size_t i = 0; i < k; ++i) {
          sum += static_cast<double>(in[i].tensors[t].values[e]);
        }
        // The model's tensors: the mean; the optimizer state: the first input's, copied.
        const float want = model ? static_cast<float>(sum / static_cast<double>(k)) : ref.values[e];
        ASSERT_EQ(got[e], want) << ref.path << "[" << e << "]";
      }
    }
    // Metadata from the first input, with the inputs listed.
    // (A list of fixed-length strings: Tessera writes no variable-length ones.)
    EXPECT_EQ(tessera::io::Attributes(f, "averaged").get_strings("averaged_from"), inputs);
    EXPECT_EQ(step_attribute(f), 100);
    H5Fclose(f);
  }

  // Inputs that do not match, or are damaged: one message, nothing written.
  FixtureCheckpoint shaped = make_fixture(2);
  shaped.tensor("/model/linear2/weight").shape = {4, 2};  // and its state: it verifies
  shaped.tensor("/optimizer/linear2/weight/momentum").shape = {4, 2};
  FixtureCheckpoint fewer = make_fixture(2);
  fewer.remove("/model/norm/running_mean");  // and counted so: each file verifies alone
  fewer.root["tensors"] = std::int64_t{8};
  FixtureCheckpoint more = make_fixture(2);
  more.root["tensors"] = std::int64_t{10};
  more.tensors.push_back({"/model/extra/weight",
                          {2},
                          {1.0F, 2.0F},
                          "buffer",
                          std::nullopt,
                          true,
                          tessera::io::ElementType::f32});
  FixtureCheckpoint damaged = make_fixture(2);
  auto& w = damaged.tensor("/model/linear1/bias");
  const std::string stored = corrupt(w, 1, 0.5F);
  const std::string fs_ = write("shaped.h5", shaped);
  const std::string ff = write("fewer.h5", fewer);
  const std::string fm = write("more.h5", more);
  const std::string fdm = write("damaged.h5", damaged);
  const std::string out = path("bad-avg.h5");
  EXPECT_EQ(input_error_of([&] {
              ckpt::average(MPI_COMM_WORLD, {files[0], fs_}, out);
            }),
            "average: /model/linear2/weight is (2, 4) in " + files[0] + " but (4, 2) in " + fs_);
  EXPECT_EQ(input_error_of([&] {
              ckpt::average(MPI_COMM_WORLD, {files[0], ff}, out);
            }),
            "average: " + ff + " has no /model/norm/running_mean, which " + files[0] +
                " has: the checkpoints must hold the same tensors");
  EXPECT_EQ(input_error_of([&] {
              ckpt::average(MPI_COMM_WORLD, {files[0], fm}, out);
            }),
            "average: " + fm + " has /model/extra/weight, which " + files[0] +
                " has not: the checkpoints must hold the same tensors");
  EXPECT_EQ(input_error_of([&] { ckpt::average(MPI_COMM_WORLD, {files[0]}, out); }),
            "average: needs two checkpoints or more, 1 given");
  EXPECT_EQ(input_error_of([&] {
              ckpt::average(MPI_COMM_WORLD, {files[0], fdm}, out);
            }),
            fdm + ": /model/linear1/bias: checksum " + fixture_checksum(w.values) +
                " does not match the stored " + stored +
                ": the checkpoint does not verify, nothing written (tessera-ckpt verify " + fdm +
                ")");
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(path(".bad-avg.h5.partial")));
}
