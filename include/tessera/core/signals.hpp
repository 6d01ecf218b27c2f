#pragma once
// Stop signals (SIGINT, SIGTERM, SIGUSR1) taken by one thread with sigwait, never by a handler.
//
// A signal handler runs on whichever thread the kernel picks, on that thread's stack, at any
// instruction. oneDNN 2.6's JIT GEMM moves the stack pointer into the heap for a while
// (uxlfoundation/oneDNN#4845): a signal frame written there corrupted the heap ("double free or
// corruption" after a SIGTERM). So `defer_stop_signals()`, called first in main() before any
// thread exists, blocks these signals in the calling thread — every thread created later (MPI's,
// OpenMP's, oneDNN's, Kokkos's) inherits the mask — and starts the one thread that waits for
// them; the trainer reads `stop_signal()` at its step boundaries. (Threads libraries start before
// main(), like OpenBLAS's idle pool, cannot inherit the mask: a handler that only records the
// signal catches what the kernel hands to them.)
//
// A second SIGINT while a stop is pending ends the process at once (exit 130), as an impatient
// Ctrl-C expects. Programs that do not call `defer_stop_signals()` keep the default actions.
//
// tessera run stops at a step boundary; the tools (tessera-ckpt, tessera-data) call
// `throw_if_stopped` at the boundaries of their work and before they rename their output into
// place, so a stopped tool removes its partial file and exits with kExitStopped, never 0.
#include <string>

namespace tessera::signals {

/// The exit code of a program stopped by a stop signal before it finished (docs/deck-reference.md,
/// "Exit codes"): run it again.
inline constexpr int kExitStopped = 75;

/// Blocks SIGINT, SIGTERM and SIGUSR1 in the calling thread (its later threads inherit the mask)
/// and starts the thread that records them. Call once, first thing in main().
void defer_stop_signals();

/// The first stop signal received (0: none yet).
int stop_signal();

/// Records `sig` as if it had arrived (the trainer's agreement: another rank got it), unless a
/// signal was recorded already.
void note_stop_signal(int sig);

/// Throws tessera::Error (exit code kExitStopped) "stopped by SIGTERM: <what>" when a stop signal
/// has arrived; does nothing otherwise. Not collective: call it inside comm::agree where other
/// ranks must leave too.
void throw_if_stopped(const std::string& what);

/// "SIGTERM", "SIGUSR1", "SIGINT" or "a signal".
const char* name(int sig);

/// Called just before the process exits with a non-zero `code` after a stop signal: keeps the exit
/// status visible to MPICH's mpiexec. (Hydra, once it has forwarded a signal, reports 0 for a rank
/// whose output pipes it saw close before it reaped the rank — a race the rank usually loses. A
/// forked child holds the pipes open until this process is gone, closes stdout — hydra reaps on
/// that event — and stderr only once the rank has been reaped.) Does nothing when no stop signal
/// arrived.
void relay_exit_status(int code);

}  // namespace tessera::signals
