#!/bin/bash
# usage: ab.sh OUT ROUNDS "SMPS" UPDATES name=vmmpath ...
# env: CPR_PAUSE (the cpr-pause binary), MEM (MiB, 1024), EXTRA (more cpr-pause flags,
# e.g. --one-command). Interleaves the builds round by round; summ.py OUT prints medians.
out=$1; rounds=$2; smps=$3; upd=$4; shift 4
pause=${CPR_PAUSE:-target/release/cpr-pause}
: > $out
for r in $(seq $rounds); do
  for v in "$@"; do
    name=${v%%=*}; path=${v#*=}
    for smp in $smps; do
      echo "load $(cut -d' ' -f1 /proc/loadavg)" >> $out
      $pause --mem-mib ${MEM:-1024} --smp $smp --updates $upd --no-floor --samples $EXTRA --vmm $path 2>/dev/null | grep '^sample' | sed "s/^sample/sample v=$name/" >> $out
    done
  done
done
