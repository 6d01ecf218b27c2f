// The MPI backend of Communicator: every operation is MPI's non-blocking call, and its Work holds
// the MPI_Request (MPI_Test / MPI_Wait).
#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/check.hpp"

#include <fmt/format.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <utility>

namespace tessera::comm {
namespace {

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u64:
      return MPI_UINT64_T;
    case DType::u8:
      return MPI_UNSIGNED_CHAR;
  }
  TESSERA_THROW("MPI backend: no MPI datatype for {}", dtype_name(dtype));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::product:
      return MPI_PROD;
    case ReduceOp::min:
      return MPI_MIN;
    case ReduceOp::max:
      return MPI_MAX;
  }
  TESSERA_THROW("MPI backend: no MPI_Op for reduction {}", static_cast<int>(op));
}

class MpiWork final : public Work {
 public:
  /// `what` names the operation for errors ("allreduce on communicator 'data' (rank 0 of 2)").
  MpiWork(MPI_Request request, std::string what) : m_request(request), m_what(std::move(what)) {}
  /// `then` runs once the operation has completed successfully (an in-place reduce-scatter moves
  /// its result into place).
  MpiWork(MPI_Request request, std::string what, std::function<void()> then)
      : m_request(request), m_what(std::move(what)), m_then(std::move(then)) {}
  /// A recv: the message must hold exactly `expected` elements of `type`.
  MpiWork(MPI_Request request, std::string what, MPI_Datatype type, int expected)
      : m_request(request), m_what(std::move(what)), m_type(type), m_expected(expected) {}

  ~MpiWork() override {
    // Waits for a pending operation unless an exception is unwinding past it (see Work).
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (m_request != MPI_REQUEST_NULL && !finalized && std::uncaught_exceptions() <= m_unwinding) {
      watchdog::Blocked blocked(m_seq);
      if (MPI_Wait(&m_request, MPI_STATUS_IGNORE) == MPI_SUCCESS && m_then) {
        m_then();
      }
    }
  }

  void wait() override {
    if (m_done) {
      return;
    }
    MPI_Status status;
    int code = MPI_SUCCESS;
    {
      watchdog::Blocked blocked(m_seq);
      code = MPI_Wait(&m_request, &status);
    }
    finish(code, status);
  }

  bool test() override {
    if (m_done) {
      return true;
    }
    int flag = 0;
    MPI_Status status;
    const int code = MPI_Test(&m_request, &flag, &status);
    if (flag != 0 || code != MPI_SUCCESS) {
      finish(code, status);
    }
    return m_done;
  }

  bool is_completed() const override { return m_done; }

 private:
  // The request has completed with `code`: mark it done and throw if it failed. (A message
  // longer than a recv's buffer is MPI's truncation error; MPICH raises errors of MPI_Wait and
  // MPI_Test on MPI_COMM_WORLD's handler, so there the job aborts with "Message truncated".)
  void finish(int code, const MPI_Status& status) {
    m_done = true;
    check_mpi(code, ("MPI_Wait/MPI_Test of " + m_what).c_str(), __FILE__, __LINE__);
    if (m_expected >= 0) {
      int received = 0;
      TESSERA_MPI_CHECK(MPI_Get_count(&status, m_type, &received));
      if (received != m_expected) {
        TESSERA_THROW("{}: received {} elements, expected {}", m_what, received, m_expected);
      }
    }
    if (m_then) {
      m_then();
    }
  }

  MPI_Request m_request = MPI_REQUEST_NULL;
  std::string m_what;
  MPI_Datatype m_type = MPI_DATATYPE_NULL;
  int m_expected = -1;
  std::function<void()> m_then;
  bool m_done = false;
  std::uint64_t m_seq = watchdog::last_started();  // launch() recorded it just before
  int m_unwinding = std::uncaught_exceptions();    // exceptions in flight when the Work was made
};

}  // namespace

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(MPI_Comm comm, int color, int key,
                                                        std::string name) {
  MPI_Comm part = MPI_COMM_NULL;
  TESSERA_MPI_CHECK(MPI_Comm_split(comm, color, key, &part));
  auto out = std::make_unique<MpiCommunicator>(part, std::move(name));
  MPI_Comm_free(&part);
  return out;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name)
    : Communicator(std::move(name), rank_of(comm), size_of(comm)) {
  TESSERA_MPI_CHECK(MPI_Comm_dup(comm, &m_comm));
  // Failures come back as codes, which TESSERA_MPI_CHECK turns into tessera::Error.
  MPI_Comm_set_errhandler(m_comm, MPI_ERRORS_RETURN);
  void* tag_ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(m_comm, MPI_TAG_UB, &tag_ub, &found);
  if (found != 0) {
    m_tag_ub = *static_cast<int*>(tag_ub);
  }
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (m_comm != MPI_COMM_NULL && !finalized) {
    MPI_Comm_free(&m_comm);
  }
}

int MpiCommunicator::mpi_count(const char* op, Index count) const {
  if (count > INT_MAX) {
    TESSERA_THROW("{}: {} elements exceed MPI's limit of {} per call; split the buffer",
                  context(op), count, INT_MAX);
  }
  return static_cast<int>(count);
}

void MpiCommunicator::check_tag(const char* op, int tag) const {
  if (tag > m_tag_ub) {
    TESSERA_THROW("{}: tag {} is above MPI_TAG_UB = {}", context(op), tag, m_tag_ub);
  }
}

std::unique_ptr<Work> MpiCommunicator::do_allreduce(const Buffer& buffer,
                                                    const AllreduceOptions& options) {
  const char* op = "allreduce";
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buffer.data, mpi_count(op, buffer.count),
                                   mpi_datatype(buffer.dtype), mpi_op(options.op), m_comm,
                                   &request));
  return std::make_unique<MpiWork>(request, context(op));
}

std::unique_ptr<Work> MpiCommunicator::do_reduce_scatter(const ConstBuffer& input,
                                                         const Buffer& output,
                                                         const ReduceScatterOptions& options) {
  const char* op = "reduce_scatter";
  const int count = mpi_count(op, output.count);
  const MPI_Datatype type = mpi_datatype(output.dtype);
  int type_bytes = 0;
  TESSERA_MPI_CHECK(MPI_Type_size(type, &type_bytes));
  const size_t bytes = static_cast<size_t>(count) * static_cast<size_t>(type_bytes);
  // The base class lets output overlap input only as this rank's block of it: in place.
  void* buffer = const_cast<void*>(input.data);  // in place, the input is the caller's to overwrite
  void* block = static_cast<char*>(buffer) + static_cast<size_t>(rank()) * bytes;
  MPI_Request request = MPI_REQUEST_NULL;
  if (count == 0 || output.data != block) {
    TESSERA_MPI_CHECK(MPI_Ireduce_scatter_block(input.data, output.data, count, type,
                                                mpi_op(options.op), m_comm, &request));
    return std::make_unique<MpiWork>(request, context(op));
  }
  // MPI's in-place form leaves the result in block 0, from where it moves to block r once the
  // operation has completed.
  TESSERA_MPI_CHECK(MPI_Ireduce_scatter_block(MPI_IN_PLACE, buffer, count, type, mpi_op(options.op),
                                              m_comm, &request));
  if (rank() == 0) {
    return std::make_unique<MpiWork>(request, context(op));
  }
  return std::make_unique<MpiWork>(request, context(op),
                                   [buffer, block, bytes] { std::memcpy(block, buffer, bytes); });
}

std::unique_ptr<Work> MpiCommunicator::do_allgather(const ConstBuffer& input, const Buffer& output,
                                                    const AllgatherOptions& /*options*/) {
  const char* op = "allgather";
  const int count = mpi_count(op, input.count);
  const MPI_Datatype type = mpi_datatype(input.dtype);
  // The base class lets input overlap output only as this rank's block: MPI's in-place form.
  int bytes = 0;
  TESSERA_MPI_CHECK(MPI_Type_size(type, &bytes));
  const bool in_place = input.data == static_cast<const char*>(output.data) +
                                          static_cast<Index>(rank()) * input.count * bytes;
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : input.data, count, type, output.data,
                                   count, type, m_comm, &request));
  return std::make_unique<MpiWork>(request, context(op));
}

std::unique_ptr<Work> MpiCommunicator::do_broadcast(const Buffer& buffer,
                                                    const BroadcastOptions& options) {
  const char* op = "broadcast";
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Ibcast(buffer.data, mpi_count(op, buffer.count), mpi_datatype(buffer.dtype),
                               options.root, m_comm, &request));
  return std::make_unique<MpiWork>(request, context(op));
}

std::unique_ptr<Work> MpiCommunicator::do_send(const ConstBuffer& buffer,
                                               const SendOptions& options) {
  const char* op = "send";
  check_tag(op, options.tag);
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Isend(buffer.data, mpi_count(op, buffer.count), mpi_datatype(buffer.dtype),
                              options.peer, options.tag, m_comm, &request));
  return std::make_unique<MpiWork>(
      request, fmt::format("{} to peer {} with tag {}", context(op), options.peer, options.tag));
}

std::unique_ptr<Work> MpiCommunicator::do_recv(const Buffer& buffer, const RecvOptions& options) {
  const char* op = "recv";
  check_tag(op, options.tag);
  const int count = mpi_count(op, buffer.count);
  const MPI_Datatype type = mpi_datatype(buffer.dtype);
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(
      MPI_Irecv(buffer.data, count, type, options.peer, options.tag, m_comm, &request));
  return std::make_unique<MpiWork>(
      request, fmt::format("{} from peer {} with tag {}", context(op), options.peer, options.tag),
      type, count);
}

std::unique_ptr<Work> MpiCommunicator::do_barrier(const BarrierOptions& /*options*/) {
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Ibarrier(m_comm, &request));
  return std::make_unique<MpiWork>(request, context("barrier"));
}

int rank_of(MPI_Comm comm) {
  int rank = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  return rank;
}

int size_of(MPI_Comm comm) {
  int size = 1;
  TESSERA_MPI_CHECK(MPI_Comm_size(comm, &size));
  return size;
}

std::string broadcast_string(Communicator& comm, std::string text, int root) {
  auto n = static_cast<std::int64_t>(text.size());
  comm.broadcast(Buffer(&n, 1), {root})->wait();
  text.resize(static_cast<size_t>(n));
  comm.broadcast(Buffer(text.data(), n), {root})->wait();
  return text;
}

std::vector<std::string> allgather_text(Communicator& comm, const std::string& mine) {
  std::vector<std::string> out;
  for (const std::vector<char>& text :
       allgather_varying(comm, std::vector<char>(mine.begin(), mine.end()))) {
    out.emplace_back(text.begin(), text.end());
  }
  return out;
}

}  // namespace tessera::comm
