#!/bin/bash
# Lab benchmark: boots the lab host once (Debian's cloud kernel under QEMU TCG with nested
# SVM, as tests/lab/linux-boot.sh and vfio.sh do) and runs bench/lab/l1-init in it, which
# runs the static lab-driver for each scenario in LAB_SCENARIOS. The driver's
# `lab-bench-run` lines come out on this script's stdout (the lab's console).
# Normally run by `cargo run --release -p vmm-bench --bin lab-bench`, which builds the two
# static binaries and turns the lines into rows.
#
# Usage: bench/lab/boot.sh VMM DRIVER [FLOOR]     (all statically linked)
#   FLOOR: cpr-floor, run after each scenario at its RAM size (the lab's floor)
# Env: LAB_SCENARIOS  any of linux, vfio, counter, space-separated (one boot for all;
#                     default "linux")
#      LAB_RUNS       live updates per scenario (10)
#      LAB_ROUNDS     rounds the scenarios take turns in (1): each scenario's LAB_RUNS are
#                     split across them, a fresh vmm and guest per round
#      LAB_WORK       work and kernel cache dir (default ${TMPDIR:-/tmp}/cpr-lab)
#      LAB_TIMEOUT    seconds for the whole lab run (900)
#      LAB_VFIO_TRACE 1: the vmm prints its VFIO live-update steps (lab-bench-trace lines)
# Exit status: 0 iff the lab printed "RESULT: PASS"; 1 on failure; 2 if something is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$ROOT/tests/lab/lab-common.sh"
VMM=${1:?usage: boot.sh VMM DRIVER}
DRIVER=${2:?usage: boot.sh VMM DRIVER [FLOOR]}
FLOOR=${3:-}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}
SCENARIOS=${LAB_SCENARIOS:-linux}

lab_need qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb timeout
lab_need_static "$VMM" "$DRIVER" $FLOOR
GUEST=$ROOT/fixtures/guests/vfio
lab_need_file "$GUEST" "make -C fixtures/guests"

# The kernel, cached in $W (as linux-boot.sh does).
lab_debian_kernel

# The Linux guest's initramfs: busybox and the lab's l2-init (a shell on ttyS0).
lab_l2_initrd "$W/rootfs-bench-l2" "$W/initrd-bench-l2.gz"

R1=$W/rootfs-bench
lab_rootfs "$R1" lib/modules l2
lab_modules "$R1/lib/modules" vfio
cp "$VMM" "$R1/vmm"
cp "$DRIVER" "$R1/lab-driver"
cp "$K/boot/vmlinuz-$KV" "$R1/l2/vmlinuz"
cp "$W/initrd-bench-l2.gz" "$R1/l2/initrd.gz"
cp "$GUEST" "$R1/vfio-guest"
cp "$ROOT/fixtures/guests/counter" "$R1/counter-guest"
[ -z "$FLOOR" ] || cp "$FLOOR" "$R1/cpr-floor"
cp "$HERE/l1-init" "$R1/init"
{
    printf 'LAB_SCENARIOS=%q\n' "$SCENARIOS"
    printf 'LAB_RUNS=%q\n' "${LAB_RUNS:-10}"
    printf 'LAB_ROUNDS=%q\n' "${LAB_ROUNDS:-1}"
    printf 'LAB_VFIO_TRACE=%q\n' "${LAB_VFIO_TRACE:-0}"
    printf 'L2_APPEND=%q\n' "console=ttyS0 panic=-1 quiet"
} > "$R1/lab.env"
mkcpio "$R1" "$W/initrd-bench.gz"

# Devices only when a scenario assigns them.
DEV=() APPEND=$LAB_APPEND
case " $SCENARIOS " in
*" vfio "*)
    DEV=("${LAB_VFIO_DEVICES[@]}")
    APPEND="$APPEND intel_iommu=on" ;;
esac
echo "boot.sh: booting the lab ($KV) for: $SCENARIOS; host load average: $(lab_loadavg)"
echo "lab-bench-qemu $(qemu-system-x86_64 --version | head -n 1)"
echo "lab-bench-l1 $KV"
lab_boot "${LAB_TIMEOUT:-900}" "$K/boot/vmlinuz-$KV" "$W/initrd-bench.gz" "$APPEND" "$W/bench-last.log" "${DEV[@]}"
echo "boot.sh: host load average after: $(lab_loadavg)"
lab_passed "$W/bench-last.log"
