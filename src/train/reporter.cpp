#include "tessera/train/reporter.hpp"

#include <cstdio>

namespace tessera::train {

void ConsoleReporter::info(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void ConsoleReporter::warning(const std::string& line) {
  std::fflush(stdout);
  std::fputs(line.c_str(), stderr);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace tessera::train
