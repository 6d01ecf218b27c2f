// The NCCL backend of Communicator (comm/nccl_communicator.hpp). Every operation is one launch —
// the communicator's stream waits for the compute stream, then ncclGroupStart, the NCCL calls,
// ncclGroupEnd, and an event recorded on the stream — except sends and receives, which are queued
// and launched together (one group) when one of their Works is waited for or tested, or before the
// next collective. A Work polls its launch's event and NCCL's asynchronous error state.
#include "tessera/comm/nccl_communicator.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/core/check.hpp"
#include "tessera/kernels/cuda/check.hpp"
#include "tessera/kernels/cuda/device.hpp"

#include <fmt/format.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace tessera::comm {

namespace cuda = tessera::kernels::cuda;

namespace detail {
namespace {

// "src/comm/cuda/nccl_communicator.cpp" -> "nccl_communicator.cpp", as the CUDA checks write it.
const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash != nullptr ? slash + 1 : file;
}

}  // namespace

const char* nccl_status_name(ncclResult_t status) {
  switch (status) {
    case ncclSuccess:
      return "ncclSuccess";
    case ncclUnhandledCudaError:
      return "ncclUnhandledCudaError";
    case ncclSystemError:
      return "ncclSystemError";
    case ncclInternalError:
      return "ncclInternalError";
    case ncclInvalidArgument:
      return "ncclInvalidArgument";
    case ncclInvalidUsage:
      return "ncclInvalidUsage";
    case ncclRemoteError:
      return "ncclRemoteError";
    case ncclInProgress:
      return "ncclInProgress";
    case ncclNumResults:
      break;
  }
  return "unknown ncclResult_t";
}

void throw_nccl_error(ncclResult_t status, const char* call, const char* file, int line) {
  throw Error(std::string("NCCL call '") + call + "' failed: " + nccl_status_name(status) + " (" +
              ncclGetErrorString(status) + ") [" + base_name(file) + ":" + std::to_string(line) +
              "]");
}

namespace {

// Makes `device` current for a scope, then restores the device that was current before.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    TESSERA_CUDA_CHECK(cudaGetDevice(&m_previous));
    if (m_previous == device) {
      m_previous = -1;
    } else {
      TESSERA_CUDA_CHECK(cudaSetDevice(device));
    }
  }
  ~DeviceGuard() {
    if (m_previous >= 0) {
      static_cast<void>(cudaSetDevice(m_previous));  // no throwing from a destructor
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int m_previous = -1;
};

// An owned CUDA event (no timing), on the device current when it is made.
class Event {
 public:
  Event() { TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&m_event, cudaEventDisableTiming)); }
  ~Event() {
    if (m_event != nullptr) {
      static_cast<void>(cudaEventDestroy(m_event));
    }
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return m_event; }

 private:
  cudaEvent_t m_event = nullptr;
};

}  // namespace

/// One launch: a collective, or the queued sends and receives started together. Its event
/// completes when the launch does.
struct Batch {
  Event done;
  bool launched = false;
  std::string failure;  // why the launch failed (it then never completes)
};

/// What the communicator and its Works share, so that a Work may outlive its communicator: the
/// NCCL communicator (destroyed with the last of them), the stream and the queued sends/receives.
struct NcclState {
  using Enqueue = std::function<void(ncclComm_t, cudaStream_t)>;

  /// One queued send (input) or receive (output).
  struct PointToPoint {
    bool send = false;
    const void* input = nullptr;
    void* output = nullptr;
    std::size_t count = 0;
    ncclDataType_t type = ncclFloat32;
    int peer = -1;
  };

  NcclState() = default;
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState();

  /// Launches `enqueue`'s NCCL calls after the queued sends and receives; `what` names the
  /// operation for errors.
  std::shared_ptr<Batch> launch(const std::string& what, const Enqueue& enqueue);
  /// Queues a send or receive; returns the batch it will be launched in.
  std::shared_ptr<Batch> queue(const std::string& what, const PointToPoint& op);
  /// Launches the queued sends and receives, if any, as one group.
  void flush(const std::string& what);
  /// Throws when NCCL has reported an asynchronous error (a peer failed, a network error), after
  /// aborting the NCCL communicator so that nothing waits on it any longer.
  void check_async(const std::string& what);

  int device = -1;
  cudaStream_t compute = nullptr;
  std::optional<cuda::Stream> stream;
  std::optional<Event> ready;                        // recorded on `compute` before each launch
  std::optional<cuda::DeviceBuffer<float>> scratch;  // the barrier's one element
  ncclComm_t comm = nullptr;
  std::string failure;  // set once the NCCL communicator has failed and been aborted

 private:
  void start(const std::string& what, Batch& batch, const Enqueue& enqueue);
  void check_usable(const std::string& what) const;

  std::vector<PointToPoint> m_pending;
  std::shared_ptr<Batch> m_pending_batch;
};

NcclState::~NcclState() {
  if (comm == nullptr) {
    return;
  }
  // Not via DeviceGuard: nothing may throw here.
  int previous = -1;
  static_cast<void>(cudaGetDevice(&previous));
  static_cast<void>(cudaSetDevice(device));
  if (std::uncaught_exceptions() > 0) {
    // The error may be on this rank alone: do not wait for peers that may never come.
    static_cast<void>(ncclCommAbort(comm));
  } else {
    // Queued sends and receives left here belong to Works dropped while an exception unwound:
    // their buffers may be gone, so they are not launched.
    static_cast<void>(cudaStreamSynchronize(stream->get()));
    static_cast<void>(ncclCommDestroy(comm));
  }
  if (previous >= 0 && previous != device) {
    static_cast<void>(cudaSetDevice(previous));
  }
}

void NcclState::check_usable(const std::string& what) const {
  if (!failure.empty()) {
    throw Error(what + ": the NCCL communicator has failed earlier and was aborted (" + failure +
                ")");
  }
}

void NcclState::start(const std::string& what, Batch& batch, const Enqueue& enqueue) {
  check_usable(what);
  // After the compute stream's work so far: the buffers' producers.
  TESSERA_CUDA_CHECK(cudaEventRecord(ready->get(), compute));
  TESSERA_CUDA_CHECK(cudaStreamWaitEvent(stream->get(), ready->get(), 0));
  TESSERA_NCCL_CHECK(ncclGroupStart());
  try {
    enqueue(comm, stream->get());
  } catch (...) {
    static_cast<void>(ncclGroupEnd());
    throw;
  }
  TESSERA_NCCL_CHECK(ncclGroupEnd());
  TESSERA_CUDA_CHECK(cudaEventRecord(batch.done.get(), stream->get()));
  batch.launched = true;
}

std::shared_ptr<Batch> NcclState::launch(const std::string& what, const Enqueue& enqueue) {
  DeviceGuard guard(device);
  flush(what);  // issued earlier, so launched first: every rank sees the same order
  auto batch = std::make_shared<Batch>();
  start(what, *batch, enqueue);
  return batch;
}

std::shared_ptr<Batch> NcclState::queue(const std::string& what, const PointToPoint& op) {
  check_usable(what);
  if (!m_pending_batch) {
    DeviceGuard guard(device);
    m_pending_batch = std::make_shared<Batch>();
  }
  m_pending.push_back(op);
  return m_pending_batch;
}

void NcclState::flush(const std::string& what) {
  if (m_pending.empty()) {
    return;
  }
  DeviceGuard guard(device);
  const std::vector<PointToPoint> ops = std::exchange(m_pending, {});
  const std::shared_ptr<Batch> batch = std::exchange(m_pending_batch, nullptr);
  try {
    start(what, *batch, [&ops](ncclComm_t nccl, cudaStream_t on) {
      for (const PointToPoint& op : ops) {
        if (op.count == 0) {
          continue;  // both sides of a pair skip it: their counts are equal
        }
        if (op.send) {
          TESSERA_NCCL_CHECK(ncclSend(op.input, op.count, op.type, op.peer, nccl, on));
        } else {
          TESSERA_NCCL_CHECK(ncclRecv(op.output, op.count, op.type, op.peer, nccl, on));
        }
      }
    });
  } catch (const std::exception& e) {
    batch->failure = e.what();
    throw;
  }
}

void NcclState::check_async(const std::string& what) {
  check_usable(what);
  ncclResult_t async = ncclSuccess;
  TESSERA_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
  if (async == ncclSuccess || async == ncclInProgress) {
    return;
  }
  failure = std::string(nccl_status_name(async)) + ": " + ncclGetErrorString(async);
  static_cast<void>(ncclCommAbort(comm));
  comm = nullptr;
  throw Error(what + ": NCCL reported an asynchronous error, " + failure +
              "; the NCCL communicator was aborted");
}

}  // namespace detail

namespace {

using detail::Batch;
using detail::NcclState;

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u64:
      return ncclUint64;
    case DType::u8:
      return ncclUint8;
  }
  TESSERA_THROW("NCCL backend: no ncclDataType_t for {}", dtype_name(dtype));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::product:
      return ncclProd;
    case ReduceOp::min:
      return ncclMin;
    case ReduceOp::max:
      return ncclMax;
  }
  TESSERA_THROW("NCCL backend: no ncclRedOp_t for reduction {}", static_cast<int>(op));
}

// Counts were checked non-negative by Communicator.
std::size_t nccl_count(Index count) {
  return static_cast<std::size_t>(count);
}

class NcclWork final : public Work {
 public:
  /// `what` names the operation for errors ("allreduce on communicator 'data' (rank 0 of 2)").
  NcclWork(std::shared_ptr<NcclState> state, std::shared_ptr<Batch> batch, std::string what)
      : m_state(std::move(state)), m_batch(std::move(batch)), m_what(std::move(what)) {}

  ~NcclWork() override {
    // Waits for a pending operation unless an exception is unwinding past it (see Work).
    if (!m_done && std::uncaught_exceptions() <= m_unwinding) {
      try {
        wait();
      } catch (...) {
        // A destructor does not throw; wait() has aborted the communicator where NCCL failed.
      }
    }
  }

  void wait() override {
    while (!test()) {
      std::this_thread::yield();
    }
  }

  bool test() override {
    if (m_done) {
      return true;
    }
    try {
      if (!m_batch->launched && m_batch->failure.empty()) {
        m_state->flush(m_what);  // this Work's sends and receives are still queued
      }
      if (!m_batch->failure.empty()) {
        throw Error(m_what + ": " + m_batch->failure);
      }
      const cudaError_t status = cudaEventQuery(m_batch->done.get());
      if (status == cudaSuccess) {
        m_done = true;
        return true;
      }
      if (status != cudaErrorNotReady) {
        cuda::detail::throw_cuda_error(status, ("cudaEventQuery of " + m_what).c_str(), __FILE__,
                                       __LINE__);
      }
      m_state->check_async(m_what);
    } catch (...) {
      m_done = true;  // failed: nothing more to wait for
      throw;
    }
    return false;
  }

  bool is_completed() const override { return m_done; }

 private:
  std::shared_ptr<NcclState> m_state;
  std::shared_ptr<Batch> m_batch;
  std::string m_what;
  bool m_done = false;
  int m_unwinding = std::uncaught_exceptions();  // exceptions in flight when the Work was made
};

// Launches one collective and returns its Work.
std::unique_ptr<Work> start(const std::shared_ptr<NcclState>& state, std::string what,
                            const NcclState::Enqueue& enqueue) {
  auto batch = state->launch(what, enqueue);
  return std::make_unique<NcclWork>(state, std::move(batch), std::move(what));
}

}  // namespace

NcclCommunicator::NcclCommunicator(const Communicator& group, int device,
                                   cudaStream_t compute_stream)
    : Communicator(group.name(), group.rank(), group.size()),
      m_mpi(group.mpi_comm(), group.name()),
      m_state(std::make_shared<NcclState>()) {
  NcclState& state = *m_state;
  state.device = device;
  state.compute = compute_stream;
  ncclUniqueId id{};
  // What can fail on one rank alone, agreed: then every rank throws the same error, and none
  // waits in ncclCommInitRank for a rank that has left.
  agree(m_mpi.mpi_comm(), [&] {
    const int devices = cuda::device_count();
    if (devices == 0) {
      TESSERA_THROW("{}: no CUDA device: {}", context("NCCL set-up"), cuda::no_device_reason());
    }
    if (device < 0 || device >= devices) {
      TESSERA_THROW("{}: device {} does not exist (this rank sees {} CUDA devices, 0 to {})",
                    context("NCCL set-up"), device, devices, devices - 1);
    }
    TESSERA_CUDA_CHECK(cudaSetDevice(device));
    state.stream.emplace();
    state.ready.emplace();
    state.scratch.emplace(1);
    state.scratch->zero(state.stream->get());
    if (rank() == 0) {
      TESSERA_NCCL_CHECK(ncclGetUniqueId(&id));
    }
  });
  TESSERA_MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, m_mpi.mpi_comm()));
  TESSERA_NCCL_CHECK(ncclCommInitRank(&state.comm, size(), id, rank()));
}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::device() const {
  return m_state->device;
}

cudaStream_t NcclCommunicator::stream() const {
  return m_state->stream->get();
}

int NcclCommunicator::nccl_version() {
  int version = 0;
  TESSERA_NCCL_CHECK(ncclGetVersion(&version));
  return version;
}

std::unique_ptr<Work> NcclCommunicator::do_allreduce(const Buffer& buffer,
                                                     const AllreduceOptions& options) {
  const ncclDataType_t type = nccl_type(buffer.dtype);
  const ncclRedOp_t op = nccl_op(options.op);
  return start(m_state, context("allreduce"), [&](ncclComm_t nccl, cudaStream_t on) {
    if (buffer.count > 0) {
      TESSERA_NCCL_CHECK(
          ncclAllReduce(buffer.data, buffer.data, nccl_count(buffer.count), type, op, nccl, on));
    }
  });
}

std::unique_ptr<Work> NcclCommunicator::do_reduce_scatter(const ConstBuffer& input,
                                                          const Buffer& output,
                                                          const ReduceScatterOptions& options) {
  const ncclDataType_t type = nccl_type(output.dtype);
  const ncclRedOp_t op = nccl_op(options.op);
  return start(m_state, context("reduce_scatter"), [&](ncclComm_t nccl, cudaStream_t on) {
    if (output.count > 0) {
      TESSERA_NCCL_CHECK(
          ncclReduceScatter(input.data, output.data, nccl_count(output.count), type, op, nccl, on));
    }
  });
}

std::unique_ptr<Work> NcclCommunicator::do_allgather(const ConstBuffer& input, const Buffer& output,
                                                     const AllgatherOptions& /*options*/) {
  // In place (input is this rank's block of output) is NCCL's own convention: nothing to convert.
  const ncclDataType_t type = nccl_type(input.dtype);
  return start(m_state, context("allgather"), [&](ncclComm_t nccl, cudaStream_t on) {
    if (input.count > 0) {
      TESSERA_NCCL_CHECK(
          ncclAllGather(input.data, output.data, nccl_count(input.count), type, nccl, on));
    }
  });
}

std::unique_ptr<Work> NcclCommunicator::do_broadcast(const Buffer& buffer,
                                                     const BroadcastOptions& options) {
  const ncclDataType_t type = nccl_type(buffer.dtype);
  return start(m_state, context("broadcast"), [&](ncclComm_t nccl, cudaStream_t on) {
    if (buffer.count > 0) {
      TESSERA_NCCL_CHECK(ncclBroadcast(buffer.data, buffer.data, nccl_count(buffer.count), type,
                                       options.root, nccl, on));
    }
  });
}

std::unique_ptr<Work> NcclCommunicator::do_send(const ConstBuffer& buffer,
                                                const SendOptions& options) {
  std::string what = fmt::format("{} to peer {}", context("send"), options.peer);
  NcclState::PointToPoint op;
  op.send = true;
  op.input = buffer.data;
  op.count = nccl_count(buffer.count);
  op.type = nccl_type(buffer.dtype);
  op.peer = options.peer;
  auto batch = m_state->queue(what, op);
  return std::make_unique<NcclWork>(m_state, std::move(batch), std::move(what));
}

std::unique_ptr<Work> NcclCommunicator::do_recv(const Buffer& buffer, const RecvOptions& options) {
  std::string what = fmt::format("{} from peer {}", context("recv"), options.peer);
  NcclState::PointToPoint op;
  op.output = buffer.data;
  op.count = nccl_count(buffer.count);
  op.type = nccl_type(buffer.dtype);
  op.peer = options.peer;
  auto batch = m_state->queue(what, op);
  return std::make_unique<NcclWork>(m_state, std::move(batch), std::move(what));
}

std::unique_ptr<Work> NcclCommunicator::do_barrier(const BarrierOptions& /*options*/) {
  float* one = m_state->scratch->data();
  return start(m_state, context("barrier"), [one](ncclComm_t nccl, cudaStream_t on) {
    TESSERA_NCCL_CHECK(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, nccl, on));
  });
}

}  // namespace tessera::comm
