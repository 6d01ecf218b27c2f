#include "fuzz.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tessera::fuzz {

std::string write_scratch(const std::string& name, const std::uint8_t* data, std::size_t size) {
  static const std::string dir = [] {
    const std::filesystem::path base = std::filesystem::is_directory("/dev/shm")
                                           ? "/dev/shm"
                                           : std::filesystem::temp_directory_path();
    const std::filesystem::path d = base / ("tessera-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all("/dev/shm/tessera-fuzz-" + std::to_string(getpid()), ec);
      std::filesystem::remove_all(
          std::filesystem::temp_directory_path() / ("tessera-fuzz-" + std::to_string(getpid())),
          ec);
    });
    return d.string();
  }();
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace tessera::fuzz
