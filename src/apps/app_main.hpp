#pragma once
// main() for Tessera's MPI programs (tessera, tessera-data, tessera-ckpt): MPI and Kokkos set up
// and torn down in order, and the two kinds of error of STYLE.md reported:
//  - an Error every rank holds (comm::agree made sure): rank 0 prints it, every rank returns its
//    exit code together (2 for bad input);
//  - anything else, which only this rank may have hit: it prints "rank N on HOST: ..." and aborts
//    the job, so that no other rank waits forever in a collective.
#include <CLI/CLI.hpp>

#include <functional>
#include <optional>

namespace tessera::apps {

/// Runs `body` (which returns the exit code) inside MPI_Init/Kokkos::initialize.
int run_main(int argc, char** argv, const std::function<int(int, char**)>& body);

/// run_main for the tools (tessera-ckpt, tessera-data): takes the stop signals (SIGINT, SIGTERM,
/// SIGUSR1) as requests (core/signals.hpp) that the commands check at the boundaries of their work,
/// and after `body` returns 0 agrees over the ranks whether any rank got one: a signalled tool
/// exits with signals::kExitStopped and one line, never 0. Call first thing in main().
int run_tool_main(int argc, char** argv, const std::function<int(int, char**)>& body);

/// Parses the command line on every rank (all ranks see the same one). On a mistake, or --help,
/// rank 0 prints CLI11's message and every rank gets the exit code to return (2 for a mistake,
/// 0 for --help); std::nullopt when parsing succeeded.
std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv);

/// A check for an option read into a std::uint64_t (a seed): a decimal integer in
/// [0, 18446744073709551615]. CLI11 alone takes -1 as 2^64 - 1 and clamps 2^64 to the largest
/// value; NonNegativeNumber prints its range as a 309-digit double. Refused: "--seed: -1 is not an
/// integer in [0, 18446744073709551615]" (exit code 2).
CLI::Validator uint64_value();

/// This process's rank in MPI_COMM_WORLD.
int world_rank();

}  // namespace tessera::apps
