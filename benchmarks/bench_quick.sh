#!/usr/bin/env bash
# `make bench-quick`: the regression guard, a ~2-minute side-by-side with etcd 3.4.
#
# One rep of ../shared/bench-vs-etcd/run.sh at 1 and 64 puts in flight, gets at 64
# and one failover, for kvraft (this working tree, default settings, peer secret)
# and etcd through its native gRPC API, interleaved on this machine. Prints the
# ratio table and keeps it, with the command, the commit and the load average, in
# benchmarks/results/bench-quick.md. Ratios, not absolute figures: on a shared VM
# only figures measured together compare. Where the side-by-side kit is absent it
# says so and exits 0 (BENCH_VS_ETCD=path points elsewhere). The full run
# (REPS=2, 8 s, 1/8/64/256 in flight, ~12 minutes) is `../shared/bench-vs-etcd/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${BENCH_VS_ETCD:-../shared/bench-vs-etcd}
if [ ! -x "$KIT/run.sh" ]; then
  echo "bench-quick: skipped: no side-by-side kit at $KIT/run.sh (set BENCH_VS_ETCD=DIR)"
  exit 0
fi
export REPS=${REPS:-1} DURATION=${DURATION:-4} CONCS=${CONCS:-"1 64"} FAILOVER=${FAILOVER:-1}
export OUT_BASE=${OUT_BASE:-/tmp/bench-vs-etcd} RUN_ID=${RUN_ID:-quick-$(date +%Y%m%d-%H%M%S)}
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | head -1)
"$KIT/run.sh"
RATIO=$OUT_BASE/$RUN_ID/ratio.md
[ -s "$RATIO" ] || { echo "bench-quick: no ratio table in $RATIO (see $OUT_BASE/$RUN_ID/run.log)" >&2; exit 1; }
OUT=benchmarks/results/bench-quick.md
{
  echo "# kvraft against etcd 3.4: the quick side-by-side (make bench-quick)"
  echo
  echo "\`REPS=$REPS DURATION=$DURATION CONCS=\"$CONCS\" FAILOVER=$FAILOVER $KIT/run.sh\`  "
  echo "$(date -Is), commit $COMMIT${DIRTY:+ (with uncommitted changes)}, $(nproc) CPUs," \
    "load average before the run $LOAD. Raw results: $OUT_BASE/$RUN_ID."
  echo
  cat "$RATIO"
} > "$OUT"
echo "bench-quick: the table is in $OUT"
