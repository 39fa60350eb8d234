#!/bin/bash
# Lab test: VFIO through iommufd. Boots the lab host (QEMU TCG, nested SVM, emulated Intel
# IOMMU, edu and e1000e) on our own kernel with iommufd (build-kernel.sh: Debian's kernels
# have none), then iommufd-l1-init: binds both devices to vfio-pci, runs the iommufd probe
# (IOMMU_IOAS_MAP_FILE, IOMMU_IOAS_CHANGE_PROCESS across an exec), then our vmm with both
# devices assigned through iommufd to fixtures/guests/vfio, and LAB_UPDATE live updates
# (cpr-save, cpr-exec, cpr-load in restart mode) in the middle of its DMA loop.
#
# Usage: tests/lab/iommufd.sh VMM
#   VMM: a statically linked vmm (see vfio.sh). The probe: IOMMUFD_PROBE=path to a static
#        build of `cargo build --example iommufd_probe` (skipped when unset; the lab test
#        sets it).
# Env: LAB_WORK (default ${TMPDIR:-/tmp}/cpr-lab; the kernel is built and cached in
#      LAB_WORK/kernel), LAB_TIMEOUT (300 s), VFIO_ITERS (40), LAB_UPDATE (1),
#      LAB_EXEC_FAIL (0/1, as in vfio.sh), LAB_BACKEND (iommufd; type1: the same run through
#      the type1 container on this kernel, locked memory checked instead of pinned),
#      LAB_TRANSFER (cpr-transfers to successor processes, 0), LAB_TRANSFER_KILL (steps at
#      which a successor stops and is killed before the transfers, e.g. "hello ready")
# Exit status: 0 iff the lab printed "RESULT: PASS"; 1 on failure; 2 if something is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VMM=${1:?usage: iommufd.sh VMM}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}

missing() { echo "iommufd.sh: $*" >&2; exit 2; }
for tool in qemu-system-x86_64 cpio gzip timeout; do
    command -v "$tool" >/dev/null || missing "$tool not found: install the packages in $HERE/REQUIREMENTS"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && ! LC_ALL=C ldd "$BUSYBOX" 2>/dev/null | grep -q '=>' ||
    missing "$BUSYBOX missing or not static: install busybox-static ($HERE/REQUIREMENTS)"
[ -x "$VMM" ] || missing "vmm binary $VMM not found"
LC_ALL=C ldd "$VMM" 2>/dev/null | grep -q '=>' && missing "$VMM is dynamically linked: build it with +crt-static"
GUEST=$ROOT/fixtures/guests/vfio
[ -f "$GUEST" ] || missing "$GUEST not found (make -C fixtures/guests)"
mkdir -p "$W"

# Exit 2 from build-kernel.sh (something missing) stays 2.
set +e
KERNEL=$("$HERE/build-kernel.sh" "$W/kernel" | tail -n 1)
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "iommufd.sh: build-kernel.sh failed ($rc)" >&2; exit "$rc"; }

R1=$W/rootfs-iommufd
rm -rf "$R1" && mkdir -p "$R1"/{bin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$R1/bin/busybox"
cp "$VMM" "$R1/vmm"
cp "$GUEST" "$R1/vfio-guest"
if [ -n "${IOMMUFD_PROBE:-}" ]; then
    [ -x "$IOMMUFD_PROBE" ] || missing "IOMMUFD_PROBE=$IOMMUFD_PROBE is not an executable"
    cp "$IOMMUFD_PROBE" "$R1/iommufd-probe"
fi
cp "$HERE/iommufd-l1-init" "$R1/init"
{
    printf 'VFIO_ITERS=%q\n' "${VFIO_ITERS:-40}"
    printf 'LAB_UPDATE=%q\n' "${LAB_UPDATE:-1}"
    printf 'LAB_EXEC_FAIL=%q\n' "${LAB_EXEC_FAIL:-0}"
    printf 'LAB_BACKEND=%q\n' "${LAB_BACKEND:-iommufd}"
    printf 'LAB_TRANSFER=%q\n' "${LAB_TRANSFER:-0}"
    printf 'LAB_TRANSFER_KILL=%q\n' "${LAB_TRANSFER_KILL:-}"
} > "$R1/lab.env"
(cd "$R1" && find . | cpio -o -H newc --quiet | gzip -1) > "$W/initrd-iommufd.gz"

echo "iommufd.sh: booting the lab ($(basename "$KERNEL")) with edu and e1000e behind an emulated IOMMU"
set +e
timeout --foreground -k 5 "${LAB_TIMEOUT:-300}" qemu-system-x86_64 \
    -M q35 -accel tcg -cpu max -smp 1 -m 1024 \
    -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
    -device intel-iommu,intremap=on -device edu -device e1000e,romfile= \
    -kernel "$KERNEL" -initrd "$W/initrd-iommufd.gz" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=3" </dev/null | tee "$W/iommufd-last.log"
set -e
grep -q '^RESULT: PASS' "$W/iommufd-last.log"
