// tessera-ckpt — list, verify, compare, export and average Tessera checkpoints
// (docs/checkpoint-format.md, "tessera-ckpt"). It reads the files alone and never builds a model.
//
//   tessera-ckpt ls PATH                     a checkpoint's metadata and tensors, or a folder's
//   tessera-ckpt verify FILE...              recompute every checksum, check completeness
//   tessera-ckpt diff A B [--tolerance REL] [--atol ABS]  compare tensor by tensor
//   tessera-ckpt export FILE -o OUT.h5|.npz  the model's weights alone
//   tessera-ckpt average A B ... -o OUT.h5   element-wise mean of the model tensors
//   tessera-ckpt deck FILE                   the embedded deck, to re-run it
//   mpiexec -n N tessera-ckpt verify|diff|average ...   the elements spread over N ranks
//
// Exit codes: 0 OK / equal; 1 verification failed / files differ; 2 bad input (a file missing,
// not HDF5, truncated, not a checkpoint; a bad command line); 75 stopped by SIGINT, SIGTERM or
// SIGUSR1 (the partial output removed).
#include "app_main.hpp"
#include "ckpt_commands.hpp"

#include <mpi.h>
#include <CLI/CLI.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  return tessera::apps::run_tool_main(argc, argv, [](int ac, char** av) {
    namespace ckpt = tessera::ckpt;
    CLI::App app{"tessera-ckpt: list, verify, compare, export and average Tessera checkpoints"};
    app.footer(
        "Exit codes: 0 OK (verified, or equal within tolerance); 1 verification failed or the "
        "files differ; 2 bad input (missing, not HDF5, truncated, not a checkpoint, bad command "
        "line); 75 stopped by a signal, nothing written.\nverify, diff and average spread the "
        "tensors' elements over the ranks of "
        "mpiexec -n N.");
    app.require_subcommand(1);

    std::string path;
    auto* ls = app.add_subcommand("ls",
                                  "list a checkpoint's metadata and tensors, or a folder's "
                                  "checkpoints");
    ls->add_option("path", path, "checkpoint file or checkpoint folder")->required();

    std::vector<std::string> files;
    auto* verify = app.add_subcommand(
        "verify", "recompute every tensor's checksum and check that the checkpoint is complete");
    verify->add_option("files", files, "checkpoint files")->required();

    std::string a;
    std::string b;
    double tolerance = 0.0;
    auto* diff = app.add_subcommand("diff", "compare two checkpoints tensor by tensor");
    diff->add_option("a", a, "first checkpoint (A)")->required();
    diff->add_option("b", b, "second checkpoint (B)")->required();
    diff->add_option("--tolerance", tolerance,
                     "largest max|A-B| / max|B| per tensor that counts as equal (0: bit for bit)")
        ->capture_default_str();  // checked by diff: a finite number >= 0
    double atol = 0.0;
    diff->add_option("--atol", atol,
                     "an absolute allowance added: a tensor is equal when max|A-B| <= atol + "
                     "tolerance * max|B| (for tensors of rounding noise: zero-gradient parameters)")
        ->capture_default_str();

    std::string file;
    std::string out;
    auto* exp = app.add_subcommand("export", "write the model's tensors to .h5 or numpy .npz");
    exp->add_option("file", file, "checkpoint file")->required();
    exp->add_option("--output,-o", out, "output file, ending in .h5 or .npz")->required();

    std::vector<std::string> inputs;
    auto* avg = app.add_subcommand(
        "average", "element-wise mean of the model tensors of checkpoints, as a checkpoint");
    avg->add_option("inputs", inputs, "checkpoint files (two or more)")->required();
    avg->add_option("--output,-o", out, "checkpoint file to write, ending in .h5")->required();

    auto* dk = app.add_subcommand("deck", "print the embedded deck (tessera-ckpt deck F > d.toml)");
    dk->add_option("file", file, "checkpoint file")->required();

    if (const auto code = tessera::apps::parse_command_line(app, ac, av)) {
      return *code;
    }
    ckpt::Outcome o;
    if (*ls) {
      o = ckpt::ls(MPI_COMM_WORLD, path);
    } else if (*verify) {
      o = ckpt::verify(MPI_COMM_WORLD, files);
    } else if (*diff) {
      o = ckpt::diff(MPI_COMM_WORLD, a, b, tolerance, atol);
    } else if (*exp) {
      o = ckpt::export_model(MPI_COMM_WORLD, file, out);
    } else if (*avg) {
      o = ckpt::average(MPI_COMM_WORLD, inputs, out);
    } else if (*dk) {
      o = ckpt::deck(MPI_COMM_WORLD, file);
    }
    std::fputs(o.out.c_str(), stdout);
    std::fflush(stdout);
    std::fputs(o.err.c_str(), stderr);
    return o.exit_code;
  });
}
