#include "tessera/train/reporter.hpp"

#include <cstdio>

namespace tessera::train {
namespace {
// The line and its newline in one write: mpiexec forwards each process's output as it reads it,
// and the lines of several trainers' leaders must not be cut into each other.
void put_line(const std::string& line, std::FILE* to) {
  const std::string whole = line + "\n";
  std::fwrite(whole.data(), 1, whole.size(), to);
  std::fflush(to);
}
}  // namespace

void ConsoleReporter::info(const std::string& line) {
  put_line(line, stdout);
}

void ConsoleReporter::warning(const std::string& line) {
  std::fflush(stdout);
  put_line(line, stderr);
}

}  // namespace tessera::train
