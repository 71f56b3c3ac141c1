#!/usr/bin/env bash
# weft on three VMs through Vagrant itself: `vagrant up` with vagrant-libvirt, the
# checks qemu-cluster.sh runs, `vagrant destroy` (make vagrant-test).
#
#   vagrant/vagrant-cluster.sh up          # namespace + libvirtd, box, vagrant up
#   vagrant/vagrant-cluster.sh exec vm2 -- systemctl status flanneld
#   vagrant/vagrant-cluster.sh test        # up, vm-checks.sh, down (root-namespace snapshot)
#   vagrant/vagrant-cluster.sh vagrant status   # any vagrant command, in the namespace
#   vagrant/vagrant-cluster.sh down        # vagrant destroy, libvirtd, namespace, state
#
# No hypervisor and no system libvirt are needed: a libvirtd of its own runs inside a
# network namespace this script creates (`ip netns exec NS libvirtd`), in a private mount
# namespace whose /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
# /var/log/libvirt are directories of the state dir (so nothing of a system libvirt is
# read or touched; QEMU runs as root with TCG, `libvirt.driver = "qemu"`). Vagrant runs
# in the namespace too, with its own VAGRANT_HOME and dot dir in the state dir. Its
# management network (DHCP, ssh) is an isolated libvirt network on 198.18.1.0/24, the
# nodes' private network 198.18.2.0/24 (.11-.13): bridges inside the namespace only.
# The box is made from qemu-cluster.sh's image (sshd, a `vagrant` user with Vagrant's
# insecure key), booted by direct kernel boot; weft is installed by provision.sh from
# the rsynced checkout and a wheelhouse of its locked dependencies.
#
# Settings (environment): WEFT_VM_CLUSTER [weft-vagrant], WEFT_VM_STATE
# [/var/tmp/weft-vagrant/$WEFT_VM_CLUSTER], WEFT_VM_WAIT (provision.sh's wait) [900], WEFT_BACKEND, WEFT_STORE,
# WEFT_VM_LEASE_TTL, WEFT_VM_AGENT_TTL/RENEW/GRACE as qemu-cluster.sh; WEFT_VM_CACHE
# (the image, shared with qemu-cluster.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=${WEFT_VM_CLUSTER:-weft-vagrant}
STATE=${WEFT_VM_STATE:-/var/tmp/weft-vagrant/$CLUSTER}
WAIT=${WEFT_VM_WAIT:-900}
BACKEND=${WEFT_BACKEND:-vxlan}
STORE=${WEFT_STORE:-etcd}
LEASE_TTL=${WEFT_VM_LEASE_TTL:-30}
MGMT=198.18.1
UNDERLAY=198.18.2
NODES=3
BOX=weft-local
LV_DIRS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt)
PATH_IN_VM=/opt/weft/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[vagrant-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

load_state() {
    [[ -f $STATE/env ]] || die "cluster '$CLUSTER' is not up (no $STATE/env)"
    # shellcheck source=/dev/null
    . "$STATE/env"
}

uri() { echo "qemu+unix:///system?socket=$STATE/lv/run/libvirt-sock"; }
virsh_() { virsh -q -c "$(uri)" "$@"; }

# vagrant in the namespace, with this cluster's home, dot dir and settings
vagrant_() {
    (cd "$HERE" && ip netns exec "$NETNS" env VAGRANT_HOME="$STATE/vagrant.d" \
        VAGRANT_DOTFILE_PATH="$STATE/dot" VAGRANT_CHECKPOINT_DISABLE=1 \
        VAGRANT_DEFAULT_PROVIDER=libvirt WEFT_BOX="$BOX" WEFT_PRIVATE_NET="$UNDERLAY" \
        WEFT_BACKEND="$BACKEND" WEFT_STORE="$STORE" WEFT_LEASE_TTL="$LEASE_TTL" \
        WEFT_WAIT="$WAIT" WEFT_ETCD_HEARTBEAT_MS=500 WEFT_ETCD_ELECTION_MS=5000 \
        WEFT_AGENT_TTL="${WEFT_VM_AGENT_TTL:-15s}" WEFT_AGENT_RENEW="${WEFT_VM_AGENT_RENEW:-3s}" \
        WEFT_AGENT_GRACE="${WEFT_VM_AGENT_GRACE:-5s}" WEFT_AGENT_PROBE_TIMEOUT=2s \
        WEFT_WHEELHOUSE="$WHEELS" WEFT_LIBVIRT_URI="$(uri)" WEFT_LIBVIRT_DRIVER=qemu \
        WEFT_LIBVIRT_POOL=weft WEFT_LIBVIRT_MGMT_NET="$MGMT.0/24" \
        WEFT_LIBVIRT_KERNEL="$IMAGE/vmlinuz" WEFT_LIBVIRT_INITRD="$IMAGE/initrd.img" \
        WEFT_LIBVIRT_CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0 mitigations=off systemd.wants=systemd-networkd.service" \
        WEFT_LIBVIRT_CONSOLE_DIR="$STATE" \
        vagrant "$@")
}

# -- libvirtd of our own --------------------------------------------------------------

start_libvirtd() {
    local lv=$STATE/lv d
    mkdir -p "$lv"/{etc,run,lib,cache,log} "$STATE/pool"
    cat >"$lv/etc/libvirtd.conf" <<EOF
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
EOF
    # root, no cgroups, no namespaces, no virtlogd: all a system libvirt would set up
    cat >"$lv/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
    # libvirt resolves its compiled-in users (libvirt-qemu, libvirt-dnsmasq) at start:
    # they exist in the private mount namespace only
    cp /etc/passwd "$lv/passwd"
    cp /etc/group "$lv/group"
    printf '%s\n' 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' \
        'libvirt-dnsmasq:x:64056:64056::/var/lib/libvirt/dnsmasq:/usr/sbin/nologin' >>"$lv/passwd"
    printf '%s\n' 'libvirt-qemu:x:64055:' 'libvirt-dnsmasq:x:64056:' 'kvm:x:64057:' \
        'libvirt:x:64058:' >>"$lv/group"
    : >"$STATE/created-dirs"
    for d in "${LV_DIRS[@]}"; do  # mount points; removed on down if we made them
        [[ -d $d ]] || { mkdir -p "$d"; echo "$d" >>"$STATE/created-dirs"; }
    done
    # shellcheck disable=SC2016  # expanded by sh -c
    ip netns exec "$NETNS" unshare -m --propagation private sh -c '
        set -e
        mount --bind "$1/passwd" /etc/passwd
        mount --bind "$1/group" /etc/group
        mount --bind "$1/etc" /etc/libvirt
        mount --bind "$1/run" /run/libvirt
        mount --bind "$1/lib" /var/lib/libvirt
        mount --bind "$1/cache" /var/cache/libvirt
        mount --bind "$1/log" /var/log/libvirt
        exec libvirtd -d -p "$1/libvirtd.pid"' libvirtd "$lv" >"$STATE/libvirtd.out" 2>&1
    for _ in $(seq 100); do
        virsh_ version >/dev/null 2>&1 && break
        sleep 0.2
    done
    virsh_ version >/dev/null || { cat "$STATE/libvirtd.out" >&2; die "libvirtd did not start"; }
    virsh_ pool-define-as weft dir --target "$STATE/pool" >/dev/null
    virsh_ pool-start weft >/dev/null
    log "libvirtd $(<"$lv/libvirtd.pid") in $NETNS ($(uri))"
}

# -- the box ----------------------------------------------------------------------------

make_box() {  # a libvirt box of qemu-cluster.sh's image, added to this cluster's VAGRANT_HOME
    local dir=$STATE/box size
    mkdir -p "$dir"
    ln -f "$IMAGE/base.qcow2" "$dir/box.img" 2>/dev/null || cp "$IMAGE/base.qcow2" "$dir/box.img"
    size=$(qemu-img info --output=json "$dir/box.img" |
        python3 -c 'import json, sys; print(-(-json.load(sys.stdin)["virtual-size"] // 2**30))')
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$size" \
        >"$dir/metadata.json"
    tar -C "$dir" -cf "$STATE/weft.box" metadata.json box.img
    rm -rf "$dir"
    vagrant_ box add --force --name "$BOX" "$STATE/weft.box" >"$STATE/box-add.log" 2>&1 ||
        { cat "$STATE/box-add.log" >&2; die "vagrant box add failed"; }
    rm -f "$STATE/weft.box"
    log "box $BOX (${size} GB disk) from $IMAGE"
}

# -- up / down --------------------------------------------------------------------------

cmd_up() {
    [[ $EUID == 0 ]] || die "needs root (network namespace, libvirtd)"
    [[ ! -f $STATE/env ]] || die "cluster '$CLUSTER' is already up ($STATE); down it first"
    for tool in vagrant libvirtd virsh dnsmasq qemu-system-x86_64 unshare; do
        command -v "$tool" >/dev/null || die "$tool missing (make vagrant-deps installs it)"
    done
    local t0=$SECONDS
    IMAGE=$("$HERE/qemu-cluster.sh" image)
    WHEELS=$("$HERE/qemu-cluster.sh" wheels)
    mkdir -p "$STATE"
    NETNS="weftvg-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    printf 'NETNS=%q\nIMAGE=%q\nWHEELS=%q\n' "$NETNS" "$IMAGE" "$WHEELS" >"$STATE/env"
    trap 'log "up failed: tearing down"; cmd_down' ERR
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
    start_libvirtd
    make_box
    log "vagrant up ($NODES VMs, TCG; output in $STATE/vagrant-up.log)"
    local t_up=$SECONDS
    if ! vagrant_ up >"$STATE/vagrant-up.log" 2>&1; then  # the VMs in parallel
        tail -40 "$STATE/vagrant-up.log" >&2
        false
    fi
    vagrant_ ssh-config >"$STATE/ssh_config"
    trap - ERR
    grep -E 'cross-host ping|leases:' "$STATE/vagrant-up.log" | tail -4 >&2 || true
    log "vagrant up took $((SECONDS - t_up))s; up in $((SECONDS - t0))s"
}

cmd_down() {
    local t0=$SECONDS pid d
    [[ -f $STATE/env ]] || { log "cluster '$CLUSTER' is not up"; return 0; }
    # shellcheck source=/dev/null
    . "$STATE/env"
    if [[ -S $STATE/lv/run/libvirt-sock && -d $STATE/dot ]]; then
        if vagrant_ destroy -f >"$STATE/vagrant-destroy.log" 2>&1; then
            log "vagrant destroy: done in $((SECONDS - t0))s"
        else
            tail -5 "$STATE/vagrant-destroy.log" >&2
            log "vagrant destroy failed; removing the rest by hand"
        fi
    fi
    # whatever still runs in the namespace is ours: libvirtd, dnsmasq, QEMU, vagrant
    if [[ -n ${NETNS:-} ]] && ip netns list 2>/dev/null | grep -qw "$NETNS"; then
        for sig in TERM KILL; do
            for pid in $(ip netns pids "$NETNS"); do kill -"$sig" "$pid" 2>/dev/null || true; done
            for _ in $(seq 50); do [[ -z $(ip netns pids "$NETNS") ]] && break; sleep 0.1; done
        done
        ip netns del "$NETNS"
    fi
    if [[ -f $STATE/created-dirs ]]; then
        while read -r d; do rmdir "$d" 2>/dev/null || log "left $d (not empty)"; done <"$STATE/created-dirs"
    fi
    rm -rf "$STATE"
    log "down: VMs, libvirtd, namespace ${NETNS:-?} and state removed"
}

cmd_poweroff() {  # a power cut: libvirt destroys the domain (kills its QEMU)
    load_state
    local dom
    dom=$(virsh_ list --name | grep -E "_weft${1#vm}$") || die "$1 is not running"
    virsh_ destroy "$dom" >/dev/null
    log "$1 powered off (domain $dom destroyed)"
}

cmd_exec() {  # exec vmN [--timeout S] -- ARGV...: as root in weftN over Vagrant's ssh config
    local vm=${1:?exec VM -- COMMAND...} timeout=300 rc=0
    shift
    if [[ ${1:-} == --timeout ]]; then timeout=$2; shift 2; fi
    [[ ${1:-} == -- ]] && shift
    (($# > 0)) || die "exec $vm: no command"
    load_state
    timeout "$timeout" ip netns exec "$NETNS" ssh -F "$STATE/ssh_config" -o LogLevel=ERROR \
        -o BatchMode=yes "weft${vm#vm}" "sudo env PATH=$PATH_IN_VM $(printf '%q ' "$@")" </dev/null ||
        rc=$?
    return $rc
}

cmd_test() {
    local before after rc=0 t0=$SECONDS
    before=$(root_snapshot)
    trap 'cmd_down' EXIT
    cmd_up
    log "running the checks"
    WEFT_VM_LEASE_TTL=$LEASE_TTL WEFT_VM_UNDERLAY=$UNDERLAY WEFT_VM_DEV=eth1 \
        bash "$HERE/vm-checks.sh" "$0" || rc=$?
    trap - EXIT
    local t_down=$SECONDS
    cmd_down
    log "down took $((SECONDS - t_down))s"
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
    vagrant) shift; load_state; vagrant_ "$@" ;;
    console) load_state; cat "$STATE/weft${2#vm}.log" ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
