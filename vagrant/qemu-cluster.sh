#!/usr/bin/env bash
# weft on three real Debian VMs under QEMU (TCG), without Vagrant or a hypervisor.
#
#   vagrant/qemu-cluster.sh up                 # build/cache the image, boot, provision
#   vagrant/qemu-cluster.sh exec vm2 -- systemctl status flanneld
#   vagrant/qemu-cluster.sh test               # the checks (a whole up/test/down cycle
#                                              # with a root-namespace snapshot if not up)
#   vagrant/qemu-cluster.sh down               # remove VMs, namespace, taps, overlays
#   vagrant/qemu-cluster.sh console vm1        # the VM's serial console log
#
# The image is a Debian bookworm root built by mmdebstrap with every package
# provision.sh installs baked in (the VMs have no network beyond their namespace),
# cached under $WEFT_VM_CACHE keyed on the package list, the guest files and the
# project version. Each VM boots from a qcow2 overlay of it; its NIC is a tap on a
# bridge inside a network namespace this script creates (underlay 198.18.0.0/24,
# VMs at .11, .12, .13): nothing changes in the root namespace. The checkout, a
# wheelhouse of weft's locked dependencies and a per-VM directory are 9p shares;
# weft is installed in each VM by vagrant/provision.sh, the script Vagrant runs.
# Commands reach a VM through vm/weft-vm-agent (files in the per-VM share), so
# `exec` needs no ssh; the serial console is logged to <state>/vmN/console.log.
#
# Settings (environment):
#   WEFT_VM_CLUSTER  name of the cluster (state dir, namespace)      [weft]
#   WEFT_VM_STATE    state dir                         [/run/weft-vm/$WEFT_VM_CLUSTER]
#   WEFT_VM_CACHE    image and wheelhouse cache                  [/var/cache/weft-vm]
#   WEFT_VM_MEM      MiB per VM                                     [1024]
#   WEFT_VM_CPU      QEMU CPU model; TCG's default qemu64 lacks x86-64-v2, which numpy's
#                    wheels (a weft dependency) require: weftctl dies of SIGILL   [max]
#   WEFT_VM_NICE     nice level of the QEMU processes               [10]
#   WEFT_VM_WAIT     seconds to wait for boot, and for the cluster in provision.sh [900]
#   WEFT_VM_KEEP     1: leave the VMs up when `up` fails, to look inside [0]
#   WEFT_BACKEND     vxlan | host-gw | udp                          [vxlan]
#   WEFT_VM_LEASE_TTL flanneld's subnet lease TTL in the VMs (power-cut check) [30]
#   WEFT_STORE       etcd (3-member Debian etcd) | embedded (weft-store on vm1) [etcd]
#   WEFT_VM_AGENT_TTL, WEFT_VM_AGENT_RENEW, WEFT_VM_AGENT_GRACE
#                    weft-agent's presence TTL, renew interval and reschedule grace
#                    (margins for emulated CPUs; weftctl agent's are 5s/1s/3s) [15s/3s/5s]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CLUSTER=${WEFT_VM_CLUSTER:-weft}
STATE=${WEFT_VM_STATE:-/run/weft-vm/$CLUSTER}
CACHE=${WEFT_VM_CACHE:-/var/cache/weft-vm}
MEM=${WEFT_VM_MEM:-1024}
CPU=${WEFT_VM_CPU:-max}
NICE=${WEFT_VM_NICE:-10}
WAIT=${WEFT_VM_WAIT:-900}
KEEP=${WEFT_VM_KEEP:-0}
BACKEND=${WEFT_BACKEND:-vxlan}
STORE=${WEFT_STORE:-etcd}
LEASE_TTL=${WEFT_VM_LEASE_TTL:-30}
AGENT_TTL=${WEFT_VM_AGENT_TTL:-15s}
AGENT_RENEW=${WEFT_VM_AGENT_RENEW:-3s}
AGENT_GRACE=${WEFT_VM_AGENT_GRACE:-5s}
NODES=3
UNDERLAY=198.18.0
SUITE=bookworm
# besides provision.sh's WEFT_PACKAGES: what a bootable VM and the checks need
VM_PACKAGES="systemd systemd-sysv udev dbus linux-image-amd64 initramfs-tools kmod procps
rsync python3 busybox-static podman openssh-server sudo"

log() { printf '[qemu-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

vm_ip() { echo "$UNDERLAY.$((10 + $1))"; }
node_ips() {
    local i ips=()
    for ((i = 1; i <= NODES; i++)); do ips+=("$(vm_ip "$i")"); done
    (IFS=,; echo "${ips[*]}")
}

# -- image --------------------------------------------------------------------------

image_packages() {
    # shellcheck disable=SC2086,SC2046  # word lists on purpose
    printf '%s\n' $(sed -n 's/^WEFT_PACKAGES="\(.*\)"$/\1/p' "$HERE/provision.sh") $VM_PACKAGES |
        sort -u
}

project_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1; }

image_key() {
    {
        echo "$SUITE $(project_version)"
        image_packages
        cat "$HERE"/vm/*
    } | sha256sum | cut -c1-16
}

image_dir() { echo "$CACHE/image-$(image_key)"; }

build_image() {
    local dir tmp size
    dir=$(image_dir)
    if [[ -s $dir/base.qcow2 ]]; then
        log "image: cached $dir"
        return
    fi
    for tool in mmdebstrap qemu-img mkfs.ext4; do
        command -v "$tool" >/dev/null || die "$tool missing (make vm-deps installs it)"
    done
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/build.XXXXXX")
    log "image: building $dir (mmdebstrap $SUITE, $(image_packages | wc -l) packages)"
    if ! mmdebstrap --variant=apt --quiet \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --include="$(image_packages | paste -sd,)" \
        --customize-hook="\"$HERE/vm/customize.sh\" \"\$1\"" \
        "$SUITE" "$tmp/root" >"$tmp/mmdebstrap.log" 2>&1; then
        tail -30 "$tmp/mmdebstrap.log" >&2
        rm -rf "$tmp"
        die "mmdebstrap failed"
    fi
    cp "$tmp"/root/boot/vmlinuz-* "$tmp/vmlinuz"
    cp "$tmp"/root/boot/initrd.img-* "$tmp/initrd.img"
    size=$(( $(du -xsm "$tmp/root" | cut -f1) + 1536 ))
    mkfs.ext4 -q -L weftroot -d "$tmp/root" "$tmp/root.img" "${size}M"
    rm -rf "$tmp/root"
    qemu-img convert -O qcow2 "$tmp/root.img" "$tmp/base.qcow2"
    rm -f "$tmp/root.img"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "image: built $dir ($(du -sh "$dir/base.qcow2" | cut -f1))"
}

# weft's locked dependencies plus the build backend, for an offline `pip install`
build_wheelhouse() {
    local dir tmp
    dir=$CACHE/wheels-$(cat "$REPO/uv.lock" "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
    if [[ ! -d $dir ]]; then
        mkdir -p "$CACHE"
        tmp=$(mktemp -d "$CACHE/wheels.XXXXXX")
        log "wheelhouse: pip download into $dir"
        local uv=(uv)
        command -v uv >/dev/null || uv=(python3 -m uv)
        (cd "$REPO" && "${uv[@]}" export --frozen --no-dev --no-hashes --no-emit-project -q) \
            >"$tmp/requirements.txt"
        python3 -m pip download -q -d "$tmp" -r "$tmp/requirements.txt" \
            "$(sed -n 's/^requires = \["\(.*\)"\]$/\1/p' "$REPO/pyproject.toml")" 2>&1 |
            grep -v 'is ignored: it is neither' >&2 || true
        mv "$tmp" "$dir"
    fi
    echo "$dir"
}

# -- state --------------------------------------------------------------------------

load_state() {
    [[ -f $STATE/env ]] || die "cluster '$CLUSTER' is not up (no $STATE/env)"
    # shellcheck source=/dev/null
    . "$STATE/env"
}

qemu_pid() {  # the pid in vmN's pidfile if it is still our QEMU
    local pidf=$STATE/vm$1/qemu.pid pid
    [[ -s $pidf ]] || return 1
    pid=$(<"$pidf")
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$STATE/vm$1/" ||
        return 1
    echo "$pid"
}

# -- up / down ------------------------------------------------------------------------

boot_vm() {
    local i=$1 image=$2 wheels=$3 vm=vm$1
    mkdir -p "$STATE/$vm/chan"
    rm -f "$STATE/$vm/chan/"*
    qemu-img create -q -f qcow2 -b "$image/base.qcow2" -F qcow2 "$STATE/$vm/disk.qcow2"
    ip -n "$NETNS" tuntap add "tap$i" mode tap
    ip -n "$NETNS" link set "tap$i" master br0 up
    ip netns exec "$NETNS" nice -n "$NICE" qemu-system-x86_64 -name "weft-$CLUSTER-$vm" \
        -accel tcg,tb-size=256 -cpu "$CPU" -m "$MEM" -smp 1 -nodefaults -no-user-config -display none \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname=$vm weft.ip=$(vm_ip "$i")/24 mitigations=off" \
        -drive "file=$STATE/$vm/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
        -netdev "tap,id=n0,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=52:54:00:12:00:$((10 + i))" \
        -virtfs "local,path=$REPO,mount_tag=weftsrc,security_model=none,readonly=on" \
        -virtfs "local,path=$wheels,mount_tag=weftwheels,security_model=none,readonly=on" \
        -virtfs "local,path=$STATE/$vm,mount_tag=weftvm,security_model=none" \
        -device virtio-rng-pci -serial "file:$STATE/$vm/console.log" \
        -pidfile "$STATE/$vm/qemu.pid" -daemonize
}

wait_ready() {  # wait_ready VM: the agent answered (its chan/ready exists)
    local deadline=$((SECONDS + WAIT))
    until [[ -s $STATE/$1/chan/ready ]]; do
        qemu_pid "${1#vm}" >/dev/null || die "$1's QEMU exited (see $STATE/$1/console.log)"
        ((SECONDS < deadline)) || die "$1: no agent after ${WAIT}s (see $STATE/$1/console.log)"
        sleep 1
    done
}

cmd_up() {
    [[ $EUID == 0 ]] || die "needs root (network namespace, taps)"
    [[ ! -f $STATE/env ]] || die "cluster '$CLUSTER' is already up ($STATE); down it first"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (make vm-deps)"
    local image wheels t0=$SECONDS i
    build_image
    image=$(image_dir)
    wheels=$(build_wheelhouse)
    mkdir -p "$STATE"
    NETNS="weftvm-$CLUSTER-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    printf 'NETNS=%q\nIMAGE=%q\n' "$NETNS" "$image" >"$STATE/env"
    if [[ $KEEP == 1 ]]; then
        trap 'log "up failed: VMs left up (WEFT_VM_KEEP=1); down removes them"' ERR
    else
        trap 'log "up failed: tearing down"; cmd_down' ERR
    fi
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" link add br0 type bridge
    ip -n "$NETNS" addr add "$UNDERLAY.1/24" dev br0
    ip -n "$NETNS" link set br0 up
    local t_boot=$SECONDS
    for ((i = 1; i <= NODES; i++)); do boot_vm "$i" "$image" "$wheels"; done
    log "booting $NODES VMs in namespace $NETNS (TCG; consoles in $STATE/vmN/console.log)"
    for ((i = 1; i <= NODES; i++)); do wait_ready "vm$i"; done
    for ((i = 1; i <= NODES; i++)); do
        vm_exec "vm$i" "$WAIT" systemctl is-system-running --wait >/dev/null || true
    done
    log "booted in $((SECONDS - t_boot))s; provisioning with vagrant/provision.sh"
    provision
    trap - ERR
    log "up in $((SECONDS - t0))s: vagrant/qemu-cluster.sh exec vm1 -- weftctl leases"
}

provision() {
    local i pids=() rc=0 ips
    ips=$(node_ips)
    for ((i = 1; i <= NODES; i++)); do
        # the Vagrantfile rsyncs the checkout to /weft with these excludes; so do we
        # provision.sh waits up to WEFT_WAIT for the cluster after minutes of pip install
        vm_exec "vm$i" $((3 * WAIT)) bash -c 'rsync -a --delete --exclude .git/ --exclude .venv/ \
            --exclude .weft-sandbox/ --exclude __pycache__/ --exclude .mypy_cache/ \
            /mnt/weft-src/ /weft/ && exec env "$@" bash /weft/vagrant/provision.sh' provision \
            NODE_INDEX="$i" NODE_IPS="$ips" WEFT_SRC=/weft WEFT_PREFIX=/opt/weft \
            WEFT_BACKEND="$BACKEND" WEFT_STORE="$STORE" WEFT_VM=1 WEFT_WAIT="$WAIT" WEFT_LEASE_TTL="$LEASE_TTL" \
            WEFT_ETCD_HEARTBEAT_MS=500 WEFT_ETCD_ELECTION_MS=5000 WEFT_SCHED=1 \
            WEFT_AGENT_TTL="$AGENT_TTL" WEFT_AGENT_RENEW="$AGENT_RENEW" WEFT_AGENT_GRACE="$AGENT_GRACE" \
            WEFT_AGENT_PROBE_TIMEOUT=2s \
            PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/weft-wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
            >"$STATE/vm$i/provision.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        if ! wait "${pids[i]}"; then
            log "vm$((i + 1)): provision.sh failed; its output:"
            tail -40 "$STATE/vm$((i + 1))/provision.log" >&2
            rc=1
        fi
    done
    tail -8 "$STATE/vm$NODES/provision.log" >&2
    return $rc
}

cmd_down() {
    local i pid
    [[ -f $STATE/env ]] || { log "cluster '$CLUSTER' is not up"; return 0; }
    # shellcheck source=/dev/null
    . "$STATE/env"
    for ((i = 1; i <= NODES; i++)); do
        if pid=$(qemu_pid "$i"); then kill "$pid" 2>/dev/null || true; fi
    done
    for ((i = 1; i <= NODES; i++)); do
        for _ in $(seq 50); do qemu_pid "$i" >/dev/null || break; sleep 0.1; done
        if pid=$(qemu_pid "$i"); then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [[ -n ${NETNS:-} ]]; then ip netns del "$NETNS" 2>/dev/null || true; fi
    rm -rf "$STATE"
    log "down: VMs, namespace ${NETNS:-?}, taps and overlays removed"
}

cmd_poweroff() {  # kill one VM's QEMU, as a power cut
    load_state
    local pid
    pid=$(qemu_pid "${1#vm}") || die "$1 is not running"
    kill -KILL "$pid"
    log "$1 powered off (QEMU $pid killed)"
}

# -- exec -----------------------------------------------------------------------------

vm_exec() {  # vm_exec VM TIMEOUT ARGV...: run ARGV in VM, print its output, return its rc
    local vm=$1 timeout=$2 dir id deadline rc
    shift 2
    dir=$STATE/$vm/chan
    [[ -d $dir ]] || die "no VM '$vm' in cluster '$CLUSTER'"
    id=$(date +%s%N)-$$-$RANDOM
    printf '%q ' "$@" >"$dir/$id.cmd.tmp"
    echo >>"$dir/$id.cmd.tmp"
    mv "$dir/$id.cmd.tmp" "$dir/$id.cmd"
    deadline=$((SECONDS + timeout))
    until [[ -s $dir/$id.rc ]]; do
        if ((SECONDS >= deadline)) || ! qemu_pid "${vm#vm}" >/dev/null; then
            cat "$dir/$id.out" 2>/dev/null || true
            log "$vm: no answer to '$*' within ${timeout}s"
            return 124
        fi
        sleep 0.2
    done
    cat "$dir/$id.out"
    rc=$(<"$dir/$id.rc")
    rm -f "$dir/$id".*
    return "$rc"
}

cmd_exec() {  # exec VM [--timeout S] -- ARGV...
    local vm=${1:?exec VM -- COMMAND...} timeout=300
    shift
    if [[ ${1:-} == --timeout ]]; then timeout=$2; shift 2; fi
    [[ ${1:-} == -- ]] && shift
    (($# > 0)) || die "exec $vm: no command"
    load_state
    # login-like PATH so weftctl & co. are found
    vm_exec "$vm" "$timeout" env PATH=/opt/weft/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# -- test -----------------------------------------------------------------------------

cmd_test() {
    if [[ -f $STATE/env ]]; then
        WEFT_VM_CLUSTER=$CLUSTER WEFT_VM_STATE=$STATE WEFT_VM_LEASE_TTL=$LEASE_TTL \
            bash "$HERE/vm-checks.sh" "$0"
        return
    fi
    local before after rc=0 t0=$SECONDS
    before=$(root_snapshot)
    trap 'cmd_down' EXIT
    cmd_up
    log "running the checks"
    WEFT_VM_CLUSTER=$CLUSTER WEFT_VM_STATE=$STATE WEFT_VM_LEASE_TTL=$LEASE_TTL \
            bash "$HERE/vm-checks.sh" "$0" || rc=$?
    trap - EXIT
    cmd_down
    after=$(root_snapshot)
    root_unchanged "$before" "$after" || rc=1
    log "test: rc=$rc in $((SECONDS - t0))s"
    return $rc
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    test) cmd_test ;;
    exec) shift; cmd_exec "$@" ;;
    poweroff) cmd_poweroff "${2:?poweroff VM}" ;;
    console) load_state; cat "$STATE/${2:?console VM}/console.log" ;;
    image) build_image >&2; image_dir ;;  # build (or find) the image, print its dir
    wheels) build_wheelhouse ;;            # the wheelhouse, print its dir
    snapshot) root_snapshot ;;             # what `test` compares before and after
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
