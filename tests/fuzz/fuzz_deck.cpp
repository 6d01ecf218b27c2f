// The deck parser with command-line overrides. The input is a deck's text, optionally followed by
// a line "%%" and one override (key=value) per line. Beyond "no crash, only tessera::Error": a deck
// that parses must print (deck::to_toml) as a deck that parses to the same text again.
#include "fuzz.hpp"
#include "tessera/deck/deck.hpp"

#include <Kokkos_Core.hpp>

#include <sstream>
#include <vector>

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  Kokkos::initialize();  // the parser builds the model's shapes (ShapeOnly: nothing allocated)
  std::atexit(Kokkos::finalize);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::size_t split = input.find("\n%%\n");
  const std::string text = input.substr(0, split);
  std::vector<std::string> overrides;
  if (split != std::string::npos) {
    std::istringstream lines(input.substr(split + 4));
    for (std::string line; std::getline(lines, line);) {
      overrides.push_back(line);
    }
  }
  tessera::fuzz::expect_only_errors("deck::parse", [&] {
    const tessera::deck::Deck deck = tessera::deck::parse(text, "fuzz.toml", overrides);
    const std::string printed = tessera::deck::to_toml(deck);
    tessera::deck::Deck again;
    try {
      again = tessera::deck::parse(printed, "fuzz.toml", {});
    } catch (const tessera::Error& e) {
      std::fprintf(stderr, "fuzz: the printed deck does not parse: %s\n%s\n", e.what(),
                   printed.c_str());
      std::abort();
    }
    if (tessera::deck::to_toml(again) != printed) {
      std::fprintf(stderr, "fuzz: the printed deck prints differently once parsed:\n%s\n---\n%s\n",
                   printed.c_str(), tessera::deck::to_toml(again).c_str());
      std::abort();
    }
  });
  return 0;
}
