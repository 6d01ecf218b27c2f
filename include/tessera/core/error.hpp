#pragma once
// The one exception type of Tessera (STYLE.md, "Errors"): what went wrong, on which rank, and —
// when it came from an input deck — the deck file, line and key. Library code throws; main()
// decides how to report and which exit code to use.
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

/// Where in an input deck a value came from (file, 1-based line, dotted key). Empty when unknown.
struct DeckLocation {
  std::string file;
  int line = 0;
  std::string key;

  bool empty() const { return file.empty() && key.empty(); }
};

/// Thrown for every error Tessera detects. `what()` is the full message, already prefixed with the
/// deck location when there is one ("inputs/cnn.toml:12: parallel.tensor = 3 does not divide ...").
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, DeckLocation where = {});

  /// The message without the deck prefix.
  const std::string& message() const { return m_message; }
  /// MPI_COMM_WORLD rank that threw, or -1 when MPI was not initialised.
  int rank() const { return m_rank; }
  const DeckLocation& where() const { return m_where; }

  /// Exit code main() should use: 2 for bad input (a deck, a dataset, a checkpoint, a command
  /// line), 1 for everything else.
  int exit_code() const { return m_exit_code; }
  Error& with_exit_code(int code) {
    m_exit_code = code;
    return *this;
  }
  /// True when every rank of the job holds this same error (comm::agree made sure), so rank 0
  /// alone reports it and all ranks leave together; false when only this rank may have hit it, and
  /// main() must abort the job so that no other rank waits forever.
  bool on_all_ranks() const { return m_on_all_ranks; }
  Error& mark_on_all_ranks() {
    m_on_all_ranks = true;
    return *this;
  }

 private:
  std::string m_message;
  DeckLocation m_where;
  int m_rank = -1;
  int m_exit_code = 1;
  bool m_on_all_ranks = false;
};

namespace detail {
/// Throws Error("<message> [check '<condition>' failed at <file>:<line>]"); see check.hpp.
[[noreturn]] void throw_check_failure(const char* file, int line, const char* condition,
                                      const std::string& message);
}  // namespace detail

/// An Error about bad input (exit code 2).
inline Error input_error(const std::string& message, DeckLocation where = {}) {
  return Error(message, std::move(where)).with_exit_code(2);
}

/// Exit code of a run whose output could not be written (a full disk, a folder it may not write):
/// EX_IOERR. Nothing half-written is left as if it were good; fix the disk and resume.
inline constexpr int kExitWriteError = 74;

/// An Error about output that could not be written (exit code 74).
inline Error write_error(const std::string& message, DeckLocation where = {}) {
  return Error(message, std::move(where)).with_exit_code(kExitWriteError);
}

}  // namespace tessera
