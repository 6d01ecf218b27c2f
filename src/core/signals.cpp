#include "tessera/core/signals.hpp"

#include "tessera/core/error.hpp"

#include <fmt/format.h>

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

namespace tessera::signals {
namespace {

std::atomic<int> g_signal{0};

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) {
    sigaddset(&set, sig);
  }
  return set;
}

static_assert(std::atomic<int>::is_always_lock_free, "record() runs in a signal handler");

// Async-signal-safe: it also runs as a handler (below).
void record(int sig) {
  int expected = 0;
  // A SIGINT after any stop request (Ctrl-C twice, or after a scheduler's SIGTERM) stops now.
  if (!g_signal.compare_exchange_strong(expected, sig) && sig == SIGINT) {
    static const char message[] = "second SIGINT: stopping now, without a checkpoint\n";
    (void)!write(STDERR_FILENO, message, sizeof message - 1);
    _exit(130);
  }
}

extern "C" void on_signal(int sig) {
  record(sig);
}

void* wait_for_signals(void*) {
  const sigset_t set = stop_set();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) == 0) {
      record(sig);
    }
  }
  return nullptr;
}

}  // namespace

void defer_stop_signals() {
  const sigset_t set = stop_set();
  // Threads that libraries started before main() (OpenBLAS's pool, from its constructor) did not
  // inherit the mask: a signal the kernel hands to one of them runs this handler there, on an
  // idle pool thread's own stack. Every thread started from here on blocks the signals.
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) {
    sigaction(sig, &action, nullptr);
  }
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  pthread_t thread;
  if (pthread_create(&thread, nullptr, wait_for_signals, nullptr) == 0) {
    pthread_detach(thread);
  } else {  // no thread: the handler takes them in every thread
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  }
}

int stop_signal() {
  return g_signal.load();
}

void note_stop_signal(int sig) {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, sig);  // not record(): this is no second Ctrl-C
}

void throw_if_stopped(const std::string& what) {
  if (const int sig = g_signal.load(); sig != 0) {
    throw Error(fmt::format("stopped by {}: {}", name(sig), what)).with_exit_code(kExitStopped);
  }
}

const char* name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    default:
      return "a signal";
  }
}

void relay_exit_status(int code) {
  if (code == 0 || g_signal.load() == 0) {
    return;
  }
  std::fflush(nullptr);
  const pid_t parent = getpid();
  if (fork() != 0) {
    return;  // the parent (or a failed fork): exit as planned
  }
  // The child: stdout and stderr are the rank's pipes. Wait (at most 5 s) until the rank is gone,
  // close stdout — an event on which hydra's proxy reaps one of its exited ranks — and keep
  // stderr open until the rank has been reaped (its pid vanishes; at most 3 s), so that the
  // proxy never sees the last pipe close before it has reaped the rank.
  for (int i = 0; i < 500 && getppid() == parent; ++i) {
    usleep(10000);
  }
  // Every descriptor but stderr's pipe goes: libraries keep duplicates of stdout.
  struct stat err {};
  const bool have_err = fstat(STDERR_FILENO, &err) == 0;
  const long last = std::min(sysconf(_SC_OPEN_MAX), 65536L);
  for (int fd = 0; fd < last; ++fd) {
    struct stat st {};
    if (fd != STDERR_FILENO && fstat(fd, &st) == 0 &&
        !(have_err && st.st_dev == err.st_dev && st.st_ino == err.st_ino)) {
      close(fd);
    }
  }
  for (int i = 0; i < 300 && (kill(parent, 0) == 0 || errno != ESRCH); ++i) {
    usleep(10000);
  }
  close(STDERR_FILENO);
  std::_Exit(0);
}

}  // namespace tessera::signals
