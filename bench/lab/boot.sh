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
LAB=$ROOT/tests/lab
VMM=${1:?usage: boot.sh VMM DRIVER}
DRIVER=${2:?usage: boot.sh VMM DRIVER [FLOOR]}
FLOOR=${3:-}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}
SCENARIOS=${LAB_SCENARIOS:-linux}

missing() { echo "boot.sh: $*" >&2; exit 2; }
for tool in qemu-system-x86_64 cpio gzip apt-cache apt-get dpkg-deb timeout; do
    command -v "$tool" >/dev/null || missing "$tool not found: install the packages in $LAB/REQUIREMENTS"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! LC_ALL=C ldd "$BUSYBOX" 2>/dev/null | grep -q '=>' ||
    missing "$BUSYBOX missing or not static: install busybox-static ($LAB/REQUIREMENTS)"
for b in "$VMM" "$DRIVER" $FLOOR; do
    [ -x "$b" ] || missing "$b not found"
    LC_ALL=C ldd "$b" 2>/dev/null | grep -q '=>' && missing "$b is dynamically linked: build it with +crt-static"
done
GUEST=$ROOT/fixtures/guests/vfio
[ -f "$GUEST" ] || missing "$GUEST not found (make -C fixtures/guests)"
mkdir -p "$W/dl"

# The kernel, resolved through the metapackage and cached in $W (as linux-boot.sh does).
PKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$PKG" ] || missing "apt knows no linux-image-cloud-amd64: run 'apt-get update' first"
KV=${PKG#linux-image-}
if [ ! -f "$W/kernel-$KV/boot/vmlinuz-$KV" ]; then
    ls "$W/dl/${PKG}_"*.deb >/dev/null 2>&1 || (cd "$W/dl" && apt-get download "$PKG" >/dev/null) ||
        missing "apt-get download $PKG failed"
    rm -rf "$W/kernel-$KV.tmp"
    dpkg-deb -x "$W/dl/${PKG}_"*.deb "$W/kernel-$KV.tmp"
    mv "$W/kernel-$KV.tmp" "$W/kernel-$KV"
fi
K=$W/kernel-$KV
MODS=$K/lib/modules/$KV/kernel
mkcpio() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"; }

# The Linux guest's initramfs: busybox and the lab's l2-init (a shell on ttyS0).
R2=$W/rootfs-bench-l2
rm -rf "$R2" && mkdir -p "$R2"/{bin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$R2/bin/busybox"
ln -s busybox "$R2/bin/sh"
cp "$LAB/l2-init" "$R2/init"
mkcpio "$R2" "$W/initrd-bench-l2.gz"

R1=$W/rootfs-bench
rm -rf "$R1" && mkdir -p "$R1"/{bin,proc,sys,dev,tmp,lib/modules,l2}
cp "$BUSYBOX" "$R1/bin/busybox"
cp "$MODS"/virt/lib/irqbypass.ko "$MODS"/arch/x86/kvm/kvm.ko "$MODS"/arch/x86/kvm/kvm-amd.ko \
   "$MODS"/drivers/vfio/vfio.ko "$MODS"/drivers/vfio/vfio_iommu_type1.ko "$MODS"/drivers/vfio/vfio_virqfd.ko \
   "$MODS"/drivers/vfio/pci/vfio-pci-core.ko "$MODS"/drivers/vfio/pci/vfio-pci.ko "$R1/lib/modules/"
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

# Devices only when a scenario assigns them; intel-iommu under TCG turns on interrupt
# remapping (VFIO_SET_IOMMU needs it).
DEV=() APPEND="console=ttyS0 panic=-1 quiet loglevel=3"
case " $SCENARIOS " in
*" vfio "*)
    DEV=(-device intel-iommu,intremap=on -device edu -device e1000e,romfile=)
    APPEND="$APPEND intel_iommu=on" ;;
esac
echo "boot.sh: booting the lab ($KV) for: $SCENARIOS; host load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "lab-bench-qemu $(qemu-system-x86_64 --version | head -n 1)"
echo "lab-bench-l1 $KV"
set +e
timeout --foreground -k 5 "${LAB_TIMEOUT:-900}" qemu-system-x86_64 \
    -M q35 -accel tcg -cpu max -smp 1 -m 1024 \
    -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
    "${DEV[@]}" \
    -kernel "$K/boot/vmlinuz-$KV" -initrd "$W/initrd-bench.gz" \
    -append "$APPEND" </dev/null | tee "$W/bench-last.log"
set -e
echo "boot.sh: host load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -q '^RESULT: PASS' "$W/bench-last.log"
