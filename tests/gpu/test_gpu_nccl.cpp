// The NCCL Communicator on device buffers, under mpiexec at 1 and 2 ranks: every collective's
// result against a closed form computed here on the host from the communicator size (as
// tests/mpi/test_communicator.cpp does for the MPI backend), a send/recv ring posted recv-first,
// non-blocking test()/wait(), ordering after the compute stream, and the base class's messages.
// Skipped on every rank, with the reason, where a rank has no CUDA device of its own.
#include "support/communicator_test.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/nccl_communicator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/cuda/device.hpp"
#include "tessera/kernels/cuda/elementwise.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::comm;
using tessera::kernels::cuda::DeviceBuffer;
using namespace tessera::testing::collectives;

namespace {

// A device buffer as a collective's argument.
Buffer on_device(DeviceBuffer<float>& b) {
  return {b.data(), static_cast<Index>(b.size()), Memory::device};
}

// Why this job cannot run the tests ("" when it can), the same on every rank; `device` becomes
// this rank's device: its rank among the ranks of its node.
std::string skip_reason(MPI_Comm world, int& device) {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int node_rank = 0;
  int node_size = 1;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  device = node_rank;
  std::string reason;
  const int devices = kernels::cuda::device_count();
  if (devices == 0) {
    reason = "no CUDA device: " + kernels::cuda::no_device_reason();
  } else if (devices < node_size) {
    reason = std::to_string(node_size) + " ranks on this node but only " + std::to_string(devices) +
             " CUDA device(s): NCCL needs a device of its own for every rank";
  }
  const int mine = reason.empty() ? 0 : 1;
  int any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, world);
  if (any != 0 && reason.empty()) {
    reason = "a rank on another node has no CUDA device of its own";
  }
  return reason;
}

// One NCCL communicator over the world for the whole suite (NCCL's set-up takes a while).
class NcclTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    s_world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world");
    s_skip = skip_reason(s_world->mpi_comm(), s_device);
    if (s_skip.empty()) {
      try {
        s_nccl = std::make_unique<NcclCommunicator>(*s_world, s_device);
      } catch (const Error& e) {
        s_setup_error = e.what();
      }
    }
  }
  static void TearDownTestSuite() {
    s_nccl.reset();
    s_world.reset();
  }
  void SetUp() override {
    if (!s_skip.empty()) {
      GTEST_SKIP() << s_skip;
    }
    ASSERT_TRUE(s_setup_error.empty()) << s_setup_error;
  }

  static NcclCommunicator& comm() { return *s_nccl; }
  static int rank() { return s_world->rank(); }
  static int size() { return s_world->size(); }

  static std::unique_ptr<MpiCommunicator> s_world;
  static std::unique_ptr<NcclCommunicator> s_nccl;
  static std::string s_skip;
  static std::string s_setup_error;
  static int s_device;
};

std::unique_ptr<MpiCommunicator> NcclTest::s_world;
std::unique_ptr<NcclCommunicator> NcclTest::s_nccl;
std::string NcclTest::s_skip;
std::string NcclTest::s_setup_error;
int NcclTest::s_device = 0;

// n values f(rank, i) on the host.
template <class F>
std::vector<float> values(int n, F f) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    v[static_cast<std::size_t>(i)] = static_cast<float>(f(i));
  }
  return v;
}

}  // namespace

TEST_F(NcclTest, IsTheWorldsGroupOnThisRanksDevice) {
  int world_rank = -1;
  int world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(comm().rank(), world_rank);
  EXPECT_EQ(comm().size(), world_size);
  EXPECT_EQ(comm().name(), "world");
  EXPECT_STREQ(comm().backend(), "nccl");
  EXPECT_EQ(comm().memory(), Memory::device);
  // Its MPI communicator: a duplicate of the group's (same ranks, another context).
  int relation = MPI_UNEQUAL;
  MPI_Comm_compare(comm().mpi_comm(), MPI_COMM_WORLD, &relation);
  EXPECT_EQ(relation, MPI_CONGRUENT);
  EXPECT_EQ(comm().device(), s_device);
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, s_device);
  EXPECT_NE(comm().stream(), nullptr);
  EXPECT_GE(NcclCommunicator::nccl_version(), 20700);  // 2.7: ncclSend/ncclRecv
}

TEST_F(NcclTest, AllreduceEveryOpMatchesTheClosedForm) {
  constexpr int n = 5;
  const int r = rank();
  const int s = size();
  // tests/support/communicator_test.hpp: each rank's terms and the results.
  DeviceBuffer<float> sum(values(n, [&](int i) { return sum_term(r, i); }));
  DeviceBuffer<float> product(values(n, [&](int i) { return product_term(r, i); }));
  DeviceBuffer<float> low(values(n, [&](int i) { return min_max_term(r, i); }));
  DeviceBuffer<float> high(values(n, [&](int i) { return min_max_term(r, i); }));
  comm().allreduce(on_device(sum))->wait();
  comm().allreduce(on_device(product), {ReduceOp::product})->wait();
  comm().allreduce(on_device(low), {ReduceOp::min})->wait();
  comm().allreduce(on_device(high), {ReduceOp::max})->wait();
  const auto sum_h = sum.to_host();
  const auto product_h = product.to_host();
  const auto low_h = low.to_host();
  const auto high_h = high.to_host();
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    EXPECT_EQ(sum_h[k], allreduce_sum(s, i)) << i;
    EXPECT_EQ(product_h[k], allreduce_product(s, i)) << i;
    EXPECT_EQ(low_h[k], allreduce_min(s, i)) << i;
    EXPECT_EQ(high_h[k], allreduce_max(s, i)) << i;
  }
}

TEST_F(NcclTest, AllreduceOfPartOfABuffer) {
  DeviceBuffer<float> v(std::vector<float>{1.0F, 2.0F, 3.0F, 4.0F});
  comm().allreduce({v.data() + 1, 2, Memory::device})->wait();  // the middle two only
  const auto s = static_cast<float>(size());
  EXPECT_EQ(v.to_host(), (std::vector<float>{1.0F, 2.0F * s, 3.0F * s, 4.0F}));
}

TEST_F(NcclTest, ReduceScatterGivesEachRankItsBlock) {
  constexpr int count = 3;
  const int r = rank();
  const int s = size();
  // Block b, element k of the output is input element j = b count + k over the ranks.
  DeviceBuffer<float> input(values(s * count, [&](int j) { return scatter_term(r, j); }));
  DeviceBuffer<float> sum(std::vector<float>(count, -1.0F));
  DeviceBuffer<float> max(std::vector<float>(count, -1.0F));
  comm().reduce_scatter(on_device(input), on_device(sum))->wait();
  comm().reduce_scatter(on_device(input), on_device(max), {ReduceOp::max})->wait();
  const auto sum_h = sum.to_host();
  const auto max_h = max.to_host();
  for (int k = 0; k < count; ++k) {
    const int j = r * count + k;
    EXPECT_EQ(sum_h[static_cast<std::size_t>(k)], scatter_sum(s, j));
    EXPECT_EQ(max_h[static_cast<std::size_t>(k)], scatter_max(s, j));
  }
}

TEST_F(NcclTest, AllgatherPlacesBlocksInRankOrderOutOfPlaceAndInPlace) {
  constexpr int count = 3;
  const int r = rank();
  const int s = size();
  DeviceBuffer<float> input(values(count, [&](int k) { return 10 * r + k; }));
  DeviceBuffer<float> output(std::vector<float>(static_cast<std::size_t>(s * count), -1.0F));
  comm().allgather(on_device(input), on_device(output))->wait();
  // In place: this rank's block of the output is the input.
  std::vector<float> in_place_h(static_cast<std::size_t>(s * count), -1.0F);
  for (int k = 0; k < count; ++k) {
    in_place_h[static_cast<std::size_t>(r * count + k)] = static_cast<float>(10 * r + k);
  }
  DeviceBuffer<float> in_place(in_place_h);
  comm()
      .allgather({in_place.data() + r * count, count, Memory::device}, on_device(in_place))
      ->wait();
  std::vector<float> expected;
  for (int q = 0; q < s; ++q) {
    for (int k = 0; k < count; ++k) {
      expected.push_back(static_cast<float>(10 * q + k));
    }
  }
  EXPECT_EQ(output.to_host(), expected);
  EXPECT_EQ(in_place.to_host(), expected);
}

TEST_F(NcclTest, BroadcastFromTheLastRankAndFromRankZero) {
  // The last rank is a non-zero root wherever there is more than one rank.
  for (const int root : {size() - 1, 0}) {
    std::vector<float> mine(4, -1.0F);
    if (rank() == root) {
      mine = values(4, [&](int i) { return 100 * root + i + 1; });
    }
    DeviceBuffer<float> v(mine);
    comm().broadcast(on_device(v), {root})->wait();
    EXPECT_EQ(v.to_host(), values(4, [&](int i) { return 100 * root + i + 1; })) << "root " << root;
  }
}

TEST_F(NcclTest, SendRecvAroundARingWithTheRecvPostedFirst) {
  // Each rank receives from the previous and sends to the next (itself at one rank). Every rank
  // posts its recv first: NCCL alone would block the stream on it; the queued pair must not.
  const int next = (rank() + 1) % size();
  const int previous = (rank() + size() - 1) % size();
  DeviceBuffer<float> out(
      std::vector<float>{static_cast<float>(rank()), static_cast<float>(100 + rank())});
  DeviceBuffer<float> in(std::vector<float>(2, -1.0F));
  auto received = comm().recv(on_device(in), {previous, 7});
  auto sent = comm().send(on_device(out), {next, 7});
  received->wait();
  sent->wait();
  EXPECT_TRUE(received->is_completed());
  EXPECT_TRUE(sent->is_completed());
  EXPECT_EQ(in.to_host(),
            (std::vector<float>{static_cast<float>(previous), static_cast<float>(100 + previous)}));
}

TEST_F(NcclTest, MessagesOfOnePeerPairArriveInOrder) {
  // NCCL has no tags: two messages to the same peer are received in the order they were sent.
  const int next = (rank() + 1) % size();
  const int previous = (rank() + size() - 1) % size();
  DeviceBuffer<float> a(std::vector<float>{1.0F + static_cast<float>(rank())});
  DeviceBuffer<float> b(std::vector<float>{2.0F, 2.0F});
  DeviceBuffer<float> got_a(std::vector<float>(1, -1.0F));
  DeviceBuffer<float> got_b(std::vector<float>(2, -1.0F));
  auto sa = comm().send(on_device(a), {next, 1});
  auto sb = comm().send(on_device(b), {next, 2});
  auto ra = comm().recv(on_device(got_a), {previous, 1});
  auto rb = comm().recv(on_device(got_b), {previous, 2});
  // Completed in another order than started: test() launches the queued batch too.
  while (!rb->test()) {
  }
  ra->wait();
  sb->wait();
  sa->wait();
  EXPECT_EQ(got_a.to_host(), std::vector<float>{1.0F + static_cast<float>(previous)});
  EXPECT_EQ(got_b.to_host(), (std::vector<float>{2.0F, 2.0F}));
}

TEST_F(NcclTest, BarrierCompletes) {
  auto work = comm().barrier();
  work->wait();
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(work->test());  // stays complete
  // And again, between two collectives.
  DeviceBuffer<float> v(std::vector<float>(3, 1.0F));
  comm().allreduce(on_device(v))->wait();
  comm().barrier()->wait();
  comm().allreduce(on_device(v))->wait();
  const auto s = static_cast<float>(size());
  EXPECT_EQ(v.to_host(), std::vector<float>(3, s * s));
}

TEST_F(NcclTest, TestPollsALargeAllreduceUntilItCompletes) {
  constexpr int n = 1 << 24;  // 64 MiB
  DeviceBuffer<float> v(n);
  kernels::cuda::fill(v.data(), n, static_cast<float>(rank() + 1));  // the legacy default stream
  // Started without synchronising: the allreduce waits for the fill (the compute stream).
  auto work = comm().allreduce(on_device(v));
  long polls = 0;
  while (!work->test()) {
    ++polls;
  }
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(work->test());
  work->wait();  // returns at once
  const auto host = v.to_host();
  const auto expected = static_cast<float>(size() * (size() + 1) / 2);
  for (int i = 0; i < n; i += 4099) {
    ASSERT_EQ(host[static_cast<std::size_t>(i)], expected) << i << " after " << polls << " polls";
  }
  EXPECT_EQ(host.back(), expected);
}

TEST_F(NcclTest, OutstandingWorksCompleteInAnyOrder) {
  // Started in the same order on every rank, completed in reverse.
  DeviceBuffer<float> a(std::vector<float>(8, 1.0F));
  DeviceBuffer<float> gathered(std::vector<float>(static_cast<std::size_t>(size()), -1.0F));
  DeviceBuffer<float> mine(std::vector<float>{static_cast<float>(rank())});
  DeviceBuffer<float> c(std::vector<float>(3, rank() == size() - 1 ? 5.0F : 0.0F));
  auto wa = comm().allreduce(on_device(a));
  auto wb = comm().allgather(on_device(mine), on_device(gathered));
  auto wc = comm().broadcast(on_device(c), {size() - 1});
  auto wd = comm().barrier();
  wd->wait();
  wc->wait();
  wb->wait();
  EXPECT_EQ(c.to_host(), std::vector<float>(3, 5.0F));
  EXPECT_EQ(gathered.to_host(), values(size(), [](int q) { return q; }));
  wa->wait();
  EXPECT_EQ(a.to_host(), std::vector<float>(8, static_cast<float>(size())));
  EXPECT_TRUE(wa->is_completed() && wb->is_completed() && wc->is_completed() && wd->is_completed());
}

TEST_F(NcclTest, DroppingAWorkWaitsForIt) {
  DeviceBuffer<float> v(std::vector<float>(4, 2.0F));
  comm().allreduce(on_device(v));  // the Work dies at once: its destructor waits
  EXPECT_EQ(v.to_host(), std::vector<float>(4, 2.0F * static_cast<float>(size())));
  // A dropped send and recv: the Works' destructors launch the queued pair and wait.
  const int next = (rank() + 1) % size();
  const int previous = (rank() + size() - 1) % size();
  DeviceBuffer<float> out(std::vector<float>{static_cast<float>(rank())});
  DeviceBuffer<float> in(std::vector<float>{-1.0F});
  {
    auto received = comm().recv(on_device(in), {previous});
    auto sent = comm().send(on_device(out), {next});
  }
  EXPECT_EQ(in.to_host(), std::vector<float>{static_cast<float>(previous)});
}

TEST_F(NcclTest, OperationsWaitForAGivenComputeStream) {
  // A second communicator whose compute stream is a non-blocking stream of ours: a fill queued
  // there (not synchronised with the legacy default stream) is done before the allreduce reads.
  kernels::cuda::Stream compute;
  NcclCommunicator on_stream(*s_world, s_device, compute.get());
  constexpr int n = 1 << 22;
  DeviceBuffer<float> v(n);
  kernels::cuda::fill(v.data(), n, 2.0F, compute.get());
  on_stream.allreduce(on_device(v))->wait();
  const auto host = v.to_host();
  const auto expected = 2.0F * static_cast<float>(size());
  for (int i = 0; i < n; i += 4099) {
    ASSERT_EQ(host[static_cast<std::size_t>(i)], expected) << i;
  }
}

TEST_F(NcclTest, BadArgumentsGiveTheMessagesOfEveryBackend) {
  const std::string at = " on communicator 'world' (rank " + std::to_string(rank()) + " of " +
                         std::to_string(size()) + ")";
  std::vector<float> host(4);
  EXPECT_EQ(error_of([&] { comm().allreduce(host); }),
            "allreduce" + at +
                ": the buffer is in host memory, but the nccl backend takes device memory");
  DeviceBuffer<float> device(4);
  EXPECT_EQ(
      error_of([&] { comm().send(host, {0}); }),
      "send" + at + ": the buffer is in host memory, but the nccl backend takes device memory");
  EXPECT_EQ(error_of([&] { comm().reduce_scatter(on_device(device), host); }),
            "reduce_scatter" + at +
                ": the output buffer is in host memory, but the nccl backend takes device memory");
  DeviceBuffer<float> odd(static_cast<std::size_t>(2 * size() + 1));
  DeviceBuffer<float> two(2);
  EXPECT_EQ(error_of([&] { comm().reduce_scatter(on_device(odd), on_device(two)); }),
            "reduce_scatter" + at + ": input has " + std::to_string(2 * size() + 1) +
                " elements, expected size × output = " + std::to_string(size()) +
                " × 2 = " + std::to_string(2 * size()));
  EXPECT_EQ(error_of([&] { comm().broadcast(on_device(two), {size()}); }),
            "broadcast" + at + ": root " + std::to_string(size()) +
                " is not a rank of this communicator (0 to " + std::to_string(size() - 1) + ")");
  EXPECT_EQ(error_of([&] { comm().recv(on_device(two), {-1}); }),
            "recv" + at + ": peer -1 is not a rank of this communicator (0 to " +
                std::to_string(size() - 1) + ")");
  // Still usable: nothing was started.
  comm().barrier()->wait();
}

TEST_F(NcclTest, ASetUpErrorOnOneRankIsThrownOnEveryRank) {
  // The last rank asks for a device that does not exist; every rank throws its message.
  const int last = size() - 1;
  const int devices = kernels::cuda::device_count();
  const int device = rank() == last ? devices : s_device;
  bool on_all_ranks = false;
  std::string message;
  try {
    NcclCommunicator bad(*s_world, device);
  } catch (const Error& e) {
    message = e.message();
    on_all_ranks = e.on_all_ranks();
  }
  EXPECT_EQ(message, "NCCL set-up on communicator 'world' (rank " + std::to_string(last) + " of " +
                         std::to_string(size()) + "): device " + std::to_string(devices) +
                         " does not exist (this rank sees " + std::to_string(devices) +
                         " CUDA devices, 0 to " + std::to_string(devices - 1) + ")");
  EXPECT_TRUE(on_all_ranks);
  // The good ranks made their device current again: the suite's communicator still works.
  DeviceBuffer<float> v(std::vector<float>{1.0F});
  comm().allreduce(on_device(v))->wait();
  EXPECT_EQ(v.to_host(), std::vector<float>{static_cast<float>(size())});
}
