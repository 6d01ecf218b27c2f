#include "app_main.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/io/hdf5.hpp"

#include <fmt/format.h>
#include <malloc.h>
#include <mpi.h>
#include <unistd.h>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <vector>

namespace tessera::apps {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // A first word that is no subcommand: CLI11 would say only "A subcommand is required".
  if (argc > 1 && argv[1][0] != '-') {
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
    }
    if (!names.empty() && std::find(names.begin(), names.end(), argv[1]) == names.end()) {
      if (world_rank() == 0) {
        const std::string near = closest_match(argv[1], names);
        std::fprintf(stderr, "error: unknown subcommand '%s'%s; the subcommands are %s (--help)\n",
                     argv[1], near.empty() ? "" : (" (did you mean '" + near + "'?)").c_str(),
                     join(names).c_str());
      }
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (world_rank() == 0) {
      app.exit(e);
    }
    return e.get_exit_code() == 0 ? 0 : 2;
  }
  return std::nullopt;
}

CLI::Validator uint64_value() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        std::uint64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [at, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || at != end) {
          return fmt::format("{} is not an integer in [0, {}]", text.empty() ? "\"\"" : text,
                             std::numeric_limits<std::uint64_t>::max());
        }
        return {};
      },
      "UINT64");
}

namespace {
// Set by run_tool_main: a stop signal makes the exit code non-zero.
bool g_tool = false;

[[noreturn]] void abort_job(const std::string& what, int code) {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  std::fprintf(stderr, "rank %d on %s: error: %s\n", world_rank(), host, what.c_str());
  comm::abort_job(code);
}
}  // namespace

int run_main(int argc, char** argv, const std::function<int(int, char**)>& body) {
  // A training step frees and allocates the same step-sized buffers (batches, activations) every
  // step. By default glibc serves those over 128 KiB with mmap and trims the heap's top, so each
  // step would fault their pages in afresh (7% of the MLP's step on this machine; a 3-D CNN's
  // 256 MiB activations at 128³ took 70% of its step in page faults). Keep them in the heap, as a
  // caching allocator would: every block under 2 GiB comes from the heap (threads other than the
  // main one still map what their arenas cannot hold), and freed memory is never returned, so a
  // rank holds its peak from the first step on — what it needs at every step anyway.
  mallopt(M_MMAP_THRESHOLD, std::numeric_limits<int>::max());
  mallopt(M_TRIM_THRESHOLD, -1);
  // MPI_THREAD_MULTIPLE: the watchdog's thread (comm/watchdog.hpp) exchanges its diagnosis while
  // the main thread is blocked in a collective. Everything else calls MPI from the main thread.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  // Kokkos reads its own --kokkos-* options, but also answers a bare --help with its own page:
  // it sees only its options, the program the rest.
  std::vector<char*> kokkos_args{argv[0]};
  std::vector<char*> program_args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    (std::strncmp(argv[i], "--kokkos-", 9) == 0 ? kokkos_args : program_args).push_back(argv[i]);
  }
  int kokkos_argc = static_cast<int>(kokkos_args.size());
  kokkos_args.push_back(nullptr);
  program_args.push_back(nullptr);
  int code = 0;
  {
    Kokkos::ScopeGuard kokkos(kokkos_argc, kokkos_args.data());
    comm::enable_device_staging();  // a CUDA build: MPI takes tensors through host copies
    try {
      code = body(static_cast<int>(program_args.size()) - 1, program_args.data());
    } catch (const Error& e) {
      if (!e.on_all_ranks()) {
        abort_job(e.what(), e.exit_code());
      }
      if (world_rank() == 0) {
        std::fprintf(stderr, "error: %s\n", e.what());
      }
      code = e.exit_code();
    } catch (const std::exception& e) {
      abort_job(e.what(), 1);
    }
  }
  io::close_library();  // before MPI_Finalize: a file that failed to close still needs MPI-IO
  const int rank = world_rank();
  MPI_Finalize();
  if (g_tool && code == 0 && signals::stop_signal() != 0) {
    // The signal came after the tool's last agreement (during the shutdown): too late to tell the
    // other ranks, not too late to say it. Rank 0 alone says it, as it says everything.
    if (rank == 0) {
      std::fprintf(stderr,
                   "error: stopped by %s: it came as the command finished; what it wrote is "
                   "complete\n",
                   signals::name(signals::stop_signal()));
    }
    code = signals::kExitStopped;
  }
  signals::relay_exit_status(code);
  return code;
}

int run_tool_main(int argc, char** argv, const std::function<int(int, char**)>& body) {
  signals::defer_stop_signals();  // before MPI_Init starts a thread
  g_tool = true;
  return run_main(argc, argv, [&body](int ac, char** av) {
    const int code = body(ac, av);
    // A signal that no check of the command saw (it came as the command finished, or to a rank
    // that was waiting for another): the work is complete, but a signalled tool never says 0.
    comm::agree(MPI_COMM_WORLD, [&] {
      if (code == 0) {
        signals::throw_if_stopped("it came as the command finished; what it wrote is complete");
      }
    });
    return code;
  });
}

}  // namespace tessera::apps
