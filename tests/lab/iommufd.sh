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
. "$HERE/lab-common.sh"
VMM=${1:?usage: iommufd.sh VMM}
W=${LAB_WORK:-${TMPDIR:-/tmp}/cpr-lab}

lab_need qemu-system-x86_64 cpio gzip timeout
lab_need_static "$VMM"
GUEST=$ROOT/fixtures/guests/vfio
lab_need_file "$GUEST" "make -C fixtures/guests"
mkdir -p "$W"

# Exit 2 from build-kernel.sh (something missing) stays 2.
set +e
KERNEL=$("$HERE/build-kernel.sh" "$W/kernel" | tail -n 1)
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "iommufd.sh: build-kernel.sh failed ($rc)" >&2; exit "$rc"; }

R1=$W/rootfs-iommufd
lab_rootfs "$R1"
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
mkcpio "$R1" "$W/initrd-iommufd.gz"

echo "iommufd.sh: booting the lab ($(basename "$KERNEL")) with edu and e1000e behind an emulated IOMMU"
lab_boot "${LAB_TIMEOUT:-300}" "$KERNEL" "$W/initrd-iommufd.gz" "$LAB_APPEND intel_iommu=on" \
    "$W/iommufd-last.log" "${LAB_VFIO_DEVICES[@]}"
lab_passed "$W/iommufd-last.log"
