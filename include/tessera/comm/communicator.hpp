#pragma once
// Communicator: the collectives of one group of ranks — one axis of the process grid, a trainer,
// the world — in the shape of PyTorch c10d's Backend (STYLE.md): one method per collective, an
// options struct per collective (adding a field changes no signature), and an asynchronous Work
// handle returned by every call. `comm.allreduce(buffer)->wait()` is the blocking form; start
// several operations, compute, then wait (in any order) to overlap communication with computation.
//
// Every rank of the group calls the same collectives in the same order (MPI's rule for
// non-blocking collectives); they may complete them in any order. A buffer must stay alive and
// untouched until its Work has completed.
//
// Backends:
// - MpiCommunicator (below): host memory, MPI's non-blocking collectives (MPI_Iallreduce, ...).
//   Device buffers too where device copies are set (set_device_copies: a CUDA build's tensors),
//   through host copies made by this base class — in before the operation starts, back when its
//   Work completes — as over an MPI that is not CUDA-aware.
// - NcclCommunicator (comm/nccl_communicator.hpp, library tessera_comm_nccl, built with
//   TESSERA_ENABLE_CUDA where NCCL is found): device memory. It implements the same private do_*
//   hooks with ncclAllReduce, ncclReduceScatter, ncclAllGather, ncclBroadcast, ncclSend/ncclRecv
//   (inside ncclGroupStart/End) and, for barrier, a one-element allreduce; it is created from a
//   communicator of the same group (rank 0 makes the ncclUniqueId and broadcasts it over MPI),
//   whose duplicate stays its mpi_comm(). Its Work records a cudaEvent on the communicator's
//   stream: test() is cudaEventQuery, wait() blocks the calling host thread until the event has
//   completed (so later work on any stream sees the result). It maps DType to ncclDataType_t and
//   ReduceOp to ncclRedOp_t. Sends and receives are queued and launched together (one group) at
//   the next wait() or test() of one of them or before the next collective, so a ring that posts
//   its recv first cannot deadlock. NCCL's tags do not exist: send/recv of one peer pair are
//   matched in order, and the count of a recv must equal the send's (NCCL cannot check it).
// Validation (counts, roots, peers, overlaps, memory kind) lives in this base class, so every
// backend gives the same messages.
#include "tessera/core/dtype.hpp"

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tessera {
class Tensor;  // core/tensor.hpp; this header needs no Kokkos (the GPU-only build compiles it)
}  // namespace tessera

namespace tessera::comm {

/// The reduction of allreduce and reduce_scatter.
enum class ReduceOp { sum, product, min, max };
const char* reduce_op_name(ReduceOp op);

/// Where a buffer's memory lives. A backend works on one kind (Communicator::memory()).
enum class Memory { host, device };
const char* memory_name(Memory memory);

/// Copies between device and host memory (each blocking: the copy is complete, and work queued
/// before it on the device has finished, when it returns).
struct DeviceCopies {
  std::function<void(void* host, const void* device, std::size_t bytes)> to_host;
  std::function<void(void* device, const void* host, std::size_t bytes)> to_device;
};
/// With copies set, a host-memory backend (MPI) takes device buffers too, through host copies, as
/// codes do over an MPI that is not CUDA-aware ("staging"): each device buffer is copied to host
/// memory when the operation starts (those it reads) and back when it completes (those it
/// writes). Without them (the default) a device buffer is refused. A CUDA build sets them at start
/// (enable_device_staging); an empty DeviceCopies unsets them.
void set_device_copies(DeviceCopies copies);
/// Sets Kokkos's copies between its default memory space and the host when that space is not the
/// host's (a CUDA build); nothing in a host build. In comm/tensor_buffer.cpp (it needs Kokkos).
void enable_device_staging();

/// A contiguous buffer a collective reads and writes: pointer, element count, element type and
/// memory. Made implicitly from (pointer, count), a std::vector or a Tensor (host or device memory,
/// as Kokkos placed its storage; defined in comm/tensor_buffer.cpp, the one file here that needs
/// Kokkos), so each collective is one method whatever holds the data.
struct Buffer {
  void* data = nullptr;
  Index count = 0;
  DType dtype = DType::f32;
  Memory memory = Memory::host;

  /// `count` elements of type T (float, double, int32, int64, uint64, bytes) at `values`.
  template <class T>
  Buffer(T* values, Index n, Memory where = Memory::host)
      : data(values), count(n), dtype(dtype_of<T>()), memory(where) {}
  /// A null float buffer (which the collectives refuse unless its count is 0).
  Buffer(std::nullptr_t, Index n, Memory where = Memory::host) : count(n), memory(where) {}
  template <class T>
  Buffer(std::vector<T>& values)
      : data(values.data()), count(static_cast<Index>(values.size())), dtype(dtype_of<T>()) {}
  Buffer(const Tensor& tensor);
};

/// A contiguous buffer a collective only reads (send, the input of reduce_scatter and allgather).
struct ConstBuffer {
  const void* data = nullptr;
  Index count = 0;
  DType dtype = DType::f32;
  Memory memory = Memory::host;

  template <class T>
  ConstBuffer(const T* values, Index n, Memory where = Memory::host)
      : data(values), count(n), dtype(dtype_of<T>()), memory(where) {}
  ConstBuffer(std::nullptr_t, Index n, Memory where = Memory::host) : count(n), memory(where) {}
  template <class T>
  ConstBuffer(const std::vector<T>& values)
      : data(values.data()), count(static_cast<Index>(values.size())), dtype(dtype_of<T>()) {}
  ConstBuffer(const Tensor& tensor);
  ConstBuffer(const Buffer& buffer);
};

struct AllreduceOptions {
  ReduceOp op = ReduceOp::sum;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::sum;
};
struct AllgatherOptions {};
struct BroadcastOptions {
  int root = 0;  ///< rank (in this communicator) whose buffer everyone receives
};
struct SendOptions {
  int peer = -1;  ///< destination rank in this communicator (required)
  int tag = 0;    ///< >= 0; a recv matches the same peer and tag, messages in order
};
struct RecvOptions {
  int peer = -1;  ///< source rank in this communicator (required)
  int tag = 0;
};
struct BarrierOptions {};

/// The handle of one started operation. Its buffers belong to the operation until it completes.
/// Destroying a Work that has not completed waits for it (MPI forbids abandoning a pending
/// collective, and the buffers must outlive it) — except while an exception unwinds the stack: the
/// error may be on this rank alone, the other ranks may never join, and main() aborts the job.
class Work {
 public:
  virtual ~Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  /// Blocks until the operation has completed; throws tessera::Error if it failed. Returns at once
  /// when it has already completed.
  virtual void wait() = 0;
  /// Progresses the operation without blocking; true once it has completed.
  virtual bool test() = 0;
  /// True once wait() or test() has seen the operation complete (makes no progress itself).
  virtual bool is_completed() const = 0;

 protected:
  Work() = default;
};

/// One group of ranks and its collectives. Buffers are given in this communicator's memory kind;
/// counts are elements. Arguments are checked before anything is started, with a tessera::Error
/// that names the operation, the communicator and the counts.
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  /// "world", "trainer", or the grid axis ("data", "tensor", ...): for messages.
  const std::string& name() const { return m_name; }
  int rank() const { return m_rank; }
  int size() const { return m_size; }
  /// "mpi" or "nccl".
  virtual const char* backend() const = 0;
  /// The memory kind this backend's buffers live in.
  virtual Memory memory() const = 0;
  /// An MPI communicator over the same group, in the same rank order (every backend has one: NCCL
  /// bootstraps from it), for comm::agree, MPI-IO and HDF5; collectives go through the methods
  /// below.
  virtual MPI_Comm mpi_comm() const = 0;

  /// In place: every rank's `buffer` becomes the reduction of all ranks' buffers.
  std::unique_ptr<Work> allreduce(Buffer buffer, const AllreduceOptions& options = {});
  /// `input` holds size() blocks of output.count elements; rank r receives in `output` the
  /// reduction of block r over all ranks. In place when `output` is exactly this rank's block of
  /// `input` (NCCL's convention; the rest of `input` is then overwritten); otherwise they must not
  /// overlap.
  std::unique_ptr<Work> reduce_scatter(ConstBuffer input, Buffer output,
                                       const ReduceScatterOptions& options = {});
  /// Rank r's `input` becomes block r (of input.count elements) of every rank's `output` (size()
  /// blocks). In place when `input` is exactly this rank's block of `output` (NCCL's convention);
  /// otherwise they must not overlap.
  std::unique_ptr<Work> allgather(ConstBuffer input, Buffer output,
                                  const AllgatherOptions& options = {});
  /// Every rank's `buffer` becomes the root's.
  std::unique_ptr<Work> broadcast(Buffer buffer, const BroadcastOptions& options = {});
  /// Sends `buffer` to options.peer; matched by a recv of the same count, peer and tag.
  std::unique_ptr<Work> send(ConstBuffer buffer, const SendOptions& options);
  /// Receives exactly buffer.count elements from options.peer: a shorter message is an error when
  /// the Work completes, a longer one MPI's truncation error (MPICH aborts the job on it).
  std::unique_ptr<Work> recv(Buffer buffer, const RecvOptions& options);
  /// Completes once every rank has started it.
  std::unique_ptr<Work> barrier(const BarrierOptions& options = {});

 protected:
  Communicator(std::string name, int rank, int size);
  /// "allreduce on communicator 'data' (rank 1 of 2)": the start of every error message.
  std::string context(const char* op) const;

 private:
  // The backend's operations, called with arguments already checked.
  virtual std::unique_ptr<Work> do_allreduce(const Buffer& buffer,
                                             const AllreduceOptions& options) = 0;
  virtual std::unique_ptr<Work> do_reduce_scatter(const ConstBuffer& input, const Buffer& output,
                                                  const ReduceScatterOptions& options) = 0;
  virtual std::unique_ptr<Work> do_allgather(const ConstBuffer& input, const Buffer& output,
                                             const AllgatherOptions& options) = 0;
  virtual std::unique_ptr<Work> do_broadcast(const Buffer& buffer,
                                             const BroadcastOptions& options) = 0;
  virtual std::unique_ptr<Work> do_send(const ConstBuffer& buffer, const SendOptions& options) = 0;
  virtual std::unique_ptr<Work> do_recv(const Buffer& buffer, const RecvOptions& options) = 0;
  virtual std::unique_ptr<Work> do_barrier(const BarrierOptions& options) = 0;

  // Every operation goes through here before the backend starts it: recorded for the watchdog
  // (comm/watchdog.hpp) and, in its debug mode, a collective's signature (op, count, type, root)
  // compared across the ranks, naming the first mismatch.
  void launch(const char* op, Index count, DType dtype, int root = -1, bool collective = true);

  template <class B>
  void check_buffer(const char* op, const char* role, const B& buffer) const;
  /// Whether a buffer in `buffer` memory goes through host copies here (set_device_copies).
  bool stages(Memory buffer) const;
  /// Both buffers of a two-buffer collective checked, and of one element type.
  void check_pair(const char* op, const ConstBuffer& input, const Buffer& output) const;
  void check_rank(const char* op, const char* role, int rank) const;
  /// `whole` holds size() blocks of block.count elements, and `block` overlaps it only as this
  /// rank's block (the in-place form of reduce_scatter and allgather).
  void check_blocks(const char* op, const ConstBuffer& whole, const char* whole_name,
                    const ConstBuffer& block, const char* block_name) const;

  std::string m_name;
  int m_rank = 0;
  int m_size = 1;
};

/// The MPI backend: host memory. Owns a duplicate of the given communicator (so its messages never
/// match anyone else's), with MPI_ERRORS_RETURN so that failures throw tessera::Error, and frees it
/// when destroyed. Counts above 2^31 - 1 elements per call are refused (MPI's int counts).
class MpiCommunicator final : public Communicator {
 public:
  /// Collective over `comm` (MPI_Comm_dup). `comm` stays the caller's.
  MpiCommunicator(MPI_Comm comm, std::string name);
  /// The ranks of `comm` that pass the same `color`, ranked by `key` (MPI_Comm_split); collective
  /// over `comm`.
  static std::unique_ptr<MpiCommunicator> split(MPI_Comm comm, int color, int key,
                                                std::string name);
  ~MpiCommunicator() override;

  const char* backend() const override { return "mpi"; }
  Memory memory() const override { return Memory::host; }
  MPI_Comm mpi_comm() const override { return m_comm; }

 private:
  std::unique_ptr<Work> do_allreduce(const Buffer& buffer,
                                     const AllreduceOptions& options) override;
  std::unique_ptr<Work> do_reduce_scatter(const ConstBuffer& input, const Buffer& output,
                                          const ReduceScatterOptions& options) override;
  std::unique_ptr<Work> do_allgather(const ConstBuffer& input, const Buffer& output,
                                     const AllgatherOptions& options) override;
  std::unique_ptr<Work> do_broadcast(const Buffer& buffer,
                                     const BroadcastOptions& options) override;
  std::unique_ptr<Work> do_send(const ConstBuffer& buffer, const SendOptions& options) override;
  std::unique_ptr<Work> do_recv(const Buffer& buffer, const RecvOptions& options) override;
  std::unique_ptr<Work> do_barrier(const BarrierOptions& options) override;

  // The element count as MPI's int, or an error naming `op`.
  int mpi_count(const char* op, Index count) const;
  void check_tag(const char* op, int tag) const;

  MPI_Comm m_comm = MPI_COMM_NULL;
  int m_tag_ub = 32767;  // MPI_TAG_UB of this communicator (MPI guarantees at least 32767)
};

/// The rank and size of an MPI communicator a program was handed (MPI_COMM_WORLD at start-up).
int rank_of(MPI_Comm comm);
int size_of(MPI_Comm comm);

/// `text` of rank `root` on every rank of `comm` (its length, then its bytes).
std::string broadcast_string(Communicator& comm, std::string text, int root = 0);

/// Every rank's `mine`, whatever its length, on every rank of `comm` in rank order (the lengths,
/// then the values padded to the longest). Collective over `comm`.
template <typename T>
std::vector<std::vector<T>> allgather_varying(Communicator& comm, const std::vector<T>& mine) {
  std::int64_t count = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> counts(static_cast<size_t>(comm.size()));
  comm.allgather(ConstBuffer(&count, 1), Buffer(counts))->wait();
  std::int64_t most = 1;
  for (std::int64_t c : counts) {
    most = c > most ? c : most;
  }
  std::vector<T> padded(mine);
  padded.resize(static_cast<size_t>(most), T());
  std::vector<T> all(static_cast<size_t>(most) * counts.size());
  comm.allgather(ConstBuffer(padded), Buffer(all))->wait();
  std::vector<std::vector<T>> out;
  for (size_t r = 0; r < counts.size(); ++r) {
    const auto begin = all.begin() + static_cast<std::ptrdiff_t>(r * static_cast<size_t>(most));
    out.emplace_back(begin, begin + counts[r]);
  }
  return out;
}

/// Every rank's `mine`, in rank order (collective over `comm`).
std::vector<std::string> allgather_text(Communicator& comm, const std::string& mine);

/// Ends the whole job with exit `code` (MPI_Abort on MPI_COMM_WORLD), after giving the launcher
/// half a second to forward what this rank last printed: MPI_Abort makes it kill every process and
/// stop reading their output, and a message still in the pipe to it would be lost.
[[noreturn]] void abort_job(int code);

}  // namespace tessera::comm
