#!/usr/bin/env bash
# The README's two commands as a new user runs them: a clean clone of this checkout's HEAD in a new
# virtual environment, with no ../shared beside it; times `./run demo`, then runs `./run test`, and
# writes a result file whose header names the command, machine, commit, date and load.
#   benchmarks/demo_fresh.sh [OUT]   (default OUT: benchmarks/results/demo_fresh_<date>.txt)
# Run it on an otherwise idle machine: the time is the point. It takes about 10-20 minutes.
set -u
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
out=${1:-$repo/benchmarks/results/demo_fresh_$(date -u +%Y%m%d_%H%M).txt}
work=$(mktemp -d /tmp/demo_fresh.XXXXXX)  # /tmp/<dir>/repo: no ../shared next to the clone
git clone -q "$repo" "$work/repo" || { echo "demo_fresh: git clone of $repo failed" >&2; exit 1; }
cd "$work/repo" || exit 1
[ -e ../shared ] && { echo "demo_fresh: $work/shared exists; the run must not see datasets" >&2; exit 1; }
python3 -m venv .venv && . .venv/bin/activate || { echo "demo_fresh: python3 -m venv failed" >&2; exit 1; }

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
family=$(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=$(for f in avx512f avx512_bf16 amx_tile avx2; do [[ " $flags " == *" $f "* ]] && printf '%s ' "$f"; done)
isa=${isa% }
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)

t0=$(date +%s); ./run demo > "$work/demo.log" 2>&1; demo_rc=$?; demo_s=$(( $(date +%s) - t0 ))
t0=$(date +%s); ./run test > "$work/test.log" 2>&1; test_rc=$?; test_s=$(( $(date +%s) - t0 ))

{
  echo "# command: benchmarks/demo_fresh.sh (git clone, python3 -m venv .venv, no ../shared; time ./run demo, then ./run test)"
  echo "# machine: $(nproc) cores, $cpu (family $family model $model; ${isa:-none of avx512f/avx512_bf16/amx_tile/avx2}), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); Python $(python -V 2>&1 | cut -d' ' -f2)"
  echo "# commit: $(git rev-parse --short HEAD)"
  echo "# date: $start to $(date -u +%H:%M:%SZ)"
  echo "# load: load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "#"
  echo "# ./run demo: exit $demo_rc in $demo_s s, install included; its own lines:"
  grep -E '\[setup\]|\[demo |done in|fine-tuned|evaluated in|wall time' "$work/demo.log"
  echo "#"
  echo "# ./run test: exit $test_rc in $test_s s, install check included; its last lines:"
  tail -n 3 "$work/test.log"
} > "$out"
cat "$out"
echo "demo_fresh: logs in $work (demo.log, test.log); result in $out"
[ "$demo_rc" -eq 0 ] && [ "$test_rc" -eq 0 ]
