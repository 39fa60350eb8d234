# Shared by the lab boot scripts (tests/lab/linux-boot.sh, vfio.sh, iommufd.sh and
# bench/lab/boot.sh); sourced, not run. Each script sets W (its LAB_WORK) before calling the
# functions that use it. "missing" failures exit 2, the scripts' "something is missing" status.
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_SCRIPT=$(basename "$0")
BUSYBOX=/bin/busybox
# The lab host's own kernel command line; the VFIO labs add intel_iommu=on.
LAB_APPEND="console=ttyS0 panic=-1 quiet loglevel=3"
# The VFIO labs' devices: intel-iommu under TCG turns on interrupt remapping
# (VFIO_SET_IOMMU needs it).
LAB_VFIO_DEVICES=(-device intel-iommu,intremap=on -device edu -device e1000e,romfile=)

missing() { echo "$LAB_SCRIPT: $*" >&2; exit 2; }

# lab_need TOOL...: the host tools, and a static busybox (a dynamically linked one would not
# run in the initramfs: no libc there).
lab_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || missing "$tool not found: install the packages in $LAB/REQUIREMENTS"
    done
    [ -x "$BUSYBOX" ] && ! LC_ALL=C ldd "$BUSYBOX" 2>/dev/null | grep -q '=>' ||
        missing "$BUSYBOX missing or not static: install busybox-static ($LAB/REQUIREMENTS)"
}

# lab_need_static BINARY...: each exists and is statically linked (the lab has no libc).
lab_need_static() {
    local b
    for b in "$@"; do
        [ -x "$b" ] || missing "$b not found"
        ! LC_ALL=C ldd "$b" 2>/dev/null | grep -q '=>' || missing "$b is dynamically linked: build it with +crt-static"
    done
}

# lab_need_file FILE HINT
lab_need_file() { [ -f "$1" ] || missing "$1 not found ($2)"; }

# lab_debian_kernel: Debian's cloud kernel, unpacked into $W once and reused. Debian renames
# its package on every ABI bump, so it is resolved through the metapackage. Sets KV (version),
# K (the unpacked package) and MODS (its kernel modules directory).
lab_debian_kernel() {
    local pkg
    mkdir -p "$W/dl"
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || missing "apt knows no linux-image-cloud-amd64: run 'apt-get update' first"
    KV=${pkg#linux-image-}
    if [ ! -f "$W/kernel-$KV/boot/vmlinuz-$KV" ]; then
        ls "$W/dl/${pkg}_"*.deb >/dev/null 2>&1 || (cd "$W/dl" && apt-get download "$pkg" >/dev/null) ||
            missing "apt-get download $pkg failed"
        rm -rf "$W/kernel-$KV.tmp"
        dpkg-deb -x "$W/dl/${pkg}_"*.deb "$W/kernel-$KV.tmp"
        mv "$W/kernel-$KV.tmp" "$W/kernel-$KV"
    fi
    K=$W/kernel-$KV
    MODS=$K/lib/modules/$KV/kernel
}

# mkcpio DIR OUT: newc archive of DIR, gzipped, into OUT
mkcpio() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"; }

# lab_rootfs DIR [SUBDIR...]: a fresh initramfs tree with busybox in it.
lab_rootfs() {
    local dir=$1 d
    shift
    rm -rf "$dir" && mkdir -p "$dir"/{bin,proc,sys,dev,tmp}
    for d in "$@"; do mkdir -p "$dir/$d"; done
    cp "$BUSYBOX" "$dir/bin/busybox"
}

# lab_l2_initrd DIR OUT: the Linux L2 guest's initramfs (busybox and l2-init, a shell on
# ttyS0), built in DIR, into OUT.
lab_l2_initrd() {
    lab_rootfs "$1"
    ln -s busybox "$1/bin/sh"  # lets rdinit=/bin/sh give a bare shell when debugging
    cp "$LAB/l2-init" "$1/init"
    mkcpio "$1" "$2"
}

# lab_modules DEST kvm|vfio: copies Debian's KVM modules, and with vfio VFIO's, into DEST
# (needs lab_debian_kernel).
lab_modules() {
    local m=("$MODS/virt/lib/irqbypass.ko" "$MODS/arch/x86/kvm/kvm.ko" "$MODS/arch/x86/kvm/kvm-amd.ko")
    if [ "$2" = vfio ]; then
        m+=("$MODS/drivers/vfio/vfio.ko" "$MODS/drivers/vfio/vfio_iommu_type1.ko"
            "$MODS/drivers/vfio/vfio_virqfd.ko" "$MODS/drivers/vfio/pci/vfio-pci-core.ko"
            "$MODS/drivers/vfio/pci/vfio-pci.ko")
    fi
    cp "${m[@]}" "$1/"
}

lab_loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# lab_boot TIMEOUT KERNEL INITRD APPEND LOG [QEMU ARG...]: boots the lab host (QEMU TCG;
# -cpu max gives SVM with nested paging), its console on stdout and in LOG. Its status is
# not what counts: lab_passed LOG is.
lab_boot() {
    local timeout=$1 kernel=$2 initrd=$3 append=$4 log=$5
    shift 5
    set +e
    timeout --foreground -k 5 "$timeout" qemu-system-x86_64 \
        -M q35 -accel tcg -cpu max -smp 1 -m 1024 \
        -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
        "$@" \
        -kernel "$kernel" -initrd "$initrd" -append "$append" </dev/null | tee "$log"
    set -e
}

# lab_passed LOG: the lab's verdict, the scripts' exit status.
lab_passed() { grep -q '^RESULT: PASS' "$1"; }
