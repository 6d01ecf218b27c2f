// Checkpoints (docs/checkpoint-format.md): training 2N steps equals training N, restarting from the
// checkpoint and training N more — bit for bit on the same ranks, within 1e-5 on another rank
// count or ZeRO setting, bit for bit in deterministic mode; the commit protocol keeps the newest
// checkpoints and `latest` names a complete one; bad checkpoints are refused on every rank with
// every problem listed.
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "tessera/core/error.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/train/trainer.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

using namespace tessera;
using namespace tessera::testing;
namespace fs = std::filesystem;

namespace {

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { write_tiny_dataset(m_dir.path() + "/ds.h5"); }

  std::string dir(const std::string& name) const { return m_dir.path() + "/" + name; }

  // The tiny deck with a [checkpoint] section every 3 steps in `ckpt_dir`, and `overrides`.
  deck::Deck deck(const std::string& ckpt_dir, std::vector<std::string> overrides,
                  bool adamw = false) const {
    std::string text = kTinyDeck;
    if (adamw) {
      text.replace(text.find("momentum = 0.9\n"), 15, "");
      overrides.push_back("optimizer.type=adamw");
    }
    text += "[checkpoint]\nevery_steps = 3\nkeep = 2\n";
    overrides.push_back("data.train=" + dir("ds.h5") + ":/train");
    overrides.push_back("checkpoint.dir=" + ckpt_dir);
    overrides.push_back("run.output=" + ckpt_dir + "-run");
    return deck::parse(text, "ck.toml", overrides);
  }

  // Trains `d` on `comm` (to its end, or from its restart) and returns every parameter.
  static std::vector<std::vector<float>> train(const deck::Deck& d, MPI_Comm comm) {
    train::Trainer t(d, comm);
    t.run();
    return parameter_values(t.model());
  }

  SharedTempDir m_dir{"tessera-ckpt-test"};
};

void expect_bitwise(const std::vector<std::vector<float>>& a,
                    const std::vector<std::vector<float>>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << what;
    EXPECT_EQ(std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)), 0)
        << what << ": parameter " << i << " differs (max relative "
        << relative_difference(a[i], b[i]) << ") at " << world_size() << " ranks";
  }
}

void expect_close(const std::vector<std::vector<float>>& a,
                  const std::vector<std::vector<float>>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LE(relative_difference(a[i], b[i]), 1e-5)
        << what << ": parameter " << i << " at " << world_size() << " ranks";
  }
}

// The ranks {0, 1} of the world (MPI_COMM_NULL elsewhere).
MPI_Comm first_two_ranks() {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < 2 ? 0 : MPI_UNDEFINED, world_rank(), &c);
  return c;
}

}  // namespace

TEST(FlatRangeBoxes, CoverExactlyTheRangeInRowMajorOrder) {
  // Every range of a (3, 4, 5) and a (2, 3) dataset: the boxes' elements, enumerated row-major
  // box after box, are exactly offset, offset + 1, ..., and there are at most 2 × rank - 1.
  for (const std::vector<hsize_t>& shape :
       {std::vector<hsize_t>{3, 4, 5}, std::vector<hsize_t>{2, 3}, std::vector<hsize_t>{7}}) {
    hsize_t n = 1;
    for (hsize_t e : shape) {
      n *= e;
    }
    for (hsize_t offset = 0; offset < n; ++offset) {
      for (hsize_t count = 0; offset + count <= n; ++count) {
        const std::vector<io::Box> boxes = io::flat_range_boxes(shape, offset, count);
        EXPECT_LE(boxes.size(), 2 * shape.size() - 1);
        hsize_t next = offset;
        for (const io::Box& b : boxes) {
          std::vector<hsize_t> i(shape.size(), 0);  // index within the box
          for (bool more = true; more;) {
            hsize_t flat = 0;
            for (size_t d = 0; d < shape.size(); ++d) {
              flat = flat * shape[d] + b.offset[d] + i[d];
            }
            EXPECT_EQ(flat, next++);
            more = false;
            for (size_t d = shape.size(); d-- > 0;) {
              if (++i[d] < b.count[d]) {
                more = true;
                break;
              }
              i[d] = 0;
            }
          }
        }
        EXPECT_EQ(next, offset + count);
      }
    }
  }
}

TEST_F(CheckpointTest, RestartOnTheSameRanksIsBitForBit) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> variants{
      {"sgd", {}},
      {"sgd, zero-1", {"parallel.zero=1"}},
      {"sgd, accumulation", {"data.micro_batches=2"}},
      {"adamw", {}},
      {"adamw, zero-1", {"parallel.zero=1"}},
      {"deterministic",
       {"parallel.deterministic=true", "parallel.sample_groups=12", "data.drop_last=true"}},
  };
  int k = 0;
  for (const auto& [what, overrides] : variants) {
    const bool adamw = what.rfind("adamw", 0) == 0;
    const std::string full_dir = dir("full" + std::to_string(k));
    const auto full = train(deck(full_dir, overrides, adamw), MPI_COMM_WORLD);
    std::vector<std::string> again = overrides;
    again.push_back("checkpoint.restart=" + full_dir + "/ckpt-00000003.h5");
    const auto resumed =
        train(deck(dir("again" + std::to_string(k)), again, adamw), MPI_COMM_WORLD);
    expect_bitwise(resumed, full, what);
    ++k;
  }
}

TEST_F(CheckpointTest, TwoRankCheckpointRestartsOnAnyRankCountWithOrWithoutZero) {
  if (world_size() < 2) {
    GTEST_SKIP() << "a 2-rank checkpoint needs 2 ranks (this suite runs at 2, 3 and 4 too)";
  }
  // The reference: the whole run on this rank alone.
  const auto reference = train(deck(dir("ref" + std::to_string(world_rank())), {}), MPI_COMM_SELF);
  for (const std::string saved_zero : {"0", "1"}) {
    const std::string two = dir("two-zero" + saved_zero);
    MPI_Comm pair = first_two_ranks();
    if (pair != MPI_COMM_NULL) {
      train(deck(two, {"parallel.zero=" + saved_zero}), pair);
      MPI_Comm_free(&pair);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (const std::string zero : {"0", "1"}) {
      const std::string what =
          "saved on 2 ranks with zero " + saved_zero + ", restarted with zero " + zero;
      const std::vector<std::string> restart{"checkpoint.restart=" + two + "/ckpt-00000003.h5",
                                             "parallel.zero=" + zero};
      // On every rank of the world, and on this rank alone.
      expect_close(train(deck(dir("all-" + saved_zero + zero), restart), MPI_COMM_WORLD), reference,
                   what + " on " + std::to_string(world_size()) + " ranks");
      expect_close(
          train(deck(dir("one-" + saved_zero + zero + "-" + std::to_string(world_rank())), restart),
                MPI_COMM_SELF),
          reference, what + " on 1 rank");
    }
  }
}

TEST_F(CheckpointTest, DeterministicRestartOnAnotherRankCountIsBitForBit) {
  if (world_size() < 2) {
    GTEST_SKIP() << "a 2-rank checkpoint needs 2 ranks";
  }
  const std::vector<std::string> det{"parallel.deterministic=true", "parallel.sample_groups=12",
                                     "data.drop_last=true"};
  const auto reference = train(deck(dir("ref" + std::to_string(world_rank())), det), MPI_COMM_SELF);
  MPI_Comm pair = first_two_ranks();
  if (pair != MPI_COMM_NULL) {
    train(deck(dir("two"), det), pair);
    MPI_Comm_free(&pair);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  std::vector<std::string> restart = det;
  restart.push_back("checkpoint.restart=" + dir("two") + "/ckpt-00000003.h5");
  expect_bitwise(train(deck(dir("all"), restart), MPI_COMM_WORLD), reference,
                 "deterministic, restarted on " + std::to_string(world_size()) + " ranks");
  expect_bitwise(train(deck(dir("one" + std::to_string(world_rank())), restart), MPI_COMM_SELF),
                 reference, "deterministic, restarted on 1 rank");
}

TEST_F(CheckpointTest, SavingDoesNotChangeTheTraining) {
  // Saves after every step (ZeRO-1: the save also waits for the parameters' allgather) against
  // the same deck without a [checkpoint] section.
  for (const std::string zero : {"0", "1"}) {
    const auto saving =
        train(deck(dir("saving" + zero), {"checkpoint.every_steps=1", "parallel.zero=" + zero}),
              MPI_COMM_WORLD);
    const deck::Deck plain =
        deck::parse(kTinyDeck, "plain.toml",
                    {"data.train=" + dir("ds.h5") + ":/train",
                     "run.output=" + dir("plain-run" + zero), "parallel.zero=" + zero});
    ASSERT_FALSE(plain.checkpoint.enabled);
    expect_bitwise(saving, train(plain, MPI_COMM_WORLD), "zero " + zero + ", saving every step");
  }
}

TEST_F(CheckpointTest, CommitKeepsTheNewestAndLatestNamesTheLast) {
  train(deck(dir("keep"), {"checkpoint.every_steps=1", "checkpoint.keep=2"}), MPI_COMM_WORLD);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir("keep"))) {
    names.insert(e.path().filename().string());
  }
  EXPECT_EQ(names, (std::set<std::string>{"ckpt-00000005.h5", "ckpt-00000006.h5", "latest"}));
  std::ifstream latest(dir("keep") + "/latest");
  std::string line;
  std::getline(latest, line);
  EXPECT_EQ(line, "ckpt-00000006.h5");
}

TEST_F(CheckpointTest, AtStartSavesTheInitialWeights) {
  // checkpoint.at_start writes step 0 before the first step: the model as initialised, the same
  // as a fresh trainer's parameters, and a valid checkpoint to restart from.
  train::Trainer fresh(deck(dir("fresh"), {}), MPI_COMM_WORLD);
  const auto initial = parameter_values(fresh.model());
  train(deck(dir("start"), {"checkpoint.at_start=true", "checkpoint.keep=5"}), MPI_COMM_WORLD);
  const std::string file = dir("start") + "/ckpt-00000000.h5";
  ASSERT_TRUE(fs::exists(file));
  const io::File f = io::File::open_serial(file);
  EXPECT_EQ(f.root().attributes().get_int("step"), 0);
  size_t i = 0;
  for (const nn::Parameter* p : fresh.model().all_parameters()) {
    const io::Dataset ds = f.root().open_dataset(io::model_path(p->name).substr(1));
    std::vector<float> stored(static_cast<size_t>(p->value.numel()));
    ds.read_all(io::ElementType::f32, stored.data());
    EXPECT_EQ(std::memcmp(stored.data(), initial[i].data(), stored.size() * 4), 0) << p->name;
    ++i;
  }
  // Restarting from it and training 6 steps is the run that wrote it.
  expect_bitwise(train(deck(dir("from-start"), {"checkpoint.restart=" + file}), MPI_COMM_WORLD),
                 train(deck(dir("plain"), {}), MPI_COMM_WORLD), "restart from step 0");
}

TEST_F(CheckpointTest, AutoRestartStartsFreshThenResumesFromLatest) {
  const auto first = [&] {
    train::Trainer t(deck(dir("auto"), {"checkpoint.restart=auto"}), MPI_COMM_WORLD);
    EXPECT_EQ(t.run().steps, 6);  // nothing to resume: from step 0
    return parameter_values(t.model());
  }();
  train::Trainer again(deck(dir("auto"), {"checkpoint.restart=auto"}), MPI_COMM_WORLD);
  const train::RunSummary s = again.run();
  EXPECT_EQ(s.steps, 6);  // resumed at step 6 of 6: nothing left to train
  expect_bitwise(parameter_values(again.model()), first, "resumed from latest");
}

// The message of the input error (exit code 2, on every rank) that building a trainer of `d`
// throws, or "no error".
std::string build_error(const deck::Deck& d) {
  try {
    train::Trainer t(d, MPI_COMM_WORLD);
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_TRUE(e.on_all_ranks());
    return e.message();
  }
  return "no error";
}

TEST_F(CheckpointTest, AutoRestartWithLatestLostResumesFromTheNewestThatLoads) {
  // Checkpoints at steps 3 and 6, then `latest` lost: restart = "auto" resumes from step 6 (it
  // used to start afresh over them); with step 6 damaged too, from step 3, and trains the same.
  const std::string d = dir("lost");
  const auto full =
      train(deck(d, {"checkpoint.restart=auto", "checkpoint.keep=5"}), MPI_COMM_WORLD);
  const auto lose_latest = [&] {
    if (world_rank() == 0) {
      fs::remove(d + "/latest");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  lose_latest();
  {
    train::Trainer t(deck(d, {"checkpoint.restart=auto", "checkpoint.keep=5"}), MPI_COMM_WORLD);
    EXPECT_EQ(t.run().steps, 6);  // resumed at step 6 of 6
    expect_bitwise(parameter_values(t.model()), full, "resumed from the newest, latest lost");
  }
  lose_latest();
  if (world_rank() == 0) {
    fs::resize_file(d + "/ckpt-00000006.h5", fs::file_size(d + "/ckpt-00000006.h5") / 2);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_bitwise(train(deck(d, {"checkpoint.restart=auto", "checkpoint.keep=5"}), MPI_COMM_WORLD),
                 full, "resumed from step 3, step 6 damaged and latest lost");
}

TEST_F(CheckpointTest, LatestHoldingControlBytesIsPrintedEscaped) {
  const std::string d = dir("red");
  train(deck(d, {}), MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::ofstream(d + "/latest", std::ios::trunc) << "\x1b[31m\x07\n";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(build_error(deck(d, {"checkpoint.restart=auto"})),
            "checkpoint.restart = \"auto\": " + d +
                "/latest holds \"\\x1b[31m\\x07\", not the name of a checkpoint file");
}

TEST_F(CheckpointTest, LatestOfMoreThanOneShortLineIsRefusedQuotingItsStart) {
  const std::string d = dir("long");
  train(deck(d, {}), MPI_COMM_WORLD);
  const auto refused = [&](const std::string& text) {
    if (world_rank() == 0) {
      std::ofstream(d + "/latest", std::ios::trunc) << text;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return build_error(deck(d, {"checkpoint.restart=auto"}));
  };
  const std::string more = "checkpoint.restart = \"auto\": " + d +
                           "/latest holds more than the one line naming a checkpoint file (it "
                           "starts \"";
  // A second line: refused, not the first line taken silently.
  EXPECT_EQ(refused("ckpt-00000006.h5\nckpt-00000003.h5\n"), more + "ckpt-00000006.h5\")");
  // 10 MB of one line: read to 4 KiB, quoted to 200 characters.
  EXPECT_EQ(refused(std::string(10'000'000, 'a')), more + std::string(200, 'a') + "...\")");
  // The one line with or without its newline: resumed.
  for (const char* text : {"ckpt-00000006.h5\n", "ckpt-00000006.h5"}) {
    if (world_rank() == 0) {
      std::ofstream(d + "/latest", std::ios::trunc) << text;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    train::Trainer t(deck(d, {"checkpoint.restart=auto"}), MPI_COMM_WORLD);
    EXPECT_EQ(t.start_step(), 6) << text;
  }
}

TEST_F(CheckpointTest, BadCheckpointsAreRefusedOnEveryRankWithEveryProblem) {
  const std::string good_dir = dir("good");
  train(deck(good_dir, {}), MPI_COMM_WORLD);
  const std::string good = good_dir + "/ckpt-00000006.h5";
  const std::string bad = dir("bad.h5");
  const auto copy_good = [&] {
    if (world_rank() == 0) {
      fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  const auto restart_error = [&](const std::string& file, std::vector<std::string> overrides) {
    overrides.push_back("checkpoint.restart=" + file);
    try {
      train::Trainer t(deck(dir("r"), overrides), MPI_COMM_WORLD);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      EXPECT_TRUE(e.on_all_ranks());
      return e.message();
    }
    return std::string("no error");
  };

  EXPECT_EQ(restart_error(dir("none.h5"), {}), "checkpoint: " + dir("none.h5") + ": no such file");

  copy_good();  // truncated to half
  if (world_rank() == 0) {
    fs::resize_file(bad, fs::file_size(bad) / 2);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(restart_error(bad, {}).rfind("checkpoint: " + bad + ": ", 0), 0U);

  copy_good();  // one byte of /model/linear4/weight flipped
  if (world_rank() == 0) {
    haddr_t at = 0;
    {
      const io::File f = io::File::open_serial(bad);
      const io::Dataset ds = f.root().open_dataset("model/linear4/weight");
      at = H5Dget_offset(ds.id());
    }
    const int fd = ::open(bad.c_str(), O_RDWR);
    unsigned char byte = 0;
    ASSERT_EQ(::pread(fd, &byte, 1, static_cast<off_t>(at + 17)), 1);
    byte ^= 0x10;
    ASSERT_EQ(::pwrite(fd, &byte, 1, static_cast<off_t>(at + 17)), 1);
    ::close(fd);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const std::string flipped = restart_error(bad, {});
  EXPECT_EQ(flipped.rfind("checkpoint: " + bad +
                              " does not fit this run (1 problem):\n"
                              "  /model/linear4/weight: checksum 0x",
                          0),
            0U)
      << flipped;

  copy_good();  // a format version from the future
  if (world_rank() == 0) {
    io::File f = io::File::open_serial_rw(bad);
    f.root().attributes().set("format_version", std::int64_t{2});
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(restart_error(bad, {}),
            "checkpoint: " + bad +
                ": format_version 2 is not one this Tessera reads (it reads 1); a newer Tessera "
                "wrote it?");

  // Root attributes of the right type but out of range, or of another type: refused before
  // anything is read into the model (a negative step used to train on with loss -nan).
  const auto set_root = [&](const std::string& name, const auto& value) {
    copy_good();
    if (world_rank() == 0) {
      io::File f = io::File::open_serial_rw(bad);
      f.root().attributes().set(name, value);
      f.close();
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  set_root("step", std::int64_t{-5});
  EXPECT_EQ(restart_error(bad, {}), "checkpoint: " + bad +
                                        " does not fit this run (1 problem):\n"
                                        "  root attribute step = -5 must be >= 0");
  set_root("format_version", std::string("1"));
  EXPECT_EQ(restart_error(bad, {}),
            "checkpoint: " + bad + ": root attribute 'format_version' is a string, expected int64");
  set_root("cursor_batch", std::string("3"));
  EXPECT_EQ(restart_error(bad, {}),
            "checkpoint: " + bad +
                " does not fit this run (1 problem):\n"
                "  root attribute 'cursor_batch' is a string, expected int64");
  // A cursor past the end of an epoch of data.train (the file is otherwise sound).
  set_root("cursor_batch", std::int64_t{1000000});
  const std::string cursor = restart_error(bad, {});
  EXPECT_EQ(cursor.rfind("checkpoint: " + bad + ": its data cursor (epoch ", 0), 0U) << cursor;
  EXPECT_NE(cursor.find("batch 1000000) is outside an epoch of data.train"), std::string::npos)
      << cursor;

  // NaN weights under a checksum computed over them (what a diverged run would have written
  // without the trainer's check): the checksum matches, the values are refused.
  copy_good();
  if (world_rank() == 0) {
    io::File f = io::File::open_serial_rw(bad);
    {
      const io::Dataset ds = f.root().open_dataset("model/linear4/weight");
      std::vector<hsize_t> shape = ds.shape();
      std::vector<float> w(static_cast<size_t>(shape[0] * shape[1]));
      ds.read_all(io::ElementType::f32, w.data());
      w[3] = std::nanf("");
      w[7] = std::numeric_limits<float>::infinity();
      ds.write_range(0, w.size(), io::ElementType::f32, w.data(), false);
      ds.attributes().set("checksum", io::checksum_string(io::checksum_partial(
                                          w.data(), 0, static_cast<std::int64_t>(w.size()))));
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(restart_error(bad, {}), "checkpoint: " + bad +
                                        " does not fit this run (1 problem):\n"
                                        "  /model/linear4/weight: 2 values are not finite (NaN or "
                                        "infinite)");

  // Tensors the model does not have, or not as the format has them: the checks tessera-ckpt
  // verify makes too (io::tensor_problems, io::root_problems), worded the same, names escaped.
  const auto edit = [&](const std::function<void(const io::Group&)>& change) {
    copy_good();
    if (world_rank() == 0) {
      io::File f = io::File::open_serial_rw(bad);
      change(f.root());
      f.close();
    }
    MPI_Barrier(MPI_COMM_WORLD);
  };
  const auto one_problem = [&](const std::string& problem) {
    return "checkpoint: " + bad + " does not fit this run (1 problem):\n  " + problem;
  };
  // A dataset of the model's shape and checksum stored as float64 (read as float32, it passed).
  const auto rewrite = [](const io::Group& root, const std::string& path, io::ElementType type,
                          const std::string& kind) {
    const io::Dataset old = root.open_dataset(path.substr(1));
    const std::vector<hsize_t> shape = old.shape();
    std::vector<float> w(static_cast<size_t>(old.shape()[0] * old.shape()[1]));
    old.read_all(io::ElementType::f32, w.data());
    const std::string checksum = old.attributes().get_string("checksum");
    ASSERT_GE(H5Ldelete(root.id(), path.c_str(), H5P_DEFAULT), 0);
    const io::Dataset ds = root.open_group("model/linear4")
                               .create_dataset(path.substr(path.rfind('/') + 1), type, shape);
    ds.write_range(0, w.size(), io::ElementType::f32, w.data(), false);
    ds.attributes().set("checksum", checksum);
    ds.attributes().set("kind", kind);
  };
  edit([&](const io::Group& root) {
    rewrite(root, "/model/linear4/weight", io::ElementType::f64, "parameter");
  });
  EXPECT_EQ(restart_error(bad, {}),
            one_problem("/model/linear4/weight: dtype float64, expected float32"));
  // A kind that is not "parameter" or "buffer", holding an escape sequence (printed escaped).
  edit([&](const io::Group& root) {
    rewrite(root, "/model/linear4/weight", io::ElementType::f32, "\x1b[31m");
  });
  EXPECT_EQ(restart_error(bad, {}),
            one_problem("/model/linear4/weight: kind \"\\x1b[31m\" is not \"parameter\" or "
                        "\"buffer\""));
  // A group linked to its own ancestor (found by fuzzing: the walk of the file's groups recursed
  // until memory ran out): each group is walked once, and the tensors are all there and good.
  edit([&](const io::Group& root) {
    ASSERT_GE(H5Lcreate_hard(root.id(), "/model", root.id(), "/model/linear4/loop", H5P_DEFAULT,
                             H5P_DEFAULT),
              0);
  });
  EXPECT_EQ(restart_error(bad, {}), "no error");
  // An extra tensor, counted in `tensors` (a name with control bytes, printed escaped).
  std::int64_t tensors = 0;
  edit([&](const io::Group& root) {
    tensors = root.attributes().get_int("tensors");
    const io::Dataset ds = root.open_group("model")
                               .create_group("linear4\a")
                               .create_dataset("weight", io::ElementType::f32, {2});
    const float w[2] = {1.0F, 2.0F};
    ds.write_range(0, 2, io::ElementType::f32, w, false);
    ds.attributes().set("checksum", io::checksum_string(io::checksum_partial(w, 0, 2)));
    ds.attributes().set("kind", std::string("parameter"));
    root.attributes().set("tensors", tensors + 1);
  });
  EXPECT_EQ(restart_error(bad, {}), one_problem("/model/linear4\\x07/weight is not a tensor of "
                                                "this run's model or optimizer"));
  // `tensors` that does not count the file's tensors.
  MPI_Bcast(&tensors, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  set_root("tensors", tensors + 3);
  EXPECT_EQ(restart_error(bad, {}),
            one_problem(fmt::format("root attribute tensors = {}, but the file holds {} tensor "
                                    "datasets (under /model and /optimizer)",
                                    tensors + 3, tensors)));
  // Datasets outside /model and /optimizer are the format's to add (docs/checkpoint-format.md):
  // not judged, the file restarts.
  edit([&](const io::Group& root) {
    const float w[1] = {1.0F};
    root.create_group("notes")
        .create_dataset("x", io::ElementType::f32, {1})
        .write_range(0, 1, io::ElementType::f32, w, false);
  });
  EXPECT_EQ(restart_error(bad, {}), "no error");

  // Another model: linear4 has 9 outputs instead of 8 (its weight and bias, the next layer's
  // weight, and their momentum).
  std::string listed = restart_error(good, {"model.layers[4].linear.out=9"});
  EXPECT_EQ(listed,
            "checkpoint: " + good +
                " does not fit this run (6 problems):\n"
                "  /model/linear4/weight has shape (8, 12), the model's is (9, 12)\n"
                "  /model/linear4/bias has shape (8,), the model's is (9,)\n"
                "  /model/linear7/weight has shape (3, 8), the model's is (3, 9)\n"
                "  /optimizer/linear4/weight/momentum has shape (8, 12), the model's is (9, 12)\n"
                "  /optimizer/linear4/bias/momentum has shape (8,), the model's is (9,)\n"
                "  /optimizer/linear7/weight/momentum has shape (3, 8), the model's is (3, 9)");
}
