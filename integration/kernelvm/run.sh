#!/usr/bin/env bash
# run.sh runs one command under another Linux kernel: Debian's packaged Linux 6.1 by default,
# booted in qemu with this machine's own / as the guest's root filesystem, so the same
# binaries (go test binaries, nft, ip, conntrack) run inside against the older kernel.
#
#   integration/kernelvm/run.sh [--] COMMAND [ARG...]
#
# COMMAND runs as root in the current directory, with PATH and HOME set and every
# environment variable named in KERNELVM_ENV (space separated) passed through. Its output
# streams to stdout; run.sh exits with its status, or 124 on timeout, or 125 when the VM
# could not be prepared or booted (the guest console is printed then).
#
# How: the kernel of linux-image-6.1.0-N-amd64-unsigned (the generic flavour has the 9p
# modules; -cloud has not) is fetched with apt-get download and unpacked with dpkg -x into
# a cache directory keyed on the package version. A busybox initramfs loads the virtio and
# 9p modules, mounts / of the host over virtio 9p and switch_roots into it; kernel modules
# autoload through /proc/sys/kernel/modprobe = a wrapper that points modprobe at the
# unpacked package. Inside the guest /tmp and /run are fresh tmpfs: the working directory
# and everything COMMAND reads must lie outside /tmp (e.g. under /var/tmp or the repo).
#
# Environment:
#   KERNELVM_KERNEL   package to boot (default: the newest linux-image-6.1.0-*-amd64-unsigned
#                     apt knows)
#   KERNELVM_CACHE    cache directory (default ~/.cache/nftproxy-kernelvm); must not be under /tmp
#   KERNELVM_ACCEL    tcg | kvm | auto (default auto: KVM when /dev/kvm is usable and a probe
#                     boot finishes within 60 s, remembered per host boot; else TCG. Nested
#                     KVM hangs at boot on some cloud machines, hence the probe.)
#   KERNELVM_TIMEOUT  seconds before the VM is killed (default 1800)
#   KERNELVM_MEM      guest memory (default 4G); KERNELVM_CPUS guest CPUs (default: host's)
#   KERNELVM_ENV      names of environment variables to pass into the guest
#   KERNELVM_MODULES  kernel modules to load at boot besides conntrack, veth and bridge
#                     (default: none; nftproxy's kernel probe loads the nf_tables modules,
#                     as on a real node)
#
# Concurrent runs are safe: preparing the cache is serialized with flock, and each run has
# its own job directory under the cache.
set -euo pipefail

die() { echo "kernelvm: $*" >&2; exit 125; }

[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (qemu's 9p passthrough of / and apt)"
case "$PWD/" in /tmp/*) die "working directory $PWD is under /tmp, which the guest does not see";; esac

MODULES=${KERNELVM_MODULES-}
case "$MODULES" in *[!a-z0-9_\ -]*) die "KERNELVM_MODULES=$MODULES: want module names";; esac
CACHE=${KERNELVM_CACHE:-${HOME:-/root}/.cache/nftproxy-kernelvm}
case "$CACHE/" in /tmp/*) die "KERNELVM_CACHE=$CACHE is under /tmp, which the guest does not see";; esac
mkdir -p "$CACHE"

# --- host tools -----------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || need+=(busybox-static)
command -v depmod >/dev/null || [ -x /usr/sbin/depmod ] || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  echo "kernelvm: installing ${need[*]}" >&2
  (
    flock 9
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  ) 9>"$CACHE/apt.lock" || die "could not install ${need[*]}"
fi
if ldd /bin/busybox >/dev/null 2>&1; then
  die "/bin/busybox is dynamically linked; install busybox-static"
fi

# --- the kernel package ---------------------------------------------------------------------
pkg=${KERNELVM_KERNEL:-}
if [ -z "$pkg" ]; then
  latest() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1; }
  pkg=$(latest)
  [ -n "$pkg" ] || { apt-get update -qq; pkg=$(latest); }
  [ -n "$pkg" ] || die "apt knows no linux-image-6.1.0-*-amd64-unsigned package (is this Debian 12 with bookworm sources?)"
fi
ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "apt has no candidate version of $pkg"
KD="$CACHE/${pkg}_${ver}"

prepare() {
  if [ ! -d "$KD/kroot/boot" ]; then
    echo "kernelvm: fetching $pkg $ver" >&2
    rm -rf "$KD" && mkdir -p "$KD/dl"
    # apt warns that _apt cannot write the directory when run as root; that is harmless.
    (cd "$KD/dl" && apt-get download "$pkg=$ver" >apt.log 2>&1) || { cat "$KD/dl/apt.log" >&2; die "apt-get download $pkg=$ver failed"; }
    dpkg -x "$KD"/dl/*.deb "$KD/kroot.new" || die "dpkg -x failed"
    rm -rf "$KD/dl"
    mv "$KD/kroot.new" "$KD/kroot"
  fi
  K=$(ls "$KD/kroot/lib/modules")
  [ -f "$KD/kroot/lib/modules/$K/modules.dep" ] || /usr/sbin/depmod -b "$KD/kroot" "$K" || die "depmod failed"
  if [ ! -f "$KD/initrd.gz" ]; then
    local ir="$KD/initrd.d"
    rm -rf "$ir" && mkdir -p "$ir"/{bin,proc,sys,dev,mods,newroot}
    cp /bin/busybox "$ir/bin/busybox"
    # The boot modules in dependency order, as modprobe would load them.
    local order=() ko
    while read -r ko; do
      cp "$ko" "$ir/mods/"
      order+=("$(basename "$ko")")
    done < <(for m in virtio_pci 9pnet_virtio 9p; do
               /usr/sbin/modprobe -d "$KD/kroot" -S "$K" --show-depends "$m"
             done | awk '$1 == "insmod" && !seen[$2]++ {print $2}')
    [ ${#order[@]} -gt 0 ] || die "found no 9p modules in $pkg"
    cat > "$ir/init" <<EOI
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${order[*]}; do insmod /mods/\$m || echo "kernelvm: insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /newroot \
  || { echo "kernelvm: mounting the host root over 9p failed"; poweroff -f; }
mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys
exec switch_root /newroot $KD/stage2.sh
EOI
    chmod +x "$ir/init"
    (cd "$ir" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > ../initrd.gz.new) && mv "$KD/initrd.gz.new" "$KD/initrd.gz"
    rm -rf "$ir"
  fi
  # Written anew (atomically: a concurrent run may be booting) so that edits here take effect.
  cat > "$KD/modprobe.sh.new" <<EOM
#!/bin/sh
exec /usr/sbin/modprobe -d $KD/kroot "\$@"
EOM
  # stage2 runs in the guest on the host's root; its job directory comes from the kernel
  # command line, so that concurrent runs do not share one.
  cat > "$KD/stage2.sh.new" <<'EOS'
#!/bin/bash
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
job=$(sed -n 's/.*kernelvm\.job=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "@KD@/modprobe.sh" > /proc/sys/kernel/modprobe
echo "kernelvm: stage2 at $(cut -d' ' -f1 /proc/uptime) s" > /dev/ttyS0
# What the test topology needs. The nf_tables modules are left to autoload, as on a node:
# nftproxy's kernel probe (nft.Netlink.Probe, which the daemon and the integration tests'
# TestMain run first) loads them a few per batch. One batch naming them all would be
# replayed once per missing module, each replay requesting every module requested before
# (n(n+1)/2 modprobe runs for n modules, about 0.5 s each under TCG: a first sync of 10 s).
mods=$(sed -n 's/.*kernelvm\.modules=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
"@KD@/modprobe.sh" -a virtio_console br_netfilter nf_conntrack nf_conntrack_netlink veth bridge $mods
ip link set lo up
out=/dev/null
for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = kernelvm.out ] && out=/dev/$(basename "$p"); done
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "kernelvm: command at $(cut -d' ' -f1 /proc/uptime) s" > /dev/ttyS0
bash "$job/cmd" > "$out" 2>&1 < /dev/null
echo $? > "$job/rc.new" && mv "$job/rc.new" "$job/rc"
sync; echo o > /proc/sysrq-trigger; sleep 10
EOS
  sed -i -e "s|@KD@|$KD|g" "$KD/stage2.sh.new"
  chmod +x "$KD/modprobe.sh.new" "$KD/stage2.sh.new"
  mv "$KD/modprobe.sh.new" "$KD/modprobe.sh" && mv "$KD/stage2.sh.new" "$KD/stage2.sh"
}
exec 8>"$KD.lock"
flock 8
prepare
flock -u 8
K=$(ls "$KD/kroot/lib/modules")

# --- one boot -------------------------------------------------------------------------------
JOBS="$CACHE/jobs"
mkdir -p "$JOBS"
job=$(mktemp -d "$JOBS/job.XXXXXX")
tailpid=
cleanup() {
  [ -n "$tailpid" ] && kill "$tailpid" 2>/dev/null
  if [ -n "${KERNELVM_KEEP:-}" ]; then echo "kernelvm: kept $job" >&2; else rm -rf "$job"; fi
}
trap cleanup EXIT

# boot ACCEL TIMEOUT SCRIPT: write SCRIPT as the job, boot, leave the guest's output in
# $job/out and its console in $job/console; returns timeout's status.
boot() {
  local accel=$1 secs=$2
  rm -f "$job/rc" "$job/console"
  printf '%s\n' "$3" > "$job/cmd"
  local a=(-accel tcg,thread=multi)
  [ "$accel" = kvm ] && a=(-enable-kvm)
  timeout --kill-after=10 "$secs" qemu-system-x86_64 "${a[@]}" -cpu max -smp "${KERNELVM_CPUS:-$(nproc)}" \
    -m "${KERNELVM_MEM:-4G}" -nographic -no-reboot -nodefaults -serial "file:$job/console" \
    -kernel "$KD/kroot/boot/vmlinuz-$K" -initrd "$KD/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 kernelvm.job=$job kernelvm.modules=$(echo $MODULES | tr ' ' ,)" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap \
    -device virtio-serial -chardev "file,id=out,path=$job/out,append=on" \
    -device virtserialport,chardev=out,name=kernelvm.out \
    </dev/null >>"$job/console" 2>&1
}

accel=${KERNELVM_ACCEL:-auto}
if [ "$accel" = auto ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    memo="$CACHE/kvm-works.$(cat /proc/sys/kernel/random/boot_id)"
    if [ ! -f "$memo" ]; then
      if boot kvm 60 'true' && [ "$(cat "$job/rc" 2>/dev/null)" = 0 ]; then echo yes; else echo no; fi > "$memo"
    fi
    [ "$(cat "$memo")" = yes ] && accel=kvm
  fi
fi
case "$accel" in tcg|kvm) ;; *) die "KERNELVM_ACCEL=$accel: want tcg, kvm or auto";; esac

# The job: the caller's directory, the variables named in KERNELVM_ENV, the command.
script="cd $(printf '%q' "$PWD") || exit 125"$'\n'
for v in ${KERNELVM_ENV:-}; do
  [ -n "${!v+set}" ] && script+="export $v=$(printf '%q' "${!v}")"$'\n'
done
script+="exec $(printf '%q ' "$@")"

echo "kernelvm: booting $pkg ($K) with $accel" >&2
: > "$job/out"
start=$SECONDS
boot "$accel" "${KERNELVM_TIMEOUT:-1800}" "$script" &
qpid=$!
tail -n +1 -f --pid="$qpid" "$job/out" &
tailpid=$!
status=0
wait "$qpid" || status=$?
wait "$tailpid" 2>/dev/null || true
tailpid=
if [ -f "$job/rc" ]; then
  rc=$(cat "$job/rc")
  echo "kernelvm: exit status $rc after $((SECONDS - start)) s under $K" >&2
  exit "$rc"
fi
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "kernelvm: timed out after ${KERNELVM_TIMEOUT:-1800} s; guest console:" >&2
  tail -30 "$job/console" >&2
  exit 124
fi
echo "kernelvm: the guest stopped without an exit status (qemu status $status); guest console:" >&2
tail -30 "$job/console" >&2
exit 125
