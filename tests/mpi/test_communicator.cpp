// The MPI Communicator at any rank count: every collective's result against a closed form computed
// here from the ranks' inputs, non-blocking progress and out-of-order completion, and the exact
// messages for bad arguments. Few collectives per test: ranks beyond the cores are oversubscribed.
#include "support/communicator_test.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/progress.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

using namespace tessera;
using namespace tessera::comm;
using namespace tessera::testing::collectives;

namespace {

class CommunicatorTest : public ::testing::Test {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD, "world"};
  const int rank = comm.rank();
  const int size = comm.size();
};

}  // namespace

TEST_F(CommunicatorTest, RankAndSizeAreTheWorlds) {
  int world_rank = -1;
  int world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(rank, world_rank);
  EXPECT_EQ(size, world_size);
  EXPECT_EQ(comm.name(), "world");
  EXPECT_STREQ(comm.backend(), "mpi");
  EXPECT_EQ(comm.memory(), Memory::host);
  // A duplicate of the world: same group, another context.
  int relation = MPI_UNEQUAL;
  MPI_Comm_compare(comm.mpi_comm(), MPI_COMM_WORLD, &relation);
  EXPECT_EQ(relation, MPI_CONGRUENT);
}

TEST_F(CommunicatorTest, AllreduceEveryOpMatchesTheClosedForm) {
  constexpr int n = 5;
  const auto values = [&](auto f) {
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) {
      v[static_cast<size_t>(i)] = static_cast<float>(f(rank, i));
    }
    return v;
  };
  // tests/support/communicator_test.hpp: each rank's terms and the results.
  std::vector<float> sum = values(sum_term);
  comm.allreduce(sum)->wait();
  std::vector<float> product = values(product_term);
  comm.allreduce(product, {ReduceOp::product})->wait();
  std::vector<float> low = values(min_max_term);
  std::vector<float> high = low;
  comm.allreduce(low, {ReduceOp::min})->wait();
  comm.allreduce(high, {ReduceOp::max})->wait();
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(i);
    EXPECT_EQ(sum[k], allreduce_sum(size, i)) << i;
    EXPECT_EQ(product[k], allreduce_product(size, i)) << i;
    EXPECT_EQ(low[k], allreduce_min(size, i)) << i;
    EXPECT_EQ(high[k], allreduce_max(size, i)) << i;
  }
}

TEST_F(CommunicatorTest, AllreduceOfATensorAndOfAPointer) {
  const Tensor t("test::allreduce", {2, 3});
  t.fill(static_cast<float>(rank + 1));
  comm.allreduce(t)->wait();
  // Ranks 1..S summed.
  EXPECT_EQ(t.to_host(), std::vector<float>(6, static_cast<float>(size * (size + 1) / 2)));

  std::vector<float> v{1.0F, 2.0F, 3.0F, 4.0F};
  comm.allreduce({v.data() + 1, 2}, {ReduceOp::sum})->wait();  // the middle two only
  EXPECT_EQ(v, (std::vector<float>{1.0F, 2.0F * static_cast<float>(size),
                                   3.0F * static_cast<float>(size), 4.0F}));
}

TEST_F(CommunicatorTest, ReduceScatterGivesEachRankItsBlock) {
  constexpr int count = 3;
  // Block b, element k of the output is input element j = b count + k over the ranks.
  std::vector<float> input(static_cast<size_t>(size * count));
  for (int j = 0; j < size * count; ++j) {
    input[static_cast<size_t>(j)] = scatter_term(rank, j);
  }
  std::vector<float> sum(count, -1.0F);
  std::vector<float> max(count, -1.0F);
  comm.reduce_scatter(input, sum)->wait();
  comm.reduce_scatter(input, max, {ReduceOp::max})->wait();
  for (int k = 0; k < count; ++k) {
    const int j = rank * count + k;
    EXPECT_EQ(sum[static_cast<size_t>(k)], scatter_sum(size, j));
    EXPECT_EQ(max[static_cast<size_t>(k)], scatter_max(size, j));
  }
}

TEST_F(CommunicatorTest, ReduceScatterInPlaceLeavesTheResultInThisRanksBlock) {
  constexpr int count = 3;
  std::vector<float> buffer(static_cast<size_t>(size * count));
  for (int j = 0; j < size * count; ++j) {
    buffer[static_cast<size_t>(j)] = scatter_term(rank, j);
  }
  comm.reduce_scatter(buffer, {buffer.data() + rank * count, count})->wait();
  for (int k = 0; k < count; ++k) {
    const int j = rank * count + k;
    EXPECT_EQ(buffer[static_cast<size_t>(j)], scatter_sum(size, j));
  }
}

TEST_F(CommunicatorTest, AllgatherPlacesBlocksInRankOrder) {
  constexpr int count = 3;
  std::vector<float> input(count);
  for (int k = 0; k < count; ++k) {
    input[static_cast<size_t>(k)] = static_cast<float>(10 * rank + k);
  }
  std::vector<float> output(static_cast<size_t>(size * count), -1.0F);
  comm.allgather(input, output)->wait();
  // In place: this rank's block of the output is the input.
  std::vector<float> in_place(static_cast<size_t>(size * count), -1.0F);
  for (int k = 0; k < count; ++k) {
    in_place[static_cast<size_t>(rank * count + k)] = static_cast<float>(10 * rank + k);
  }
  comm.allgather({in_place.data() + rank * count, count}, in_place)->wait();
  std::vector<float> expected;
  for (int r = 0; r < size; ++r) {
    for (int k = 0; k < count; ++k) {
      expected.push_back(static_cast<float>(10 * r + k));
    }
  }
  EXPECT_EQ(output, expected);
  EXPECT_EQ(in_place, expected);
}

TEST_F(CommunicatorTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < size; ++root) {
    std::vector<float> v(4, -1.0F);
    if (rank == root) {
      for (int i = 0; i < 4; ++i) {
        v[static_cast<size_t>(i)] = static_cast<float>(100 * root + i);
      }
    }
    comm.broadcast(v, {root})->wait();
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(v[static_cast<size_t>(i)], static_cast<float>(100 * root + i)) << "root " << root;
    }
  }
}

TEST_F(CommunicatorTest, SendRecvAroundARing) {
  // Each rank sends to the next and receives from the previous (itself at one rank).
  const int next = (rank + 1) % size;
  const int previous = (rank + size - 1) % size;
  const std::vector<float> out{static_cast<float>(rank), static_cast<float>(100 + rank)};
  std::vector<float> in(2, -1.0F);
  auto received = comm.recv(in, {previous, 7});
  auto sent = comm.send(out, {next, 7});
  received->wait();
  sent->wait();
  EXPECT_TRUE(received->is_completed());
  EXPECT_TRUE(sent->is_completed());
  EXPECT_EQ(in,
            (std::vector<float>{static_cast<float>(previous), static_cast<float>(100 + previous)}));
}

TEST_F(CommunicatorTest, TagsKeepMessagesApart) {
  // Two messages to the same peer, received in the opposite order by tag.
  const int next = (rank + 1) % size;
  const int previous = (rank + size - 1) % size;
  const std::vector<float> a{1.0F};
  const std::vector<float> b{2.0F, 2.0F};
  std::vector<float> got_a(1);
  std::vector<float> got_b(2);
  auto sa = comm.send(a, {next, 1});
  auto sb = comm.send(b, {next, 2});
  comm.recv(got_b, {previous, 2})->wait();
  comm.recv(got_a, {previous, 1})->wait();
  sa->wait();
  sb->wait();
  EXPECT_EQ(got_a, a);
  EXPECT_EQ(got_b, b);
}

TEST_F(CommunicatorTest, TestProgressesAnAllreduceWhileTheRankComputes) {
  constexpr int n = 1 << 16;
  std::vector<float> v(n, static_cast<float>(rank));
  auto work = comm.allreduce(v);
  // Local work between polls: the overlap a bucketed gradient reduction relies on.
  double local = 0.0;
  long polls = 0;
  while (!work->test()) {
    for (int i = 0; i < 1000; ++i) {
      local += static_cast<double>(i) * 1e-3;
    }
    ++polls;
  }
  EXPECT_GT(local, -1.0);
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(work->test());  // stays complete
  work->wait();               // returns at once
  const auto expected = static_cast<float>(size * (size - 1) / 2);
  for (int i = 0; i < n; i += 997) {
    ASSERT_EQ(v[static_cast<size_t>(i)], expected) << i << " after " << polls << " polls";
  }
}

TEST_F(CommunicatorTest, BackgroundProgressCompletesTransfersWhileTheRankMakesNoMpiCall) {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  ASSERT_EQ(level, MPI_THREAD_MULTIPLE) << "the MPI tests run as tessera does (support/mpi_main)";
  // 4 MiB around a ring: far above any eager limit, so a send completes only after its receiver
  // has taken part. This thread makes no MPI call on them: the helper thread must move them.
  const int next = (rank + 1) % size;
  const int previous = (rank + size - 1) % size;
  constexpr size_t n = size_t{1} << 20;
  const std::vector<float> out(n, static_cast<float>(rank));
  std::vector<float> in(n, -1.0F);
  auto received = comm.recv(in, {previous, 9});
  auto sent = comm.send(out, {next, 9});
  bool done = false;
  for (int round = 0; round < 600 && !done; ++round) {  // 30 s at most, then fail (not hang)
    BackgroundProgress progress({received.get(), sent.get()});
    ASSERT_TRUE(progress.active());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    progress.stop();  // joins: what the helper did is visible here
    done = received->is_completed() && sent->is_completed();
  }
  EXPECT_TRUE(done) << "the helper thread did not complete the transfers";
  received->wait();
  sent->wait();
  EXPECT_EQ(in[0], static_cast<float>(previous));
  EXPECT_EQ(in[n - 1], static_cast<float>(previous));
}

TEST_F(CommunicatorTest, OutstandingWorksCompleteInAnyOrder) {
  // Started in the same order on every rank, completed in reverse.
  std::vector<float> a(8, 1.0F);
  std::vector<float> gathered(static_cast<size_t>(size));
  const std::vector<float> mine{static_cast<float>(rank)};
  std::vector<float> c(3, rank == size - 1 ? 5.0F : 0.0F);
  auto wa = comm.allreduce(a);
  auto wb = comm.allgather(mine, gathered);
  auto wc = comm.broadcast(c, {size - 1});
  auto wd = comm.barrier();
  wd->wait();
  wc->wait();
  wb->wait();
  EXPECT_EQ(c, std::vector<float>(3, 5.0F));
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(gathered[static_cast<size_t>(r)], static_cast<float>(r));
  }
  wa->wait();
  EXPECT_EQ(a, std::vector<float>(8, static_cast<float>(size)));
  EXPECT_TRUE(wa->is_completed() && wb->is_completed() && wc->is_completed() && wd->is_completed());
}

TEST_F(CommunicatorTest, DroppingAWorkWaitsForIt) {
  std::vector<float> v(4, 2.0F);
  comm.allreduce(v);  // the Work dies at once: its destructor waits
  EXPECT_EQ(v, std::vector<float>(4, 2.0F * static_cast<float>(size)));
}

TEST_F(CommunicatorTest, ARecvOfAShorterMessageFailsOnCompletion) {
  const int next = (rank + 1) % size;
  const int previous = (rank + size - 1) % size;
  const std::vector<float> three(3, 1.0F);
  std::vector<float> five(5);
  const std::string from = "recv on communicator 'world' (rank " + std::to_string(rank) + " of " +
                           std::to_string(size) + ") from peer " + std::to_string(previous);
  auto sent = comm.send(three, {next, 3});
  EXPECT_EQ(error_of([&] {
              comm.recv(five, {previous, 3})->wait();
            }),
            from + " with tag 3: received 3 elements, expected 5");
  sent->wait();
}

// Device buffers on the MPI backend through host copies (set_device_copies, as a CUDA build sets
// them at start). Here "device" buffers are host memory flagged Memory::device, and the copies
// are counted memcpys: every collective's result as on host buffers, each buffer copied in when
// the operation starts (those it reads) and back only when it completes (those it writes).
TEST_F(CommunicatorTest, DeviceBuffersGoThroughHostCopiesWhenStagingIsSet) {
  struct Reset {
    ~Reset() { set_device_copies({}); }  // the other tests see device buffers refused
  } reset;
  int to_host = 0;
  int to_device = 0;
  std::thread::id copied_back_on;
  set_device_copies({[&](void* host, const void* device, std::size_t bytes) {
                       ++to_host;
                       std::memcpy(host, device, bytes);
                     },
                     [&](void* device, const void* host, std::size_t bytes) {
                       ++to_device;
                       copied_back_on = std::this_thread::get_id();
                       std::memcpy(device, host, bytes);
                     }});
  constexpr int n = 5;
  std::vector<float> sum(n);
  for (int i = 0; i < n; ++i) {
    sum[static_cast<size_t>(i)] = sum_term(rank, i);
  }
  const std::vector<float> mine = sum;
  auto work = comm.allreduce({sum.data(), n, Memory::device});
  EXPECT_EQ(sum, mine);  // the reduction lands in the host copy; back on completion only
  EXPECT_EQ(to_host, 1);
  EXPECT_EQ(to_device, 0);
  work->wait();
  EXPECT_EQ(to_device, 1);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(sum[static_cast<size_t>(i)], allreduce_sum(size, i)) << i;
  }
  // Tested from another thread (a halo exchange's progress thread), a staged operation completes
  // its transfer but copies back only on the thread that started it.
  sum = mine;
  work = comm.allreduce({sum.data(), n, Memory::device});
  bool tested = true;
  std::thread([&] {
    for (int k = 0; k < 1000 && tested; ++k) {
      tested = work->test();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }).join();
  EXPECT_FALSE(tested);
  EXPECT_EQ(to_device, 1);
  work->wait();
  EXPECT_EQ(to_device, 2);
  EXPECT_EQ(copied_back_on, std::this_thread::get_id());
  EXPECT_EQ(sum[0], allreduce_sum(size, 0));

  // reduce_scatter and allgather in place (the block inside the whole), staged as two buffers.
  constexpr int count = 3;
  std::vector<float> blocks(static_cast<size_t>(size * count));
  for (int j = 0; j < size * count; ++j) {
    blocks[static_cast<size_t>(j)] = scatter_term(rank, j);
  }
  comm.reduce_scatter({blocks.data(), size * count, Memory::device},
                      {blocks.data() + rank * count, count, Memory::device})
      ->wait();
  for (int k = 0; k < count; ++k) {
    const int j = rank * count + k;
    EXPECT_EQ(blocks[static_cast<size_t>(j)], scatter_sum(size, j));
  }
  std::vector<float> gathered(static_cast<size_t>(size * count), -1.0F);
  for (int k = 0; k < count; ++k) {
    gathered[static_cast<size_t>(rank * count + k)] = static_cast<float>(10 * rank + k);
  }
  comm.allgather({gathered.data() + rank * count, count, Memory::device},
                 {gathered.data(), size * count, Memory::device})
      ->wait();
  for (int r = 0; r < size; ++r) {
    for (int k = 0; k < count; ++k) {
      EXPECT_EQ(gathered[static_cast<size_t>(r * count + k)], static_cast<float>(10 * r + k));
    }
  }
  // A host input into a device output: only the output is copied (back).
  const std::vector<float> one{static_cast<float>(rank)};
  std::vector<float> ranks(static_cast<size_t>(size), -1.0F);
  const int host_before = to_host;
  comm.allgather(one, {ranks.data(), size, Memory::device})->wait();
  EXPECT_EQ(to_host, host_before);  // an output alone is not copied in
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(ranks[static_cast<size_t>(r)], static_cast<float>(r));
  }

  std::vector<float> root(4, -1.0F);
  if (rank == size - 1) {
    root = {1.0F, 2.0F, 3.0F, 4.0F};
  }
  comm.broadcast({root.data(), 4, Memory::device}, {size - 1})->wait();
  EXPECT_EQ(root, (std::vector<float>{1.0F, 2.0F, 3.0F, 4.0F}));

  // A ring of sends and receives, the receive completed through test().
  const int next = (rank + 1) % size;
  const int previous = (rank + size - 1) % size;
  std::vector<float> out{static_cast<float>(rank), static_cast<float>(100 + rank)};
  std::vector<float> in(2, -1.0F);
  auto received = comm.recv({in.data(), 2, Memory::device}, {previous, 3});
  auto sent = comm.send({out.data(), 2, Memory::device}, {next, 3});
  while (!received->test()) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  sent->wait();
  EXPECT_TRUE(received->is_completed());
  EXPECT_EQ(in,
            (std::vector<float>{static_cast<float>(previous), static_cast<float>(100 + previous)}));
  // In all: two allreduces 1 in 1 back each, reduce_scatter 1 + 1, allgather in place 1 + 1, the
  // mixed allgather 0 + 1, broadcast 1 + 1, send 1 + 0, recv 0 + 1.
  EXPECT_EQ(to_host, 6);
  EXPECT_EQ(to_device, 7);
}

TEST_F(CommunicatorTest, BadArgumentsAreRefusedBeforeAnythingStarts) {
  const std::string at = " on communicator 'world' (rank " + std::to_string(rank) + " of " +
                         std::to_string(size) + ")";
  std::vector<float> v(static_cast<size_t>(2 * size + 1));
  std::vector<float> two(2);
  EXPECT_EQ(error_of([&] { comm.reduce_scatter(v, two); }),
            "reduce_scatter" + at + ": input has " + std::to_string(2 * size + 1) +
                " elements, expected size × output = " + std::to_string(size) +
                " × 2 = " + std::to_string(2 * size));
  EXPECT_EQ(error_of([&] { comm.allgather(two, v); }),
            "allgather" + at + ": output has " + std::to_string(2 * size + 1) +
                " elements, expected size × input = " + std::to_string(size) +
                " × 2 = " + std::to_string(2 * size));
  std::vector<float> blocks(static_cast<size_t>(2 * size));
  EXPECT_EQ(error_of([&] {
              comm.reduce_scatter(blocks, {blocks.data() + 1, 2});
            }),
            "reduce_scatter" + at +
                ": output overlaps input but is not this rank's block of it (in place needs "
                "output = input + rank × count)");
  if (size > 1) {
    EXPECT_EQ(error_of([&] {
                comm.allgather({blocks.data() + 1, 2}, blocks);
              }),
              "allgather" + at +
                  ": input overlaps output but is not this rank's block of it (in place needs "
                  "input = output + rank × count)");
  }
  EXPECT_EQ(error_of([&] { comm.broadcast(two, {size}); }),
            "broadcast" + at + ": root " + std::to_string(size) +
                " is not a rank of this communicator (0 to " + std::to_string(size - 1) + ")");
  EXPECT_EQ(error_of([&] { comm.send(two, {}); }),
            "send" + at + ": peer -1 is not a rank of this communicator (0 to " +
                std::to_string(size - 1) + ")");
  EXPECT_EQ(error_of([&] { comm.recv(two, {0, -2}); }), "recv" + at + ": tag -2 is negative");
  EXPECT_EQ(error_of([&] {
              comm.allreduce({two.data(), 2, Memory::device});
            }),
            "allreduce" + at +
                ": the buffer is in device memory, but the mpi backend takes host "
                "memory");
  EXPECT_EQ(error_of([&] {
              comm.allreduce({nullptr, 4});
            }),
            "allreduce" + at + ": the buffer is null but has 4 elements");
  EXPECT_EQ(error_of([&] {
              comm.allreduce({two.data(), Index{1} << 31});
            }),
            "allreduce" + at +
                ": 2147483648 elements exceed MPI's limit of 2147483647 per call; "
                "split the buffer");
}

// run.check_collectives: a collective whose arguments differ across the ranks is named, with each
// side's call, before it starts (MPI would hang or mix buffers); matching ones pass through.
TEST_F(CommunicatorTest, CheckedCollectivesNameTheFirstMismatch) {
  if (size < 2) {
    GTEST_SKIP() << "a mismatch needs two ranks";
  }
  watchdog::set_check_signatures(true);
  std::vector<float> values(8, 1.0F);
  comm.allreduce({values.data(), 8})->wait();  // the same on every rank: no error
  EXPECT_EQ(values[0], static_cast<float>(size));
  const std::uint64_t next = watchdog::last_started() + 1;
  const Index count = rank == 0 ? 4 : 5;  // rank 0 disagrees with everyone else
  const std::string message = error_of([&] { comm.allreduce({values.data(), count}); });
  watchdog::set_check_signatures(false);
  const std::string theirs = rank == 0 ? "allreduce(5 x float32)" : "allreduce(4 x float32)";
  const int other = rank == 0 ? 1 : 0;
  EXPECT_EQ(message, "run.check_collectives: collective #" + std::to_string(next) +
                         " on communicator 'world' differs across its ranks: rank " +
                         std::to_string(rank) + " starts " +
                         (rank == 0 ? "allreduce(4 x float32)" : "allreduce(5 x float32)") +
                         ", rank " + std::to_string(other) + " starts " + theirs);
  // The watchdog's record of it.
  EXPECT_NE(watchdog::recent(1).find("#" + std::to_string(next) + " allreduce on 'world'"),
            std::string::npos)
      << watchdog::recent(1);
}
