#!/bin/bash
# usage: tab.sh OUT ROUNDS SIZE RUNS name=vmmpath ...
out=$1; rounds=$2; size=$3; runs=$4; shift 4
: > $out
for r in $(seq $rounds); do
  for v in "$@"; do
    name=${v%%=*}; path=${v#*=}
    echo "load $(cut -d' ' -f1 /proc/loadavg)" >> $out
    /work/wt-pause/target/release/cpr-transfer-bench --sizes $size --runs $runs --samples --vmm $path 2>&1 | grep -E '^sample|cpr-transfer-bench:' | sed "s/^sample/sample v=$name/" >> $out
  done
done
