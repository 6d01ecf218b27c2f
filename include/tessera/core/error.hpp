#pragma once
// The one exception type of Tessera (STYLE.md, "Errors"): what went wrong, on which rank, and —
// when it came from an input deck — the deck file, line and key. Library code throws; main()
// decides how to report and which exit code to use.
#include <stdexcept>
#include <string>

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

 private:
  std::string m_message;
  DeckLocation m_where;
  int m_rank = -1;
};

}  // namespace tessera
