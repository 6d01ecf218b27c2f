#pragma once
// Point-to-point messages that give up: the exchanges between the trainers of a population, each
// of which may be slow, stopped (SIGSTOP) or gone. A population must never wait forever on one of
// them (lbann#2107: one stalled trainer hung the whole LTFB job), so every exchange here has a
// deadline, after which the caller goes on without it.
//
// An exchange posts its receive and its send (MPI_Irecv, MPI_Isend on a duplicate of the
// communicator whose errors are returned, not fatal) and polls them (MPI_Test) until both complete
// or `timeout_s` passes. On a timeout the receive is cancelled (MPI_Cancel; a message that matched
// meanwhile completes it after all, which counts as received). A send cannot be taken back: its
// bytes are the channel's own copy, kept until it completes (a partner that wakes later receives
// it, or discards it: its tag names the round). At the end of the exchanges drain() has every rank
// take and discard the messages no exchange took, so that the sends complete; one still in flight
// after that is freed with MPI_Request_free. Tags name the round, so a late message never matches
// a later exchange.
#include <mpi.h>

#include <cstddef>
#include <list>
#include <string>
#include <vector>

namespace tessera::comm {

class TimedChannel {
 public:
  /// Duplicates `comm` (collective over it).
  explicit TimedChannel(MPI_Comm comm);
  ~TimedChannel();
  TimedChannel(const TimedChannel&) = delete;
  TimedChannel& operator=(const TimedChannel&) = delete;

  /// Sends `send_bytes` bytes at `send` to rank `to` (none when `to` < 0) and receives exactly
  /// `recv_bytes` bytes into `recv` from rank `from` (none when `from` < 0), both under `tag`
  /// (>= 0). True when both completed within `timeout_s` seconds; false when one did not, or the
  /// peer is gone, or the message received has another size (then `recv` holds nothing usable).
  /// A stop signal (core/signals.hpp) ends the wait at once, as a timeout does: a job told to stop
  /// does not wait out the timeout for a partner that stopped too (unless
  /// set_leave_on_stop(false)).
  bool exchange(int to, const void* send, size_t send_bytes, int from, void* recv,
                size_t recv_bytes, int tag, double timeout_s);

  /// Whether a stop signal ends an exchange's wait (the default). A caller whose stop waits for a
  /// later agreement (a population's next average) turns it off: its partner, which goes on to
  /// that agreement too, will come.
  void set_leave_on_stop(bool leave) { m_leave_on_stop = leave; }

  /// At the end of the exchanges, collective over the communicator: receives and discards every
  /// message sent on the channel that no exchange took (a partner's send to an exchange this rank
  /// had left or given up on), until no rank has a send in flight or `timeout_s` passes (agreed).
  /// Without it those sends stay unmatched at MPI_Finalize (UCX warns of each). Returns the number
  /// of messages this rank discarded.
  int drain(double timeout_s);

  /// Sends still in flight (their partner has not taken them yet).
  size_t pending_sends();

 private:
  struct PendingSend {
    MPI_Request request = MPI_REQUEST_NULL;
    std::vector<char> bytes;
  };
  // Drops the sends that have completed.
  void reap();

  MPI_Comm m_comm = MPI_COMM_NULL;
  int m_size = 1;
  bool m_leave_on_stop = true;
  std::list<PendingSend> m_sends;  // a list: a pending send's bytes never move
};

}  // namespace tessera::comm
