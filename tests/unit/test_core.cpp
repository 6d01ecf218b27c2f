// core: Tensor, Layout (uneven block splits), the Philox generator against its published
// known-answer vectors, and sharded initialisation equal bit for bit to whole initialisation.
#include "tessera/core/error.hpp"
#include "tessera/core/init.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/tensor.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <numeric>

using namespace tessera;

TEST(Tensor, ShapeAndStorage) {
  Tensor t("t", {2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.rank(), 3);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(to_string(t.shape()), "(2, 3, 4)");
  EXPECT_EQ(to_string(Shape{7}), "(7,)");
  for (float v : t.to_host()) {
    EXPECT_EQ(v, 0.0F);  // zero-initialised
  }
  std::vector<float> values(24);
  std::iota(values.begin(), values.end(), 0.0F);
  t.copy_from_host(values);
  const Tensor flat = t.reshaped({24});
  EXPECT_EQ(flat.data(), t.data());  // shares storage
  const Tensor copy = t.clone("copy");
  EXPECT_NE(copy.data(), t.data());
  EXPECT_EQ(copy.to_host(), values);
  EXPECT_FALSE(Tensor().defined());
  EXPECT_TRUE(t.defined());
}

TEST(Tensor, BadArgumentsThrowWithShapes) {
  Tensor t("weights", {2, 3});
  try {
    (void)t.reshaped({4, 2});
    FAIL() << "reshape to a different size must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'weights': cannot reshape (2, 3) to (4, 2)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(t.copy_from_host({1.0F}), Error);
  EXPECT_THROW((void)t.dim(2), Error);
  try {
    check_shape(t, {3, 2}, "Linear 'fc1' weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "Linear 'fc1' weight: expected shape (3, 2), got (2, 3)");
  }
}

// A size no machine holds is refused by name before Kokkos tries it; a shape whose element count
// overflows 64 bits too. Under ShapeOnly a tensor has its shape and no storage.
TEST(Tensor, SizesBeyondTheMachineAreRefusedAndShapeOnlyAllocatesNothing) {
  const double machine = physical_memory_bytes();
  ASSERT_GT(machine, 1e8);
  const auto rows = static_cast<Index>(machine / 4.0 / 1024.0) + 1;  // just over the machine
  try {
    Tensor t("fc.weight", {rows, 1024});
    FAIL() << "a tensor larger than the machine must be refused";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(fmt::format("tensor 'fc.weight' of shape ({}, 1024) needs ", rows), 0), 0u)
        << what;
    EXPECT_NE(what.find("more than this machine's"), std::string::npos) << what;
  }
  try {
    (void)numel({1 << 30, 1 << 30, 1 << 30});
    FAIL() << "an element count beyond 64 bits must be refused";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "shape 1073741824 × 1073741824 × 1073741824 has more elements than a 64-bit "
                 "count holds");
  }
  {
    const ShapeOnly shapes;
    EXPECT_TRUE(ShapeOnly::active());
    Tensor big("big", {rows / 2, 1024});  // half the machine: allowed, and not allocated
    EXPECT_EQ(big.numel(), rows / 2 * 1024);
    EXPECT_EQ(big.data(), nullptr);
    big.fill(0.0F);  // a no-op, not a write through null
    big.fill(1.0F);
  }
  EXPECT_FALSE(ShapeOnly::active());
  EXPECT_NE(Tensor("small", {4}).data(), nullptr);
}

// UTF-8 as RFC 3629 has it (no overlong forms, surrogates or code points beyond U+10FFFF), and
// printable() escaping control bytes and everything that is not UTF-8.
TEST(Strings, Utf8LengthIsStrictAndPrintableEscapes) {
  EXPECT_EQ(utf8_length("a", 0), 1u);
  EXPECT_EQ(utf8_length("\xc3\xa9", 0), 2u);          // é
  EXPECT_EQ(utf8_length("\xe2\x82\xac", 0), 3u);      // €
  EXPECT_EQ(utf8_length("\xf0\x9f\x98\x80", 0), 4u);  // U+1F600
  EXPECT_EQ(utf8_length("\xc0\xaf", 0), 0u);          // overlong '/'
  EXPECT_EQ(utf8_length("\xed\xa0\x80", 0), 0u);      // a surrogate
  EXPECT_EQ(utf8_length("\xf4\x90\x80\x80", 0), 0u);  // beyond U+10FFFF
  EXPECT_EQ(utf8_length("\xf6\xa4\x90\x96", 0), 0u);  // the fuzzer's: no such lead byte
  EXPECT_EQ(utf8_length("\xe2\x82", 0), 0u);          // cut short
  EXPECT_EQ(printable("ckpt-1.h5\x1b[31m\x07 caf\xc3\xa9 \xff"),
            "ckpt-1.h5\\x1b[31m\\x07 caf\xc3\xa9 \\xff");
}

TEST(Layout, BlockRangesCoverEveryElementOnce) {
  for (Index n : {0, 1, 7, 10, 128}) {
    for (int parts : {1, 2, 3, 4, 5}) {
      Index next = 0;
      for (int p = 0; p < parts; ++p) {
        const Range r = block_range(n, parts, p);
        EXPECT_EQ(r.offset, next);
        EXPECT_TRUE(r.count == n / parts || r.count == n / parts + 1);
        next += r.count;
      }
      EXPECT_EQ(next, n);
    }
  }
  // Uneven: 10 over 3 is 4, 3, 3.
  EXPECT_EQ(block_range(10, 3, 0).count, 4);
  EXPECT_EQ(block_range(10, 3, 1).offset, 4);
  EXPECT_EQ(block_range(10, 3, 2).offset, 7);
}

TEST(Layout, LocalShapeAndOffset) {
  const Layout l = Layout::split({10, 6}, 0, GridAxis::tensor);
  EXPECT_FALSE(l.is_replicated());
  const GridPlace p = GridPlace::single().with(GridAxis::tensor, 3, 2);
  EXPECT_EQ(l.local_shape(p), (Shape{3, 6}));
  EXPECT_EQ(l.local_offset(p), (Shape{7, 0}));
  EXPECT_EQ(l.to_string(), "(10, 6) dim 0 over tensor");

  Layout two = Layout::split({5, 8}, 1, GridAxis::data);
  two.and_split(0, GridAxis::spatial0);
  const GridPlace q = GridPlace::single().with(GridAxis::data, 3, 1).with(GridAxis::spatial0, 2, 1);
  EXPECT_EQ(two.local_shape(q), (Shape{2, 3}));
  EXPECT_EQ(two.local_offset(q), (Shape{3, 3}));
  EXPECT_THROW(two.and_split(0, GridAxis::tensor), Error);  // dim 0 already split
  EXPECT_THROW(Layout::replicated({4}).and_split(1, GridAxis::data), Error);
  EXPECT_EQ(Layout::replicated({4}).to_string(), "(4,) replicated");
  EXPECT_TRUE(Layout::replicated({4}).is_replicated());
}

TEST(Layout, StridedSplitHoldsItsBlockOfEverySegment) {
  // A fused (12, 4) weight of 3 segments of 4 rows (QKV-style) over 2 tensor ranks: each rank
  // holds rows 2 of every segment — rank 1 holds global rows 2-3, 6-7, 10-11, in that order.
  const Layout l = Layout::split({12, 4}, 0, GridAxis::tensor, 3);
  const GridPlace p = GridPlace::single().with(GridAxis::tensor, 2, 1);
  EXPECT_EQ(l.local_shape(p), (Shape{6, 4}));
  EXPECT_EQ(l.to_string(), "(12, 4) dim 0 over tensor/3");
  const std::vector<Block> blocks = l.blocks(p);
  ASSERT_EQ(blocks.size(), 3U);
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(blocks[k].local_offset, (Shape{static_cast<Index>(2 * k), 0}));
    EXPECT_EQ(blocks[k].global_offset, (Shape{static_cast<Index>(4 * k + 2), 0}));
    EXPECT_EQ(blocks[k].count, (Shape{2, 4}));
  }
  std::vector<Index> rows;
  const std::vector<Index> g = l.global_indices(p);
  for (size_t i = 0; i < g.size(); i += 4) {
    rows.push_back(g[i] / 4);
  }
  EXPECT_EQ(rows, (std::vector<Index>{2, 3, 6, 7, 10, 11}));
  EXPECT_THROW(l.local_offset(p), Error);  // several blocks: no single offset
  EXPECT_THROW(Layout::split({10, 4}, 0, GridAxis::tensor, 3), Error);  // 10 rows, 3 segments
}

TEST(Layout, EveryElementHasOneOwnerAcrossTheRanks) {
  // Over every rank of a data × tensor grid, the blocks of a (7, 5) tensor split unevenly by
  // columns over 3 tensor ranks (and replicated over 2 data ranks) cover each global element once
  // per data coordinate.
  const Layout l = Layout::split({7, 5}, 1, GridAxis::tensor);
  EXPECT_EQ(l.split_axes(), AxisSet{GridAxis::tensor});
  EXPECT_TRUE(l.replicated_axes().contains(GridAxis::data));
  EXPECT_FALSE(l.replicated_axes().contains(GridAxis::tensor));
  std::vector<int> covered(35, 0);
  for (int t = 0; t < 3; ++t) {
    const GridPlace p = GridPlace::single().with(GridAxis::tensor, 3, t);
    for (Index g : l.global_indices(p)) {
      ++covered[static_cast<size_t>(g)];
    }
  }
  EXPECT_EQ(std::count(covered.begin(), covered.end(), 1), 35);
  // Partial: the values are addends over an axis; that axis neither splits nor replicates.
  Layout partial = Layout::replicated({3});
  partial.and_partial(GridAxis::data);
  EXPECT_EQ(partial.to_string(), "(3,) partial over data");
  EXPECT_FALSE(partial.is_replicated());
  EXPECT_FALSE(partial.replicated_axes().contains(GridAxis::data));
  EXPECT_THROW(Layout::split({4}, 0, GridAxis::data).and_partial(GridAxis::data), Error);
  // Axis sets.
  const AxisSet dt{GridAxis::data, GridAxis::tensor};
  EXPECT_EQ(dt.to_string(), "{data, tensor}");
  EXPECT_EQ((dt - AxisSet{GridAxis::data}).to_string(), "{tensor}");
  EXPECT_TRUE((AxisSet::all() - dt).contains(GridAxis::pipeline));
  const GridPlace q = GridPlace::single().with(GridAxis::data, 2, 1).with(GridAxis::tensor, 2, 0);
  EXPECT_EQ(q.nontrivial(), dt);
  EXPECT_TRUE(q.first_on(AxisSet{GridAxis::tensor}));
  EXPECT_FALSE(q.first_on(dt));
}

TEST(Layout, BlocksOfALocalRangeCoverItOnce) {
  // Every range of the local block of a strided, uneven layout: its blocks hold exactly the
  // range's elements, each once, at their global indices.
  const Layout l = Layout::split({6, 5}, 1, GridAxis::tensor).and_split(0, GridAxis::data, 2);
  const GridPlace p = GridPlace::single().with(GridAxis::tensor, 2, 0).with(GridAxis::data, 2, 1);
  const Shape local = l.local_shape(p);
  ASSERT_EQ(local, (Shape{2, 3}));
  const std::vector<Index> global = l.global_indices(p);
  const Index n = numel(local);
  for (Index first = 0; first < n; ++first) {
    for (Index count = 0; first + count <= n; ++count) {
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (const Block& b : l.blocks_of_range(p, first, count)) {
        for (Index r = 0; r < b.count[0]; ++r) {
          for (Index c = 0; c < b.count[1]; ++c) {
            const Index li = (b.local_offset[0] + r) * local[1] + b.local_offset[1] + c;
            const Index gi = (b.global_offset[0] + r) * 5 + b.global_offset[1] + c;
            ++seen[static_cast<size_t>(li)];
            EXPECT_EQ(global[static_cast<size_t>(li)], gi);
          }
        }
      }
      for (Index i = 0; i < n; ++i) {
        EXPECT_EQ(seen[static_cast<size_t>(i)], i >= first && i < first + count ? 1 : 0)
            << "range [" << first << ", " << first + count << "), element " << i;
      }
    }
  }
}

TEST(Layout, RangeBoxesAreRowMajorRuns) {
  // Elements [7, 23) of a (3, 4, 5) tensor: the rest of row (0, 1), whole rows to (1, 0), then
  // the start of row (1, 0): at most 2 × rank - 1 boxes, in order.
  const std::vector<Box> boxes = range_boxes({3, 4, 5}, 7, 16);
  ASSERT_EQ(boxes.size(), 3U);
  EXPECT_EQ(boxes[0].offset, (Shape{0, 1, 2}));
  EXPECT_EQ(boxes[0].count, (Shape{1, 1, 3}));
  EXPECT_EQ(boxes[1].offset, (Shape{0, 2, 0}));
  EXPECT_EQ(boxes[1].count, (Shape{1, 2, 5}));
  EXPECT_EQ(boxes[2].offset, (Shape{1, 0, 0}));
  EXPECT_EQ(boxes[2].count, (Shape{1, 0 + 1, 3}));
  EXPECT_EQ(range_boxes({3, 4}, 0, 12).size(), 1U);  // the whole tensor is one box
  EXPECT_TRUE(range_boxes({3, 4}, 5, 0).empty());
  EXPECT_EQ(range_boxes({}, 0, 1).size(), 1U);  // a scalar
}

TEST(Rng, PhiloxMatchesPublishedKnownAnswers) {
  // Random123 kat_vectors, philox4x32_10.
  struct Case {
    rng::Philox4x32 ctr;
    std::uint32_t k0, k1;
    std::uint32_t out[4];
  };
  const Case cases[] = {
      {{{0, 0, 0, 0}}, 0, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
       0xffffffff,
       0xffffffff,
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
       0xa4093822,
       0x299f31d0,
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Case& c : cases) {
    const rng::Philox4x32 r = rng::philox4x32(c.ctr, c.k0, c.k1);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(r.v[i], c.out[i]) << "word " << i;
    }
  }
}

TEST(Rng, UniformAndNormalMoments) {
  const rng::CounterRng gen(42, rng::hash_name("w"));
  const int n = 200000;
  double su = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const float u = gen.uniform(static_cast<std::uint64_t>(i));
    ASSERT_GE(u, 0.0F);
    ASSERT_LT(u, 1.0F);
    su += static_cast<double>(u);
    const double z = gen.normal(static_cast<std::uint64_t>(i));
    sn += z;
    sn2 += z * z;
  }
  // Standard errors: uniform mean 0.5 ± 0.0007, normal mean 0 ± 0.0023, variance 1 ± 0.0032.
  EXPECT_NEAR(su / n, 0.5, 0.003);
  EXPECT_NEAR(sn / n, 0.0, 0.01);
  EXPECT_NEAR(sn2 / n, 1.0, 0.015);
  EXPECT_NE(gen.uniform(0), rng::CounterRng(43, rng::hash_name("w")).uniform(0));
  EXPECT_NE(gen.uniform(0), rng::CounterRng(42, rng::hash_name("v")).uniform(0));
}

namespace {
// Initialises `global` whole, then every shard of `layout` over `parts` ranks of `axis`, and
// checks that each shard is the matching block of the whole tensor, bit for bit.
void expect_shards_equal_whole(const Shape& global, int dim, GridAxis axis, int parts,
                               const InitSpec& spec) {
  const std::string name = "layer.weight";
  const Tensor whole("whole", global);
  init_shard(whole, Layout::replicated(global), GridPlace::single(), 1234, name, spec);
  const std::vector<float> w = whole.to_host();
  const Layout layout = Layout::split(global, dim, axis);
  Index covered = 0;
  for (int p = 0; p < parts; ++p) {
    const GridPlace place = GridPlace::single().with(axis, parts, p);
    const Shape ls = layout.local_shape(place);
    const Shape off = layout.local_offset(place);
    const Tensor shard("shard", ls);
    init_shard(shard, layout, place, 1234, name, spec);
    const std::vector<float> s = shard.to_host();
    covered += shard.numel();
    // Walk the shard's elements in row-major order and compare with the whole tensor.
    std::vector<Index> idx(ls.size(), 0);
    for (Index i = 0; i < shard.numel(); ++i) {
      Index flat = 0;
      for (size_t d = 0; d < ls.size(); ++d) {
        flat = flat * global[d] + idx[d] + off[d];
      }
      ASSERT_EQ(std::memcmp(&s[static_cast<size_t>(i)], &w[static_cast<size_t>(flat)], 4), 0)
          << "part " << p << " of " << parts << ", element " << i;
      for (int d = static_cast<int>(ls.size()) - 1; d >= 0; --d) {
        if (++idx[static_cast<size_t>(d)] < ls[static_cast<size_t>(d)]) {
          break;
        }
        idx[static_cast<size_t>(d)] = 0;
      }
    }
  }
  EXPECT_EQ(covered, numel(global));
}
}  // namespace

TEST(Init, StridedShardsEqualWholeBitForBit) {
  // A fused (3·8, 6) weight over 3 tensor ranks: each shard is its rows of every segment.
  const Shape global{24, 6};
  const InitSpec spec = InitSpec::uniform(-0.5F, 0.5F);
  const Tensor whole("whole", global);
  init_shard(whole, Layout::replicated(global), GridPlace::single(), 99, "qkv.weight", spec);
  const std::vector<float> w = whole.to_host();
  const Layout layout = Layout::split(global, 0, GridAxis::tensor, 3);
  for (int part = 0; part < 3; ++part) {
    const GridPlace place = GridPlace::single().with(GridAxis::tensor, 3, part);
    const Tensor shard("shard", layout.local_shape(place));
    init_shard(shard, layout, place, 99, "qkv.weight", spec);
    const std::vector<float> s = shard.to_host();
    const std::vector<Index> g = layout.global_indices(place);
    for (size_t i = 0; i < s.size(); ++i) {
      ASSERT_EQ(std::memcmp(&s[i], &w[static_cast<size_t>(g[i])], 4), 0) << "part " << part;
    }
  }
}

TEST(Init, ShardsEqualWholeBitForBit) {
  for (int parts : {2, 3}) {
    for (const InitSpec& spec : {InitSpec::uniform(-0.1F, 0.1F), InitSpec::normal(0.0F, 0.02F)}) {
      expect_shards_equal_whole({10, 7}, 0, GridAxis::tensor, parts, spec);
      expect_shards_equal_whole({10, 7}, 1, GridAxis::tensor, parts, spec);
      expect_shards_equal_whole({5, 4, 3, 3}, 1, GridAxis::data, parts, spec);
      expect_shards_equal_whole({64, 3, 3, 3}, 0, GridAxis::tensor, parts, spec);
    }
  }
}

TEST(Init, DistributionsAndNames) {
  const Tensor a("a", {1000});
  init_shard(a, Layout::replicated({1000}), GridPlace::single(), 7, "a", InitSpec::constant(0.5F));
  for (float v : a.to_host()) {
    ASSERT_EQ(v, 0.5F);
  }
  init_shard(a, Layout::replicated({1000}), GridPlace::single(), 7, "a",
             InitSpec::uniform(-2.0F, 3.0F));
  for (float v : a.to_host()) {
    ASSERT_GE(v, -2.0F);
    ASSERT_LT(v, 3.0F);
  }
  // A different name is a different stream.
  const Tensor b("b", {1000});
  init_shard(b, Layout::replicated({1000}), GridPlace::single(), 7, "b",
             InitSpec::uniform(-2.0F, 3.0F));
  EXPECT_NE(a.to_host(), b.to_host());
  // Wrong local shape is an error that names the parameter and the layout.
  const Tensor wrong("w", {3});
  try {
    init_shard(wrong, Layout::split({10}, 0, GridAxis::tensor),
               GridPlace::single().with(GridAxis::tensor, 2, 0), 7, "fc.weight",
               InitSpec::constant(0));
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "init of parameter 'fc.weight' ((10,) dim 0 over tensor): expected shape (5,), "
                 "got (3,)");
  }
}

TEST(Strings, ClosestMatchForMisspellings) {
  EXPECT_EQ(tessera::edit_distance("kitten", "sitting"), 3U);
  EXPECT_EQ(tessera::edit_distance("", "abc"), 3U);
  const std::vector<std::string> keys{"kernel", "stride", "pad", "out", "bias"};
  EXPECT_EQ(closest_match("kernal", keys), "kernel");
  EXPECT_EQ(closest_match("strides", keys), "stride");
  EXPECT_EQ(closest_match("padding", keys), "");  // too far from "pad"
  EXPECT_EQ(closest_match("xyz", keys), "");
  EXPECT_EQ(join({"a", "b", "c"}), "a, b, c");
}

// The tools' check at the boundaries of their work: nothing before a stop signal, then an Error
// with the stopped exit code (75, never 0) naming the signal and what it left undone.
TEST(Signals, ThrowIfStoppedNamesTheSignalWithTheStoppedExitCode) {
  ASSERT_EQ(tessera::signals::stop_signal(), 0);
  EXPECT_NO_THROW(tessera::signals::throw_if_stopped("nothing written to w.npz"));
  tessera::signals::note_stop_signal(SIGTERM);
  tessera::signals::note_stop_signal(SIGINT);  // the first one stays
  try {
    tessera::signals::throw_if_stopped("nothing written to w.npz");
    FAIL() << "no throw after SIGTERM";
  } catch (const tessera::Error& e) {
    EXPECT_EQ(e.message(), "stopped by SIGTERM: nothing written to w.npz");
    EXPECT_EQ(e.exit_code(), tessera::signals::kExitStopped);
    EXPECT_EQ(tessera::signals::kExitStopped, 75);
  }
}
