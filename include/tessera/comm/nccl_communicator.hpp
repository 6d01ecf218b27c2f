#pragma once
// The NCCL backend of Communicator (see communicator.hpp): collectives on device memory, one CUDA
// device per rank. Library tessera_comm_nccl, built with TESSERA_ENABLE_CUDA where NCCL is found
// (also in the GPU-only build when MPI is found). Needs the CUDA toolkit, NCCL, MPI and fmt; no
// Kokkos.
//
//   comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
//   comm::NcclCommunicator gpus(world, local_rank);        // collective over world's ranks
//   gpus.allreduce({device_ptr, n, comm::Memory::device})->wait();
//
// Ordering with the caller's GPU work: every operation first makes the communicator's own stream
// wait for the work queued so far on the *compute stream* (given to the constructor; by default
// the legacy default stream, which DeviceBuffer's copies use), so a buffer written by earlier
// kernels there is read only once they are done. Work::wait() blocks the host until the operation
// has completed; Work::test() asks without blocking. Both check NCCL's asynchronous error state,
// so a failed peer turns into a tessera::Error rather than a hang.
//
// Sends and receives are queued and start together, inside one ncclGroupStart/End, at the next
// wait() or test() of one of them or at the next collective or barrier: a ring that posts recv then
// send on every rank cannot deadlock (NCCL would otherwise block the stream on the recv). They
// still match in the order they were issued per peer pair; tags are accepted and ignored.
#include "tessera/comm/communicator.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <string>

namespace tessera::comm {

namespace detail {
[[noreturn]] void throw_nccl_error(ncclResult_t status, const char* call, const char* file,
                                   int line);
/// "ncclInvalidArgument": the enumerator's name of an NCCL status.
const char* nccl_status_name(ncclResult_t status);
struct NcclState;  // the NCCL communicator, stream and queued sends/receives, shared with Works
}  // namespace detail

/// The MPI group, the NCCL communicator and the CUDA device of one rank. Non-copyable; destroying
/// it completes what was started (unless an exception is unwinding: then the NCCL communicator is
/// aborted, so that nothing waits for a peer that may never come). Works may outlive it.
class NcclCommunicator final : public Communicator {
 public:
  /// Collective over `group`'s ranks (same ranks, same order, same name; usually an
  /// MpiCommunicator): duplicates group.mpi_comm(), which stays this communicator's mpi_comm(),
  /// makes `device` current, creates the stream and, with rank 0's ncclUniqueId broadcast over
  /// MPI, the NCCL communicator. Each rank needs a device of its own (NCCL refuses two ranks of a
  /// communicator on one GPU). A local failure (a bad device, no driver) throws the same
  /// tessera::Error on every rank (comm::agree). `compute_stream`: the stream whose work the
  /// operations wait for before they start (nullptr: the legacy default stream).
  NcclCommunicator(const Communicator& group, int device, cudaStream_t compute_stream = nullptr);
  ~NcclCommunicator() override;

  const char* backend() const override { return "nccl"; }
  Memory memory() const override { return Memory::device; }
  MPI_Comm mpi_comm() const override { return m_mpi.mpi_comm(); }

  /// The CUDA device this rank's operations run on.
  int device() const;
  /// The communicator's own stream (non-blocking), on which NCCL's kernels run.
  cudaStream_t stream() const;
  /// NCCL's version as ncclGetVersion reports it, e.g. 22809 for 2.28.9.
  static int nccl_version();

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

  MpiCommunicator m_mpi;
  std::shared_ptr<detail::NcclState> m_state;
};

}  // namespace tessera::comm

/// TESSERA_NCCL_CHECK(ncclAllReduce(...)): throw tessera::Error unless the call returns
/// ncclSuccess, naming the call as written, the status and NCCL's description, e.g.
///   NCCL call 'ncclCommCount(nullptr, &count)' failed: ncclInvalidArgument (invalid argument
///   (run with NCCL_DEBUG=WARN for details)) [nccl_communicator.cpp:88]
#define TESSERA_NCCL_CHECK(...)                                                               \
  do {                                                                                        \
    const ncclResult_t tessera_nccl_status_ = (__VA_ARGS__);                                  \
    if (tessera_nccl_status_ != ncclSuccess) {                                                \
      ::tessera::comm::detail::throw_nccl_error(tessera_nccl_status_, #__VA_ARGS__, __FILE__, \
                                                __LINE__);                                    \
    }                                                                                         \
  } while (false)
