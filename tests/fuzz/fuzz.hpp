#pragma once
// Fuzz targets (issue 18): each fuzz_*.cpp defines LLVMFuzzerTestOneInput (and
// LLVMFuzzerInitialize). Built with TESSERA_FUZZ=ON (clang) they link libFuzzer: tools/fuzz.sh runs
// them for as long as asked. Otherwise they link replay_main.cpp, which runs the committed corpus
// (tests/fuzz/corpus/<target>/) and deterministic mutations of it: the short run CI makes. The
// corpus keeps every input a fuzzer found a problem with as finding-<what> (make_corpus.sh keeps
// them), so each stays a regression test.
//
// What a target may do with any input: return, or throw tessera::Error (bad input, refused with a
// message). Anything else — another exception, a crash, a sanitizer report, a hang, a huge
// allocation — is a finding.
#include "tessera/core/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace tessera::fuzz {

/// Runs `body`; a tessera::Error is the expected answer to bad input, any other exception a finding
/// (printed, then abort() so that the fuzzer records the input).
template <typename F>
void expect_only_errors(const char* what, F&& body) {
  try {
    body();
  } catch (const Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: %s threw %s instead of tessera::Error\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "fuzz: %s threw a non-standard exception\n", what);
    std::abort();
  }
}

/// A scratch file of this process (in /dev/shm where it exists): `bytes` written to it.
std::string write_scratch(const std::string& name, const std::uint8_t* data, std::size_t size);

}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
