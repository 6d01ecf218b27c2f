#include "records.hpp"

#include "tessera/core/error.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace tessera::train {

std::string json_number(double x) {
  return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null";
}

void write_text(const std::string& path, const std::string& text, std::ios::openmode mode) {
  errno = 0;
  std::ofstream out(path, std::ios::binary | mode);
  if (out) {
    out << text;
    out.flush();
  }
  if (!out) {
    throw write_error(fmt::format("cannot write {} ({})", path,
                                  errno != 0 ? std::strerror(errno) : "an I/O error"));
  }
  out.close();
  if (!out) {
    throw write_error(fmt::format("cannot write {} ({})", path,
                                  errno != 0 ? std::strerror(errno) : "an I/O error"));
  }
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

bool whole_record(const std::string& line) {
  return line.size() >= 2 && line.front() == '{' && line.back() == '}';
}

std::optional<double> record_number(const std::string& line, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  const size_t at = line.find(tag);
  if (at == std::string::npos) {
    return std::nullopt;
  }
  const char* begin = line.c_str() + at + tag.size();
  char* end = nullptr;
  const double x = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(x)) {
    return std::nullopt;
  }
  return x;
}

}  // namespace tessera::train
