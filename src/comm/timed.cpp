#include "tessera/comm/timed.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/signals.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>

namespace tessera::comm {

TimedChannel::TimedChannel(MPI_Comm comm) {
  MPI_Comm_dup(comm, &m_comm);
  MPI_Comm_set_errhandler(m_comm, MPI_ERRORS_RETURN);
  MPI_Comm_size(m_comm, &m_size);
}

TimedChannel::~TimedChannel() {
  reap();
  for (PendingSend& s : m_sends) {
    // Its partner never took it: MPI cannot take a send back (MPI_Cancel of a send is deprecated,
    // and MPICH does not cancel a rendezvous), so the request is freed and its bytes are left to
    // the library until MPI_Finalize (a deliberate leak, once per abandoned exchange).
    MPI_Request_free(&s.request);
    new std::vector<char>(std::move(s.bytes));  // NOLINT: outlives the request, by design
  }
  m_sends.clear();
  // Local in MPICH and Open MPI (no synchronisation with a partner that may be stopped).
  MPI_Comm_free(&m_comm);
}

void TimedChannel::reap() {
  for (auto it = m_sends.begin(); it != m_sends.end();) {
    int done = 0;
    if (MPI_Test(&it->request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done != 0) {
      it = m_sends.erase(it);
    } else {
      ++it;
    }
  }
}

size_t TimedChannel::pending_sends() {
  reap();
  return m_sends.size();
}

int TimedChannel::drain(double timeout_s) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  int discarded = 0;
  std::vector<char> scratch;
  for (;;) {
    for (;;) {
      int found = 0;
      MPI_Message message = MPI_MESSAGE_NULL;
      MPI_Status status;
      if (MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, m_comm, &found, &message, &status) !=
              MPI_SUCCESS ||
          found == 0) {
        break;
      }
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      scratch.resize(static_cast<size_t>(std::max(count, 1)));
      MPI_Mrecv(scratch.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE);
      ++discarded;
    }
    reap();
    // Any rank with a send in flight, any rank past the deadline: the same answer everywhere.
    int state[2] = {m_sends.empty() ? 0 : 1, Clock::now() >= deadline ? 1 : 0};
    if (MPI_Allreduce(MPI_IN_PLACE, state, 2, MPI_INT, MPI_MAX, m_comm) != MPI_SUCCESS ||
        state[0] == 0 || state[1] != 0) {
      return discarded;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool TimedChannel::exchange(int to, const void* send, size_t send_bytes, int from, void* recv,
                            size_t recv_bytes, int tag, double timeout_s) {
  TESSERA_CHECK(tag >= 0 && send_bytes <= INT_MAX && recv_bytes <= INT_MAX,
                "timed exchange: tag {} or sizes {}, {} out of range", tag, send_bytes, recv_bytes);
  TESSERA_CHECK(to < m_size && from < m_size, "timed exchange: peers {}, {} outside {} ranks", to,
                from, m_size);
  reap();
  MPI_Request rreq = MPI_REQUEST_NULL;
  bool ok = true;
  if (from >= 0) {
    ok = MPI_Irecv(recv, static_cast<int>(recv_bytes), MPI_BYTE, from, tag, m_comm, &rreq) ==
         MPI_SUCCESS;
  }
  PendingSend* sreq = nullptr;
  if (to >= 0 && ok) {
    m_sends.emplace_back();
    sreq = &m_sends.back();
    sreq->bytes.resize(send_bytes);
    if (send_bytes > 0) {
      std::memcpy(sreq->bytes.data(), send, send_bytes);
    }
    if (MPI_Isend(sreq->bytes.data(), static_cast<int>(send_bytes), MPI_BYTE, to, tag, m_comm,
                  &sreq->request) != MPI_SUCCESS) {
      m_sends.pop_back();
      sreq = nullptr;
      ok = false;
    }
  }
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  bool received = rreq == MPI_REQUEST_NULL;
  bool sent = sreq == nullptr;
  MPI_Status status;
  auto pause = std::chrono::microseconds(20);
  while (ok && !(received && sent) && Clock::now() < deadline &&
         !(m_leave_on_stop && signals::stop_signal() != 0)) {
    int done = 0;
    if (!received) {
      ok = MPI_Test(&rreq, &done, &status) == MPI_SUCCESS;
      received = ok && done != 0;
    }
    if (ok && !sent) {
      ok = MPI_Test(&sreq->request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS;
      sent = ok && done != 0;
    }
    if (!(received && sent)) {
      std::this_thread::sleep_for(pause);  // a stopped partner costs no CPU while we wait
      pause = std::min(pause * 2, std::chrono::microseconds(2000));
    }
  }
  if (!received && rreq != MPI_REQUEST_NULL) {
    // Cancelled, or matched in the meantime: then it completes, and counts.
    MPI_Cancel(&rreq);
    MPI_Wait(&rreq, &status);
    int cancelled = 0;
    MPI_Test_cancelled(&status, &cancelled);
    received = cancelled == 0 && status.MPI_ERROR == MPI_SUCCESS;
  }
  if (from >= 0 && received) {
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    received = static_cast<size_t>(count) == recv_bytes;
  }
  if (sreq != nullptr && sent) {
    m_sends.pop_back();  // the last one added: done
  }
  return ok && received && sent;
}

}  // namespace tessera::comm
