#!/usr/bin/env bash
# Instructions per mini-redis command that each subscriber adds, counted
# by callgrind (deterministic, unlike times on a shared 2-core machine).
#
#   benches/callgrind/per_command.sh BIN "aw-record console floor" OUT
#
# BIN is the `mini_redis` bench binary (`cargo bench -p awaitscope-benches
# --bench mini_redis --no-run` prints its path). Each mode runs twice, for
# 1 s and for 4 s, with its server child under `valgrind --tool=callgrind`
# (every run also measures `none`); the difference of the two runs over
# the commands answered between them removes start-up and shutdown, and
# the same difference of `none` is subtracted. Needs valgrind.
#
# Under valgrind every poll runs tens of times longer than natively, past
# the 100 µs from which a poll sends its await tree whole (with the spans
# that closed during it) and now and then past the stall threshold
# (10 ms). AWAITSCOPE_WHOLE_TREE=1s and AWAITSCOPE_LONG_POLL=10s keep the
# counts to what a native run does (mini-redis's polls take
# microseconds); set them in the environment to count otherwise.
set -euo pipefail
export AWAITSCOPE_WHOLE_TREE=${AWAITSCOPE_WHOLE_TREE:-1s}
export AWAITSCOPE_LONG_POLL=${AWAITSCOPE_LONG_POLL:-10s}
BIN=$1; MODES=$2; OUT=${3:-target/callgrind}
mkdir -p "$OUT"
for m in $MODES; do for s in 1 4; do
  rm -f "$OUT"/cg-"$m"-"$s".*
  AWAITSCOPE_BENCH_ROUNDS=1 AWAITSCOPE_BENCH_SECS=$s AWAITSCOPE_BENCH_MODES=$m \
  AWAITSCOPE_BENCH_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$OUT/cg-$m-$s.%p.out" \
    "$BIN" --bench > "$OUT/log-$m-$s.txt" 2>&1
done; done
python3 "$(dirname "$0")/per_command.py" "$OUT" $MODES
