// tessera-data — make and inspect Tessera datasets (docs/dataset-format.md).
//
//   tessera-data import fashion-mnist [--source DIR] [--output FILE]
//   tessera-data import text FILE... --output FILE [--validation FRACTION]
//   tessera-data import kjv [--output FILE] [--validation FRACTION]
//   mpiexec -n 4 tessera-data gen --output FILE --samples N --size S --dims 2|3 [--steps T]
//                                 [--seed K] [--dtype float32|float16] [--split NAME]
//   tessera-data ls FILE [--no-stats]
//   tessera-data checksum FILE
//
// Exit codes: 0 done; 2 bad input (a file, an option); 75 stopped by SIGINT, SIGTERM or SIGUSR1
// (the partial output removed); 1 anything else.
#include "app_main.hpp"
#include "commands.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/error.hpp"

#include <mpi.h>
#include <CLI/CLI.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  return tessera::apps::run_tool_main(argc, argv, [](int ac, char** av) {
    CLI::App app{"tessera-data: import, generate and list Tessera datasets (HDF5)"};
    app.require_subcommand(1);

    auto* import = app.add_subcommand("import", "import a dataset into HDF5");
    import->require_subcommand(1);
    auto* fashion = import->add_subcommand(
        "fashion-mnist", "Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist");
    tessera::data::ImportOptions io;
    fashion->add_option("--source", io.source, "folder holding the IDX files")
        ->capture_default_str();
    fashion->add_option("--output,-o", io.output, "HDF5 file to write")->capture_default_str();
    fashion
        ->add_option("--validation", io.validation,
                     "hold out the last N training images as /validation (a population's "
                     "scoring split)")
        ->capture_default_str();
    auto* text = import->add_subcommand(
        "text", "text files as one byte-level token stream, split into train and validation");
    tessera::data::TextImportOptions to;
    text->add_option("files", to.files, "text files, concatenated in this order")->required();
    text->add_option("--output,-o", to.output, "HDF5 file to write")->required();
    text->add_option("--validation", to.validation,
                     "fraction of the 64 KiB blocks held out for validation, in [0, 0.5]")
        ->capture_default_str();
    auto* kjv = import->add_subcommand(
        "kjv", "the King James Bible (Debian's bible-kjv: `bible Gen1:1-Rev22:21`) as text");
    tessera::data::KjvImportOptions ko;
    kjv->add_option("--output,-o", ko.output, "HDF5 file to write")->capture_default_str();
    kjv->add_option("--validation", ko.validation,
                    "fraction of the 64 KiB blocks held out for validation, in [0, 0.5]")
        ->capture_default_str();

    auto* gen = app.add_subcommand("gen", "simulate a Gray-Scott dataset in parallel (mpiexec)");
    tessera::data::GenOptions go;
    gen->add_option("--output,-o", go.output, "HDF5 file to write")->capture_default_str();
    gen->add_option(
           "--split", go.split,
           "group to write the samples into (the file -o is written anew: one split per file)")
        ->capture_default_str();
    gen->add_option("--samples,-n", go.samples, "number of samples")->capture_default_str();
    gen->add_option("--size,-s", go.size, "grid points per dimension")->capture_default_str();
    gen->add_option("--dims,-d", go.dims, "2 or 3 spatial dimensions")->capture_default_str();
    gen->add_option("--steps", go.steps, "time steps per sample")->capture_default_str();
    gen->add_option("--seed", go.seed, "random seed")
        ->check(tessera::apps::uint64_value())
        ->capture_default_str();
    gen->add_option("--dtype", go.dtype, "float32 or float16")->capture_default_str();
    gen->add_flag("--unit-targets", go.unit_targets,
                  "targets F and k mapped onto [0, 1] over their ranges (for training)");
    gen->add_flag("--quiet,-q", go.quiet, "no progress lines");

    auto* ls = app.add_subcommand("ls", "list groups, datasets, attributes and statistics");
    std::string file;
    bool no_stats = false;
    ls->add_option("file", file, "HDF5 file")->required();
    ls->add_flag("--no-stats", no_stats, "skip the per-split statistics");

    auto* checksum = app.add_subcommand(
        "checksum", "add checksums to a dataset written before tessera-data wrote them");
    std::string checksum_file;
    checksum->add_option("file", checksum_file, "HDF5 dataset file")->required();

    const int rank = tessera::comm::rank_of(MPI_COMM_WORLD);
    if (const auto code = tessera::apps::parse_command_line(app, ac, av)) {
      return *code;
    }
    if (*fashion) {
      tessera::data::import_fashion_mnist(io);
    } else if (*text) {
      tessera::data::import_text(to);
    } else if (*kjv) {
      tessera::data::import_kjv(ko);
    } else if (*gen) {
      const double write_s = tessera::data::generate_gray_scott(go);
      if (rank == 0 && !go.quiet) {
        std::printf("tessera-data gen: %.2f s writing\n", write_s);
      }
    } else if (*ls) {
      tessera::data::list_file(file, !no_stats);
    } else if (*checksum) {
      tessera::data::add_checksums(checksum_file);
    }
    return 0;
  });
}
