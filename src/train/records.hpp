#pragma once
// What the trainer and the population write into a run folder (metrics.jsonl, population.jsonl,
// deck.toml): one place for the JSON quoting and for the write that reports a failure. Private to
// src/train.
#include <ios>
#include <optional>
#include <string>

namespace tessera::train {

/// JSON has no NaN or infinity: a diverged loss is written as null, so every line stays JSON.
std::string json_number(double x);

/// `s` as a JSON string (quotes and backslashes escaped).
std::string json_string(const std::string& s);

/// Writes `text` to `path` (truncating or appending) and reports a failure — a full disk, a folder
/// it may not write — as a write_error naming the file and the system's reason.
void write_text(const std::string& path, const std::string& text, std::ios::openmode mode);

/// Whether a line read back from a .jsonl file is a whole record — one JSON object, "{...}" — and
/// not a line a kill cut short in mid-write, or damage.
bool whole_record(const std::string& line);

/// The number written after `"key": ` in a record line; nullopt when the key is absent or what
/// follows is not a number (null, damage).
std::optional<double> record_number(const std::string& line, const std::string& key);

}  // namespace tessera::train
