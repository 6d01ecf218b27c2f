// Language-modeling token splits at any rank count: every window is context + 1 consecutive tokens
// of the stream with the targets the inputs shifted by one; each global batch is the same windows
// as the one a single rank reads, each rank holding its block of it; without shuffle the windows
// tile the stream; with it every epoch draws new starts from the seed, uniform over every position;
// seek() resumes exactly; bad streams and options give one clear error on every rank together; and
// `tessera-data import text` deals 64 KiB blocks to train and validation by its rule.
#include "commands.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"

#include "support/mpi.hpp"
#include "support/tiny_training.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <set>

using namespace tessera;

namespace {
using tessera::testing::SharedTempDir;
using tessera::testing::world_rank;
using tessera::testing::world_size;

constexpr Index kTokens = 1000;

// Pseudo-random ids in [0, vocab): a window read one token off, or from the wrong place, shows.
std::vector<std::int32_t> test_stream(Index n, std::int32_t vocab) {
  std::vector<std::int32_t> s(static_cast<size_t>(n));
  const rng::CounterRng gen(3, 4);
  for (Index i = 0; i < n; ++i) {
    s[static_cast<size_t>(i)] =
        static_cast<std::int32_t>(gen.bits(static_cast<std::uint64_t>(i)).v[0] % vocab);
  }
  return s;
}

// Rank 0 writes a dataset file whose split /train `fill` makes; every rank waits for it.
void write_file(const std::string& path, const std::function<void(const io::Group&)>& fill) {
  if (world_rank() == 0) {
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group root = f.root();
      root.attributes().set("format", std::string(io::kDatasetFormat));
      root.attributes().set("format_version", io::kDatasetVersion);
      fill(root.create_group("train"));
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// A language-modeling split of `stream` stored as `type` (u8 or i32) with @vocab = vocab.
void write_tokens(const std::string& path, const std::vector<std::int32_t>& stream,
                  io::ElementType type, std::int64_t vocab) {
  write_file(path, [&](const io::Group& g) {
    g.attributes().set("task", std::string("language_modeling"));
    g.attributes().set("vocab", vocab);
    g.attributes().set("tokenizer", std::string("bytes"));
    const auto n = static_cast<hsize_t>(stream.size());
    g.create_dataset("tokens", type, {n}, {std::min<hsize_t>(n, 256)})
        .write({{0}, {n}}, io::ElementType::i32, stream.data(), false);
  });
}

io::ReaderOptions options(Index batch, Index context, int prefetch = 2) {
  io::ReaderOptions o;
  o.batch = batch;
  o.context = context;
  o.seed = 17;
  o.prefetch = prefetch;
  o.data_rank = world_rank();
  o.data_size = world_size();
  return o;
}

// The same options on one data rank: the reference for every global batch.
io::ReaderOptions single(io::ReaderOptions o) {
  o.data_rank = 0;
  o.data_size = 1;
  o.prefetch = 0;
  return o;
}

std::vector<std::int32_t> labels_of(const io::Batch& b) {
  const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), b.labels);
  return std::vector<std::int32_t>(host.data(), host.data() + host.extent(0));
}

// Every rank's ids of one batch, in rank order.
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

// Checks that window k of `b` is the stream at its start, inputs and targets shifted by one.
void expect_windows(const io::Batch& b, const std::vector<std::int32_t>& stream,
                    const io::ReaderOptions& o) {
  const Index t = o.context;
  const std::vector<float> x = b.x.to_host();
  const std::vector<std::int32_t> y = labels_of(b);
  const auto n = static_cast<Index>(b.ids.size());
  ASSERT_EQ(b.x.shape(), (Shape{n, t}));
  ASSERT_EQ(static_cast<Index>(y.size()), n * t);
  EXPECT_FALSE(b.targets.defined());
  for (Index k = 0; k < n; ++k) {
    const std::int64_t s =
        io::window_start(static_cast<Index>(stream.size()), t, o.seed, b.cursor.epoch,
                         b.ids[static_cast<size_t>(k)], o.shuffle);
    ASSERT_GE(s, 0);
    ASSERT_LE(s + t + 1, static_cast<Index>(stream.size()));
    for (Index j = 0; j < t; ++j) {
      const auto at = static_cast<size_t>(k * t + j);
      ASSERT_EQ(x[at], static_cast<float>(stream[static_cast<size_t>(s + j)]))
          << "input " << j << " of window " << b.ids[static_cast<size_t>(k)];
      ASSERT_EQ(y[at], stream[static_cast<size_t>(s + j + 1)])
          << "target " << j << " of window " << b.ids[static_cast<size_t>(k)];
      if (j + 1 < t) {  // the targets are the inputs shifted by one, whatever the start
        ASSERT_EQ(static_cast<float>(y[at]), x[at + 1]);
      }
    }
  }
}

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

TEST(TokenSplit, InspectReportsTheStreamAndTheReaderItsWindows) {
  const SharedTempDir dir("tessera-tokens-test");
  const std::string path = dir.path() + "/t.h5";
  write_tokens(path, test_stream(kTokens, 256), io::ElementType::u8, 256);
  const io::SplitInfo info = io::inspect_split(path, "/train");
  EXPECT_EQ(info.task, io::Task::language_modeling);
  EXPECT_STREQ(io::task_name(info.task), "language_modeling");
  EXPECT_EQ(info.tokens, kTokens);
  EXPECT_EQ(info.vocab, 256);
  EXPECT_EQ(info.tokenizer, "bytes");
  EXPECT_EQ(info.x_type, io::ElementType::u8);
  EXPECT_EQ(info.samples, 0);
  const io::DatasetReader reader(path + ":/train", options(8, 16));
  EXPECT_EQ(reader.info().samples, (kTokens - 1) / 16);
  EXPECT_EQ(io::token_windows(kTokens, 16), (kTokens - 1) / 16);
  EXPECT_EQ(reader.sample_shape(), (Shape{16}));
  EXPECT_EQ(reader.batches_per_epoch(), ((kTokens - 1) / 16 + 7) / 8);
}

TEST(TokenSplit, WindowsAreTheStreamAndBatchesIndependentOfRankCount) {
  const SharedTempDir dir("tessera-tokens-test");
  struct Case {
    io::ElementType type;
    std::int32_t vocab;
    Index batch, context;
    int prefetch;
  };
  for (const Case& c :
       {Case{io::ElementType::u8, 256, 8, 16, 2}, Case{io::ElementType::u8, 97, 5, 7, 0},
        Case{io::ElementType::i32, 1000, 64, 10, 1}, Case{io::ElementType::i32, 50000, 40, 1, 2}}) {
    const std::string path = dir.path() + "/t.h5";
    const std::vector<std::int32_t> stream = test_stream(kTokens, c.vocab);
    write_tokens(path, stream, c.type, c.vocab);
    const io::ReaderOptions o = options(c.batch, c.context, c.prefetch);
    io::DatasetReader reader(path + ":/train", o);
    io::DatasetReader reference(path + ":/train", single(o));
    const Index windows = (kTokens - 1) / c.context;
    const std::int64_t per_epoch = (windows + c.batch - 1) / c.batch;
    ASSERT_EQ(reader.batches_per_epoch(), per_epoch);
    for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
      Index seen = 0;
      for (std::int64_t b = 0; b < per_epoch; ++b) {
        const io::Batch mine = reader.next();
        const io::Batch whole = reference.next();
        const std::string where = "batch " + std::to_string(b) + " of epoch " +
                                  std::to_string(epoch) + ", context " + std::to_string(c.context);
        EXPECT_EQ(mine.cursor, (io::Cursor{epoch, b}));
        EXPECT_EQ(mine.global_size, std::min(c.batch, windows - b * c.batch)) << where;
        EXPECT_EQ(mine.global_size, whole.global_size) << where;
        expect_windows(mine, stream, o);
        expect_windows(whole, stream, single(o));
        // This rank's block of the single-rank batch: ids, inputs and targets.
        const Range block = block_range(whole.global_size, world_size(), world_rank());
        EXPECT_EQ(mine.offset, block.offset) << where;
        ASSERT_EQ(static_cast<Index>(mine.ids.size()), block.count) << where;
        EXPECT_TRUE(std::equal(mine.ids.begin(), mine.ids.end(),
                               whole.ids.begin() + static_cast<std::ptrdiff_t>(mine.offset)))
            << where;
        const std::vector<float> wx = whole.x.to_host();
        const std::vector<std::int32_t> wy = labels_of(whole);
        const auto from = static_cast<std::ptrdiff_t>(mine.offset * c.context);
        const auto count = static_cast<std::ptrdiff_t>(block.count * c.context);
        EXPECT_EQ(mine.x.to_host(),
                  std::vector<float>(wx.begin() + from, wx.begin() + from + count))
            << where;
        EXPECT_EQ(labels_of(mine),
                  std::vector<std::int32_t>(wy.begin() + from, wy.begin() + from + count))
            << where;
        // The union of the ranks' windows is the whole batch, in order.
        EXPECT_EQ(gather_ids(mine.ids), whole.ids) << where;
        seen += whole.global_size;
      }
      EXPECT_EQ(seen, windows) << "epoch " << epoch;
    }
  }
}

TEST(TokenSplit, WithoutShuffleTheWindowsTileTheStream) {
  const SharedTempDir dir("tessera-tokens-test");
  const std::string path = dir.path() + "/t.h5";
  const std::vector<std::int32_t> stream = test_stream(kTokens, 256);
  write_tokens(path, stream, io::ElementType::u8, 256);
  for (bool drop_last : {false, true}) {
    io::ReaderOptions o = options(10, 8);
    o.shuffle = false;
    o.drop_last = drop_last;
    io::DatasetReader reader(path + ":/train", o);
    const Index windows = (kTokens - 1) / 8;  // 124
    ASSERT_EQ(reader.batches_per_epoch(), drop_last ? windows / 10 : (windows + 9) / 10);
    for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
      std::vector<std::int64_t> all;
      for (std::int64_t b = 0; b < reader.batches_per_epoch(); ++b) {
        const io::Batch batch = reader.next();
        EXPECT_EQ(batch.global_size, drop_last ? 10 : std::min<Index>(10, windows - b * 10));
        const std::vector<float> x = batch.x.to_host();
        const std::vector<std::int32_t> y = labels_of(batch);
        for (size_t k = 0; k < batch.ids.size(); ++k) {
          const auto s = static_cast<size_t>(batch.ids[k] * 8);  // window w starts at w·T
          for (size_t j = 0; j < 8; ++j) {
            ASSERT_EQ(x[k * 8 + j], static_cast<float>(stream[s + j]));
            ASSERT_EQ(y[k * 8 + j], stream[s + j + 1]);
          }
        }
        const std::vector<std::int64_t> ids = gather_ids(batch.ids);
        all.insert(all.end(), ids.begin(), ids.end());
      }
      std::vector<std::int64_t> tiles(static_cast<size_t>(drop_last ? windows / 10 * 10 : windows));
      std::iota(tiles.begin(), tiles.end(), 0);
      EXPECT_EQ(all, tiles) << "epoch " << epoch << (drop_last ? " with drop_last" : "");
    }
  }
}

TEST(TokenSplit, EveryEpochDrawsNewStartsFromTheSeed) {
  const SharedTempDir dir("tessera-tokens-test");
  const std::string path = dir.path() + "/t.h5";
  write_tokens(path, test_stream(kTokens, 256), io::ElementType::u8, 256);
  const io::ReaderOptions o = options(16, 8);
  // An epoch's inputs as one rank sees them (its block of every batch).
  auto epoch_inputs = [&](const io::ReaderOptions& opts, std::int64_t epoch) {
    io::DatasetReader r(path + ":/train", opts);
    r.seek({epoch, 0});
    std::vector<float> all;
    for (std::int64_t b = 0; b < r.batches_per_epoch(); ++b) {
      const std::vector<float> x = r.next().x.to_host();
      all.insert(all.end(), x.begin(), x.end());
    }
    return all;
  };
  const std::vector<float> e0 = epoch_inputs(o, 0);
  EXPECT_EQ(e0, epoch_inputs(o, 0));  // the same seed: the same windows
  EXPECT_NE(e0, epoch_inputs(o, 1));  // another epoch: other windows
  io::ReaderOptions other = o;
  other.seed = o.seed + 1;
  EXPECT_NE(e0, epoch_inputs(other, 0));  // another seed: other windows
  // The starts themselves, as every rank computes them.
  std::vector<std::int64_t> s0, s1;
  for (std::int64_t w = 0; w < 100; ++w) {
    s0.push_back(io::window_start(kTokens, 8, 17, 0, w, true));
    s1.push_back(io::window_start(kTokens, 8, 17, 1, w, true));
  }
  EXPECT_NE(s0, s1);
}

TEST(TokenSplit, StartsAreUniformOverEveryPosition) {
  // 20 tokens, context 4: starts 0..15. 16000 draws, 1000 expected per start (σ ≈ 31).
  std::vector<int> counts(16, 0);
  for (std::int64_t epoch = 0; epoch < 40; ++epoch) {
    for (std::int64_t w = 0; w < 400; ++w) {
      const std::int64_t s = io::window_start(20, 4, 5, epoch, w, true);
      ASSERT_GE(s, 0);
      ASSERT_LE(s, 15);
      ++counts[static_cast<size_t>(s)];
    }
  }
  for (size_t s = 0; s < counts.size(); ++s) {
    EXPECT_GT(counts[s], 850) << "start " << s;
    EXPECT_LT(counts[s], 1150) << "start " << s;
  }
}

TEST(TokenSplit, PrefetchSynchronousAndCacheGiveTheSameBatches) {
  const SharedTempDir dir("tessera-tokens-test");
  const std::string path = dir.path() + "/t.h5";
  write_tokens(path, test_stream(kTokens, 256), io::ElementType::u8, 256);
  io::DatasetReader prefetched(path + ":/train", options(12, 9, 3));
  io::DatasetReader synchronous(path + ":/train", options(12, 9, 0));
  io::ReaderOptions cached_options = options(12, 9, 1);
  cached_options.cache = true;
  io::DatasetReader cached(path + ":/train", cached_options);
  for (int i = 0; i < 14; ++i) {  // crosses an epoch boundary (10 batches per epoch)
    const io::Batch a = prefetched.next();
    const io::Batch b = synchronous.next();
    const io::Batch c = cached.next();
    EXPECT_EQ(a.cursor, b.cursor);
    EXPECT_EQ(a.ids, b.ids);
    EXPECT_EQ(a.ids, c.ids);
    EXPECT_EQ(a.x.to_host(), b.x.to_host());
    EXPECT_EQ(a.x.to_host(), c.x.to_host());
    EXPECT_EQ(labels_of(a), labels_of(b));
    EXPECT_EQ(labels_of(a), labels_of(c));
  }
}

TEST(TokenSplit, CursorResumesExactly) {
  const SharedTempDir dir("tessera-tokens-test");
  const std::string path = dir.path() + "/t.h5";
  write_tokens(path, test_stream(kTokens, 256), io::ElementType::u8, 256);
  io::DatasetReader first(path + ":/train", options(8, 12));
  ASSERT_EQ(first.batches_per_epoch(), 11);  // 83 windows
  for (int i = 0; i < 14; ++i) {
    (void)first.next();
  }
  const io::Cursor stop = first.cursor();
  EXPECT_EQ(stop, (io::Cursor{1, 3}));
  io::DatasetReader resumed(path + ":/train", options(8, 12));
  resumed.seek(stop);
  for (int i = 0; i < 12; ++i) {  // into epoch 2
    const io::Batch a = first.next();
    const io::Batch b = resumed.next();
    EXPECT_EQ(a.cursor, b.cursor);
    EXPECT_EQ(a.ids, b.ids);
    EXPECT_EQ(a.x.to_host(), b.x.to_host());
    EXPECT_EQ(labels_of(a), labels_of(b));
  }
}

TEST(TokenSplit, BadStreamsAndOptionsGiveOneClearErrorOnEveryRank) {
  const SharedTempDir dir("tessera-tokens-test");
  const auto open = [&](const std::string& path, const io::ReaderOptions& o) {
    return agreed_error([&] { const io::DatasetReader r(path + ":/train", o); });
  };
  const auto attributes = [](const io::Group& g, std::int64_t vocab) {
    g.attributes().set("task", std::string("language_modeling"));
    g.attributes().set("vocab", vocab);
  };
  const std::string p = dir.path() + "/bad.h5";
  const std::string at = p + ":/train: ";

  write_file(p, [&](const io::Group& g) { attributes(g, 256); });
  EXPECT_EQ(open(p, options(4, 8)), at + "dataset 'tokens' is missing");

  write_file(p, [&](const io::Group& g) {
    attributes(g, 256);
    std::vector<std::uint8_t> t(20, 1);
    g.create_dataset("tokens", io::ElementType::u8, {4, 5})
        .write({{0, 0}, {4, 5}}, io::ElementType::u8, t.data(), false);
  });
  EXPECT_EQ(open(p, options(4, 8)), at + "tokens has rank 2, expected (N,) token ids");

  write_file(p, [&](const io::Group& g) {
    attributes(g, 256);
    std::vector<float> t(20, 1.0F);
    g.create_dataset("tokens", io::ElementType::f32, {20})
        .write({{0}, {20}}, io::ElementType::f32, t.data(), false);
  });
  EXPECT_EQ(open(p, options(4, 8)), at + "tokens must be uint8 or int32 token ids (it is float32)");

  write_tokens(p, {65}, io::ElementType::u8, 256);
  EXPECT_EQ(open(p, options(4, 8)),
            at + "tokens holds 1 token(s), a language_modeling split needs at least 2");

  write_file(p, [&](const io::Group& g) {
    g.attributes().set("task", std::string("language_modeling"));
    std::vector<std::uint8_t> t(20, 1);
    g.create_dataset("tokens", io::ElementType::u8, {20})
        .write({{0}, {20}}, io::ElementType::u8, t.data(), false);
  });
  EXPECT_EQ(open(p, options(4, 8)),
            at + "attribute 'vocab' is missing (the vocabulary size: token ids are in [0, vocab))");

  const std::vector<std::int32_t> twenty(20, 1);
  write_tokens(p, twenty, io::ElementType::u8, 0);
  EXPECT_EQ(open(p, options(4, 8)), at + "vocab = 0 must be an integer in [1, 2^31)");
  write_tokens(p, twenty, io::ElementType::i32, std::int64_t{1} << 31);
  EXPECT_EQ(open(p, options(4, 8)), at + "vocab = 2147483648 must be an integer in [1, 2^31)");
  write_file(p, [&](const io::Group& g) {
    g.attributes().set("task", std::string("language_modeling"));
    g.attributes().set("vocab", 2.5);
    g.create_dataset("tokens", io::ElementType::i32, {20})
        .write({{0}, {20}}, io::ElementType::i32, twenty.data(), false);
  });
  EXPECT_EQ(open(p, options(4, 8)), at + "vocab = 2.5 must be an integer in [1, 2^31)");
  write_file(p, [&](const io::Group& g) {
    g.attributes().set("task", std::string("language_modeling"));
    g.attributes().set("vocab", std::string("many"));
    g.create_dataset("tokens", io::ElementType::i32, {20})
        .write({{0}, {20}}, io::ElementType::i32, twenty.data(), false);
  });
  EXPECT_EQ(open(p, options(4, 8)), at + "attribute vocab must be one integer in [1, 2^31)");

  std::vector<std::int32_t> ids(20, 3);
  ids[13] = 200;
  write_tokens(p, ids, io::ElementType::u8, 100);
  EXPECT_EQ(open(p, options(4, 8)), at + "tokens[13] = 200 is outside [0, vocab = 100)");
  ids[13] = 3;
  ids[7] = -1;
  write_tokens(p, ids, io::ElementType::i32, 1000);
  EXPECT_EQ(open(p, options(4, 8)), at + "tokens[7] = -1 is outside [0, vocab = 1000)");
  // inspect_split() checks the stream alone, with no reader options.
  EXPECT_EQ(agreed_error([&] { (void)io::inspect_split(p, "/train"); }),
            at + "tokens[7] = -1 is outside [0, vocab = 1000)");

  write_file(p, [&](const io::Group& g) {
    g.attributes().set("task", std::string("language-modeling"));
    g.attributes().set("vocab", std::int64_t{256});
  });
  EXPECT_EQ(open(p, options(4, 8)),
            at + "task = \"language-modeling\" is not classification, regression or "
                 "language_modeling");

  // A good stream of 10 tokens, and options that do not fit it.
  write_tokens(p, test_stream(10, 256), io::ElementType::u8, 256);
  EXPECT_EQ(open(p, options(4, 0)),
            at + "a language_modeling split needs a context (input tokens per window) >= 1, "
                 "got 0");
  EXPECT_EQ(open(p, options(4, 10)), at + "10 tokens are too few for context 10 (a window is 11 "
                                          "tokens)");
  EXPECT_EQ(open(p, options(4, 9)), "");  // one window of 9 inputs and 9 targets
  io::ReaderOptions o = options(4, 3);
  o.expect_sample_shape = Shape{4};
  EXPECT_EQ(open(p, o), at + "windows of context 3 are (3,) but the model takes (4,)");
  o = options(4, 3);
  o.drop_last = true;  // 3 windows
  EXPECT_EQ(open(p, o), at + "batch = 4 with drop_last leaves no batch of the 3 windows");
  o.expect_sample_shape = Shape{3};
  o.drop_last = false;
  EXPECT_EQ(open(p, o), "");

  // A context for a split of samples.
  const std::string samples = dir.path() + "/samples.h5";
  tessera::testing::write_tiny_dataset(samples);
  EXPECT_EQ(open(samples, options(4, 8)),
            samples +
                ":/train: context = 8 is for language_modeling splits; this one is "
                "classification");
  EXPECT_EQ(open(samples, options(4, 0)), "");
}

namespace {
// Reads a split's tokens with the HDF5 wrappers (rank 0).
std::vector<std::uint8_t> read_tokens(const std::string& path, const std::string& split) {
  const io::File f = io::File::open_serial(path);
  const io::Dataset d = f.root().open_group(split).open_dataset("tokens");
  std::vector<std::uint8_t> out(static_cast<size_t>(d.shape().at(0)));
  d.read_all(io::ElementType::u8, out.data());
  return out;
}

std::string import_error(const data::TextImportOptions& o) {
  try {
    data::import_text(o);
  } catch (const Error& e) {
    EXPECT_TRUE(e.on_all_ranks());
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ImportText, DealsBlocksToTrainAndValidation) {
  const SharedTempDir dir("tessera-tokens-test");
  // Two files: 5 blocks of 65536 bytes and 1000 more, the blocks told apart by their bytes.
  const size_t block = data::kTextBlockBytes;
  std::vector<std::uint8_t> text(5 * block + 1000);
  for (size_t i = 0; i < text.size(); ++i) {
    text[i] = static_cast<std::uint8_t>('a' + (i / block) * 3 + i % 3);
  }
  const std::string a = dir.path() + "/a.txt";
  const std::string b = dir.path() + "/b.txt";
  if (world_rank() == 0) {
    std::FILE* f = std::fopen(a.c_str(), "wb");
    std::fwrite(text.data(), 1, 3 * block + 17, f);
    std::fclose(f);
    f = std::fopen(b.c_str(), "wb");
    std::fwrite(text.data() + 3 * block + 17, 1, text.size() - 3 * block - 17, f);
    std::fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  data::TextImportOptions o;
  o.files = {a, b};
  o.output = dir.path() + "/out/text.h5";
  // f = 1/2: blocks 1, 3, 5 (the last, short one) are validation; f = 1/4: block 3 alone.
  for (const auto& [fraction, held_out] :
       {std::pair<double, std::set<size_t>>{0.5, {1, 3, 5}}, {0.25, {3}}}) {
    o.validation = fraction;
    EXPECT_EQ(import_error(o), "") << "fraction " << fraction;
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) {
      std::vector<std::uint8_t> train, validation;
      for (size_t k = 0; k * block < text.size(); ++k) {
        auto& to = held_out.count(k) != 0 ? validation : train;
        to.insert(
            to.end(), text.begin() + static_cast<std::ptrdiff_t>(k * block),
            text.begin() + static_cast<std::ptrdiff_t>(std::min(text.size(), (k + 1) * block)));
      }
      EXPECT_EQ(read_tokens(o.output, "train"), train) << "fraction " << fraction;
      EXPECT_EQ(read_tokens(o.output, "validation"), validation) << "fraction " << fraction;
      EXPECT_FALSE(std::filesystem::exists(o.output + ".partial"));
      const io::SplitInfo info = io::inspect_split(o.output, "/validation");
      EXPECT_EQ(info.task, io::Task::language_modeling);
      EXPECT_EQ(info.vocab, 256);
      EXPECT_EQ(info.tokenizer, "bytes");
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }

  const std::string who = "tessera-data import text: ";
  o.validation = 0.9;
  EXPECT_EQ(import_error(o), who + "--validation 0.9 must be in [0, 0.5]");
  o.validation = -0.1;
  EXPECT_EQ(import_error(o), who + "--validation -0.1 must be in [0, 0.5]");
  o.validation = 0.05;  // the first validation block would be block 19
  EXPECT_EQ(import_error(o), who +
                                 "--validation 0.05 leaves the validation split empty: its first "
                                 "block is block 19 (from byte 1245184), but the text has 328680 "
                                 "bytes; give more text or a larger --validation");
  o.files = {a, dir.path() + "/missing.txt"};
  EXPECT_EQ(import_error(o), who + dir.path() + "/missing.txt: no such file");
  o.files = {dir.path()};
  EXPECT_EQ(import_error(o), who + dir.path() + ": is a directory, not a text file");
  const std::string empty = dir.path() + "/empty.txt";
  const std::string one = dir.path() + "/one.txt";
  if (world_rank() == 0) {
    std::fclose(std::fopen(empty.c_str(), "wb"));
    std::FILE* f = std::fopen(one.c_str(), "wb");
    std::fputc('x', f);
    std::fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  o.files = {empty};
  EXPECT_EQ(import_error(o), who + empty + ": the input is empty (0 bytes)");
  o.files = {one, empty};
  o.validation = 0.0;
  EXPECT_EQ(import_error(o), who +
                                 "the train split would hold 1 token(s), fewer than the 2 a "
                                 "split needs (text of 1 byte(s), blocks of 65536, --validation "
                                 "0)");
}
