// The backend-independent part of Communicator: buffers and argument validation. Needs no Kokkos
// (the GPU-only build compiles it for the NCCL backend); the Tensor constructors of the buffers are
// in tensor_buffer.cpp.
#include "tessera/comm/communicator.hpp"

#include "tessera/comm/agree.hpp"

#include "tessera/comm/watchdog.hpp"
#include "tessera/core/check.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace tessera::comm {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::product:
      return "product";
    case ReduceOp::min:
      return "min";
    case ReduceOp::max:
      return "max";
  }
  return "unknown";
}

const char* memory_name(Memory memory) {
  return memory == Memory::host ? "host" : "device";
}

namespace {

DeviceCopies g_copies;  // set_device_copies: none until a CUDA build's start-up sets them

// Device buffers of one operation on a host backend, copied to host memory: the host copies stand
// in for them, and those the operation writes are copied back once it completes.
class Staging {
 public:
  // A buffer the operation reads (copied in) and, when `writes`, writes (copied back).
  template <class B>
  B in(const B& b, bool writes) {
    B host = b;
    host.data = add(b.data, bytes(b), true, writes);
    host.memory = Memory::host;
    return host;
  }
  // A buffer the operation only writes (its values are not copied in).
  Buffer out(const Buffer& b) {
    Buffer host = b;
    host.data = add(b.data, bytes(b), false, true);
    host.memory = Memory::host;
    return host;
  }
  bool empty() const { return m_copies.empty(); }
  // Copies the written buffers back to the device.
  void copy_back() {
    for (Copy& c : m_copies) {
      if (c.back && !c.host.empty()) {
        g_copies.to_device(c.device, c.host.data(), c.host.size());
      }
    }
  }

 private:
  struct Copy {
    void* device;
    std::vector<std::byte> host;
    bool back;
  };
  template <class B>
  static std::size_t bytes(const B& b) {
    return static_cast<std::size_t>(b.count) * dtype_bytes(b.dtype);
  }
  void* add(const void* device, std::size_t n, bool copy_in, bool back) {
    Copy c{const_cast<void*>(device), std::vector<std::byte>(n), back};
    if (copy_in && n > 0) {
      g_copies.to_host(c.host.data(), device, n);
    }
    m_copies.push_back(std::move(c));
    return m_copies.back().host.data();  // a vector's storage stays put when the vector moves
  }
  std::vector<Copy> m_copies;
};

// The Work of a staged operation: the backend's, then the copies back to the device.
class StagedWork final : public Work {
 public:
  StagedWork(std::unique_ptr<Work> inner, Staging staging)
      : m_inner(std::move(inner)), m_staging(std::move(staging)) {}
  ~StagedWork() override {
    // As every Work: a pending operation is waited for, unless an exception unwinds past it.
    if (!m_done && std::uncaught_exceptions() <= m_unwinding) {
      try {
        wait();
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor reports nothing
      }
    }
  }
  void wait() override {
    if (!m_done) {
      m_inner->wait();
      finish();
    }
  }
  // Only the thread that started the operation copies back: a test from another (the halo
  // exchange's progress thread, comm/progress.hpp) drives the transfer, and the copy back waits
  // for the owner's test or wait. Kokkos's copies and kernels on one instance are not safe from
  // two host threads at once, and a copy's fence would wait for the kernels the overlap hides.
  bool test() override {
    if (!m_done && m_inner->test() && std::this_thread::get_id() == m_owner) {
      finish();
    }
    return m_done;
  }
  bool is_completed() const override { return m_done; }

 private:
  void finish() {
    m_done = true;
    m_staging.copy_back();
  }
  std::unique_ptr<Work> m_inner;
  Staging m_staging;
  bool m_done = false;
  int m_unwinding = std::uncaught_exceptions();
  std::thread::id m_owner = std::this_thread::get_id();
};

std::unique_ptr<Work> staged(std::unique_ptr<Work> work, Staging staging) {
  if (staging.empty()) {
    return work;
  }
  return std::make_unique<StagedWork>(std::move(work), std::move(staging));
}

// [begin, end) of a buffer's bytes, as integers (pointers of unrelated arrays do not compare).
template <class B>
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const B& b) {
  const auto begin = reinterpret_cast<std::uintptr_t>(b.data);
  return {begin, begin + static_cast<std::uintptr_t>(b.count) * dtype_bytes(b.dtype)};
}

template <class A, class B>
bool overlap(const A& a, const B& b) {
  const auto [a0, a1] = byte_range(a);
  const auto [b0, b1] = byte_range(b);
  return a0 < b1 && b0 < a1;
}

}  // namespace

ConstBuffer::ConstBuffer(const Buffer& buffer)
    : data(buffer.data), count(buffer.count), dtype(buffer.dtype), memory(buffer.memory) {}

void set_device_copies(DeviceCopies copies) {
  g_copies = std::move(copies);
}

Communicator::Communicator(std::string name, int rank, int size)
    : m_name(std::move(name)), m_rank(rank), m_size(size) {}

std::string Communicator::context(const char* op) const {
  return fmt::format("{} on communicator '{}' (rank {} of {})", op, m_name, m_rank, m_size);
}

template <class B>
void Communicator::check_buffer(const char* op, const char* role, const B& buffer) const {
  if (buffer.count < 0) {
    TESSERA_THROW("{}: {} buffer has a negative count ({})", context(op), role, buffer.count);
  }
  if (buffer.data == nullptr && buffer.count > 0) {
    TESSERA_THROW("{}: {} buffer is null but has {} elements", context(op), role, buffer.count);
  }
  if (buffer.memory != memory() && !stages(buffer.memory)) {
    TESSERA_THROW("{}: {} buffer is in {} memory, but the {} backend takes {} memory", context(op),
                  role, memory_name(buffer.memory), backend(), memory_name(memory()));
  }
}

bool Communicator::stages(Memory buffer) const {
  return buffer == Memory::device && memory() == Memory::host && g_copies.to_host &&
         g_copies.to_device;
}

void Communicator::check_rank(const char* op, const char* role, int rank) const {
  if (rank < 0 || rank >= m_size) {
    TESSERA_THROW("{}: {} {} is not a rank of this communicator (0 to {})", context(op), role, rank,
                  m_size - 1);
  }
}

void Communicator::check_pair(const char* op, const ConstBuffer& input,
                              const Buffer& output) const {
  check_buffer(op, "the input", input);
  check_buffer(op, "the output", output);
  if (input.dtype != output.dtype) {
    TESSERA_THROW("{}: input is {} but output is {}", context(op), dtype_name(input.dtype),
                  dtype_name(output.dtype));
  }
}

std::unique_ptr<Work> Communicator::allreduce(Buffer buffer, const AllreduceOptions& options) {
  check_buffer("allreduce", "the", buffer);
  launch("allreduce", buffer.count, buffer.dtype);
  Staging s;
  const Buffer b = stages(buffer.memory) ? s.in(buffer, true) : buffer;
  return staged(do_allreduce(b, options), std::move(s));
}

void Communicator::check_blocks(const char* op, const ConstBuffer& whole, const char* whole_name,
                                const ConstBuffer& block, const char* block_name) const {
  if (whole.count != m_size * block.count) {
    TESSERA_THROW("{}: {} has {} elements, expected size × {} = {} × {} = {}", context(op),
                  whole_name, whole.count, block_name, m_size, block.count, m_size * block.count);
  }
  const auto in_place =
      byte_range(whole).first +
      static_cast<std::uintptr_t>(m_rank * block.count) * dtype_bytes(block.dtype);
  if (overlap(whole, block) && byte_range(block).first != in_place) {
    TESSERA_THROW(
        "{}: {} overlaps {} but is not this rank's block of it (in place needs {} = {} + "
        "rank × count)",
        context(op), block_name, whole_name, block_name, whole_name);
  }
}

std::unique_ptr<Work> Communicator::reduce_scatter(ConstBuffer input, Buffer output,
                                                   const ReduceScatterOptions& options) {
  check_pair("reduce_scatter", input, output);
  check_blocks("reduce_scatter", input, "input", output, "output");
  launch("reduce_scatter", input.count, input.dtype);
  // Staged, the in-place form becomes two host buffers: the result lands in `output` all the same.
  Staging s;
  const ConstBuffer in = stages(input.memory) ? s.in(input, false) : input;
  const Buffer out = stages(output.memory) ? s.out(output) : output;
  return staged(do_reduce_scatter(in, out, options), std::move(s));
}

std::unique_ptr<Work> Communicator::allgather(ConstBuffer input, Buffer output,
                                              const AllgatherOptions& options) {
  check_pair("allgather", input, output);
  check_blocks("allgather", output, "output", input, "input");
  launch("allgather", output.count, input.dtype);
  Staging s;
  const ConstBuffer in = stages(input.memory) ? s.in(input, false) : input;
  const Buffer out = stages(output.memory) ? s.out(output) : output;
  return staged(do_allgather(in, out, options), std::move(s));
}

std::unique_ptr<Work> Communicator::broadcast(Buffer buffer, const BroadcastOptions& options) {
  check_buffer("broadcast", "the", buffer);
  check_rank("broadcast", "root", options.root);
  launch("broadcast", buffer.count, buffer.dtype, options.root);
  Staging s;
  const Buffer b = stages(buffer.memory) ? s.in(buffer, true) : buffer;
  return staged(do_broadcast(b, options), std::move(s));
}

std::unique_ptr<Work> Communicator::send(ConstBuffer buffer, const SendOptions& options) {
  check_buffer("send", "the", buffer);
  check_rank("send", "peer", options.peer);
  if (options.tag < 0) {
    TESSERA_THROW("{}: tag {} is negative", context("send"), options.tag);
  }
  launch("send", buffer.count, buffer.dtype, options.peer, false);
  Staging s;
  const ConstBuffer b = stages(buffer.memory) ? s.in(buffer, false) : buffer;
  return staged(do_send(b, options), std::move(s));
}

std::unique_ptr<Work> Communicator::recv(Buffer buffer, const RecvOptions& options) {
  check_buffer("recv", "the", buffer);
  check_rank("recv", "peer", options.peer);
  if (options.tag < 0) {
    TESSERA_THROW("{}: tag {} is negative", context("recv"), options.tag);
  }
  launch("recv", buffer.count, buffer.dtype, options.peer, false);
  Staging s;
  const Buffer b = stages(buffer.memory) ? s.out(buffer) : buffer;
  return staged(do_recv(b, options), std::move(s));
}

std::unique_ptr<Work> Communicator::barrier(const BarrierOptions& options) {
  launch("barrier", 0, DType::f32);
  return do_barrier(options);
}

void Communicator::launch(const char* op, Index count, DType dtype, int root, bool collective) {
  const std::uint64_t seq = watchdog::record_start(
      op, m_name, static_cast<std::int64_t>(count) * static_cast<std::int64_t>(dtype_bytes(dtype)));
  if (!collective || !watchdog::check_signatures() || m_size == 1) {
    return;
  }
  // Every rank's description of the collective it is about to start, gathered over the group.
  constexpr int kWidth = 96;
  std::vector<char> mine(kWidth, '\0');
  const std::string text = fmt::format("{}({} x {}{})", op, count, dtype_name(dtype),
                                       root >= 0 ? fmt::format(", root {}", root) : std::string());
  std::memcpy(mine.data(), text.data(), std::min<size_t>(text.size(), kWidth - 1));
  std::vector<char> all(static_cast<size_t>(kWidth) * static_cast<size_t>(m_size));
  {
    watchdog::Blocked blocked(seq);
    TESSERA_MPI_CHECK(
        MPI_Allgather(mine.data(), kWidth, MPI_CHAR, all.data(), kWidth, MPI_CHAR, mpi_comm()));
  }
  for (int r = 0; r < m_size; ++r) {
    const std::string theirs(&all[static_cast<size_t>(r) * kWidth]);
    if (theirs != text) {
      TESSERA_THROW(
          "run.check_collectives: collective #{} on communicator '{}' differs across its ranks: "
          "rank {} starts {}, rank {} starts {}",
          seq, m_name, m_rank, text, r, theirs);
    }
  }
}

void abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace tessera::comm
