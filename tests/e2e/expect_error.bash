# tests/e2e/expect_error.bash — sourced by the e2e tests of the tools' command lines (the e2e glob
# takes *.sh only). Needs $mpiexec.
#
# expect_error N MESSAGE COMMAND...: COMMAND at N ranks exits 2 with exactly one line of output,
# "error: MESSAGE"; else prints what it got and exits 1.
expect_error() {
  local n=$1 message=$2 out code
  shift 2
  set +e
  out=$(timeout 60 "$mpiexec" -n "$n" "$@" 2>&1)
  code=$?
  set -e
  if [[ $code -ne 2 || "$out" != "error: $message" ]]; then
    echo "FAIL at $n ranks: $*" >&2
    echo "  want (exit 2): error: $message" >&2
    echo "  got (exit $code):" >&2
    sed 's/^/    /' <<<"$out" >&2
    exit 1
  fi
}
