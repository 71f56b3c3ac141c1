#!/usr/bin/env bash
# Provision one weft host: weft from the checkout, one member of a 3-member etcd
# cluster (Debian etcd-server), flanneld + dnsd as systemd units, the weft CNI
# plugin, and (on the last node) the network config and a cross-host ping.
#
# Settings (environment; the Vagrantfile passes them):
#   NODE_INDEX      1-based index of this node                     (required)
#   NODE_IPS        comma list of every node's private IP, in order  (required)
#   WEFT_SRC        the weft checkout                                [/weft]
#   WEFT_PREFIX     where weft is (or gets) installed               [/opt/weft]
#   WEFT_NETWORK    overlay network                                  [10.244.0.0/16]
#   WEFT_BACKEND    vxlan | host-gw | udp                            [vxlan]
#   WEFT_VM         1: a real VM (apt, pip install, systemctl)       [1]
#                   0: the non-VM steps only, against an existing WEFT_PREFIX;
#                      services are started from their rendered units without
#                      systemd (how the test runs this on sandbox hosts)
#   WEFT_ROOT       prefix for every file written                   [""]
#   WEFT_WAIT       seconds to wait for the cluster                 [120]
#   WEFT_STORE      etcd: a 3-member Debian etcd cluster              [etcd]
#                   embedded: weft's store unit (weft-store.service) on node 1 only
#   WEFT_LEASE_TTL  flanneld's -subnet-lease-ttl in seconds          [flannel's 24 h]
#   WEFT_ETCD_HEARTBEAT_MS, WEFT_ETCD_ELECTION_MS
#                   etcd's heartbeat/election timeouts (slow emulated VMs) [etcd's]
#   WEFT_SCHED      1: the scheduler agent too (weft-agent.service)  [WEFT_VM]
#   WEFT_AGENT_*    written to /etc/weft/agent.env as they are (any `weftctl agent`
#                   flag: WEFT_AGENT_TTL=15s, WEFT_AGENT_GRACE=5s ...)
set -euo pipefail

NODE_INDEX=${NODE_INDEX:?NODE_INDEX (1-based) is required}
NODE_IPS=${NODE_IPS:?NODE_IPS (comma list of node IPs) is required}
WEFT_SRC=${WEFT_SRC:-/weft}
WEFT_PREFIX=${WEFT_PREFIX:-/opt/weft}
WEFT_NETWORK=${WEFT_NETWORK:-10.244.0.0/16}
WEFT_BACKEND=${WEFT_BACKEND:-vxlan}
WEFT_VM=${WEFT_VM:-1}
WEFT_ROOT=${WEFT_ROOT:-}
WEFT_WAIT=${WEFT_WAIT:-120}
WEFT_STORE=${WEFT_STORE:-etcd}
WEFT_SCHED=${WEFT_SCHED:-$WEFT_VM}
# Debian packages a VM needs (qemu-cluster.sh bakes exactly these into its image)
WEFT_PACKAGES="etcd-server etcd-client python3-venv python3-pip iproute2 nftables bind9-dnsutils iputils-ping containernetworking-plugins"

IFS=, read -r -a IPS <<<"$NODE_IPS"
NODES=${#IPS[@]}
if (( NODE_INDEX < 1 || NODE_INDEX > NODES )); then
    echo "provision: NODE_INDEX=$NODE_INDEX is outside 1..$NODES (NODE_IPS=$NODE_IPS)" >&2
    exit 2
fi
NODE_IP=${IPS[NODE_INDEX - 1]}
NAME="weft$NODE_INDEX"
case $WEFT_STORE in
    etcd) ENDPOINTS=$(printf 'http://%s:2379,' "${IPS[@]}"); ENDPOINTS=${ENDPOINTS%,} ;;
    embedded) ENDPOINTS=http://${IPS[0]}:2379 ;;
    *) echo "provision: WEFT_STORE=$WEFT_STORE is neither etcd nor embedded" >&2; exit 2 ;;
esac
WEFTCTL="$WEFT_PREFIX/bin/weftctl"

log() { printf '[%s %s] %s\n' "$NAME" "$(date +%T)" "$*"; }

# -- VM-only steps --------------------------------------------------------------

install_packages() {
    local p missing=()
    # shellcheck disable=SC2086  # a word list on purpose
    for p in $WEFT_PACKAGES; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if (( ${#missing[@]} == 0 )); then
        log "Debian packages already installed (baked image)"
    else
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # Debian starts a single-member etcd on install; ours is a cluster with its own data dir.
    systemctl stop etcd || true
}

install_weft() {
    log "installing weft from $WEFT_SRC into $WEFT_PREFIX"
    # Debian's pip installs into the venv (pip --python): no second pip in the venv,
    # which saves minutes on an emulated VM (ensurepip unpacks and compiles pip+setuptools)
    python3 -m venv --without-pip "$WEFT_PREFIX"
    python3 -m pip --python "$WEFT_PREFIX/bin/python3" install -q "$WEFT_SRC"
}

# -- steps shared by VMs and the test ----------------------------------------------

write_etcd_config() {
    local cluster="" i
    for i in "${!IPS[@]}"; do
        cluster+="weft$((i + 1))=http://${IPS[i]}:2380,"
    done
    mkdir -p "$WEFT_ROOT/etc/default" "$WEFT_ROOT/var/lib/etcd"
    cat >"$WEFT_ROOT/etc/default/etcd" <<EOF
# written by weft's vagrant/provision.sh: member $NODE_INDEX of $NODES
ETCD_NAME=$NAME
ETCD_DATA_DIR=$WEFT_ROOT/var/lib/etcd/weft
ETCD_LISTEN_CLIENT_URLS=http://$NODE_IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$NODE_IP:2379
ETCD_LISTEN_PEER_URLS=http://$NODE_IP:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$NODE_IP:2380
ETCD_INITIAL_CLUSTER=${cluster%,}
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=weft-vagrant
EOF
    if [[ -n ${WEFT_ETCD_HEARTBEAT_MS:-} ]]; then
        printf 'ETCD_HEARTBEAT_INTERVAL=%s\nETCD_ELECTION_TIMEOUT=%s\n' "$WEFT_ETCD_HEARTBEAT_MS" \
            "${WEFT_ETCD_ELECTION_MS:-$((WEFT_ETCD_HEARTBEAT_MS * 10))}" >>"$WEFT_ROOT/etc/default/etcd"
    fi
    log "etcd member $NAME of ${cluster%,}"
}

write_weft_config() {
    mkdir -p "$WEFT_ROOT/etc/weft" "$WEFT_ROOT/run/flannel"
    cat >"$WEFT_ROOT/etc/weft/flanneld.env" <<EOF
FLANNELD_ETCD_ENDPOINTS=$ENDPOINTS
FLANNELD_IFACE=$NODE_IP
FLANNELD_SUBNET_FILE=$WEFT_ROOT/run/flannel/subnet.env
FLANNELD_IP_MASQ=true
FLANNELD_HEALTHZ_IP=127.0.0.1
FLANNELD_HEALTHZ_PORT=9101
EOF
    if [[ -n ${WEFT_LEASE_TTL:-} ]]; then
        echo "FLANNELD_SUBNET_LEASE_TTL=$WEFT_LEASE_TTL" >>"$WEFT_ROOT/etc/weft/flanneld.env"
    fi
    cat >"$WEFT_ROOT/etc/weft/dnsd.env" <<EOF
SKYDNS_ADDR=$NODE_IP:53
SKYDNS_DOMAIN=skydns.local.
ETCD_MACHINES=$ENDPOINTS
EOF
    local units=(flanneld.service dnsd.service)
    if [[ $WEFT_SCHED == 1 ]]; then
        units+=(weft-agent.service)
        # the agent is reached (fencing probes, weftctl status/journal) on the node's IP;
        # metadata host=weftN lets a unit ask for a node (MachineMetadata=host=weft2)
        {
            echo "WEFT_AGENT_ETCD_ENDPOINTS=$ENDPOINTS"
            echo "WEFT_AGENT_PUBLIC_IP=$NODE_IP"
            echo "WEFT_AGENT_METADATA=host=$NAME"
            env | grep -E '^WEFT_AGENT_[A-Z_]+=' | grep -v -E '^WEFT_AGENT_(ETCD_ENDPOINTS|PUBLIC_IP)=' || true
        } >"$WEFT_ROOT/etc/weft/agent.env"
    fi
    if [[ $WEFT_STORE == embedded ]] && (( NODE_INDEX == 1 )); then
        units+=(weft-store.service)
        echo "WEFT_STORE_LISTEN=$NODE_IP:2379" >"$WEFT_ROOT/etc/weft/store.env"
    fi
    "$WEFTCTL" install-units --dest "$WEFT_ROOT/etc/systemd/system" --prefix "$WEFT_PREFIX" \
        --from "$WEFT_SRC/systemd" "${units[@]}"
    "$WEFTCTL" cni install --bin-dir "$WEFT_ROOT/opt/cni/bin" --conf-dir "$WEFT_ROOT/etc/cni/net.d" \
        --subnet-file "$WEFT_ROOT/run/flannel/subnet.env" \
        --data-dir "$WEFT_ROOT/var/lib/cni/networks" --force \
        --cni-version 1.0.0  # what Debian's podman 4.3 (libcni 1.1) accepts; 1.1.0 it refuses
}

# start_service NAME ENVFILE CMD...: systemd on a VM; without it (WEFT_VM=0) run CMD
# in the background with ENVFILE exported, as the unit's EnvironmentFile would.
start_service() {
    local name=$1 envfile=$2
    shift 2
    if [[ $WEFT_VM == 1 ]]; then
        # one daemon-reload for all the units written (seconds each on a slow VM)
        [[ -n ${reloaded:-} ]] || { systemctl daemon-reload; reloaded=1; }
        systemctl enable "$name"
        # --no-block: the first etcd member only becomes ready once a quorum has joined
        systemctl restart --no-block "$name"
    else
        mkdir -p "$WEFT_ROOT/var/log"
        (
            set -a
            # shellcheck source=/dev/null
            . "$envfile"
            set +a
            exec "$@" </dev/null >>"$WEFT_ROOT/var/log/$name.log" 2>&1
        ) &
        echo $! >"$WEFT_ROOT/run/$name.pid"
    fi
    log "started $name"
}

unit_exec() {  # the ExecStart of a rendered unit
    sed -n 's/^ExecStart=//p' "$WEFT_ROOT/etc/systemd/system/$1"
}

wait_for() {  # wait_for WHAT CMD...: retry CMD until it succeeds or WEFT_WAIT runs out
    local what=$1 deadline=$((SECONDS + WEFT_WAIT))
    shift
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS >= deadline )); then
            log "gave up waiting for $what after ${WEFT_WAIT}s"
            return 1
        fi
        sleep 0.5
    done
}

leases() {
    ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" get --prefix --keys-only \
        /coreos.com/network/subnets/ | sed -n 's#^/coreos.com/network/subnets/##p'
}

all_leased() { [[ $(leases | grep -c .) -ge $NODES ]]; }

cross_host_ping() {
    local key subnet own peer ok=0
    own=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WEFT_ROOT/run/flannel/subnet.env")
    log "leases: $(leases | tr '\n' ' ')(own ${own})"
    for key in $(leases); do
        subnet=${key%-*}
        [[ ${own%.*} == "${subnet%.*}" ]] && continue
        if [[ $WEFT_BACKEND != vxlan ]]; then
            # no overlay address on a host until a container exists: show the route instead
            log "route to $key: $(ip route show "${subnet}/${key##*-}")"
            continue
        fi
        peer=${subnet%.*}.0  # a vxlan peer's flannel.<VNI> carries <subnet>.0
        if ping -n -c 3 -i 0.2 -W 2 "$peer"; then
            log "cross-host ping to $peer ($key): ok"
        else
            log "cross-host ping to $peer ($key): FAILED"
            ok=1
        fi
    done
    return $ok
}

main() {
    if [[ $WEFT_VM == 1 ]]; then
        install_packages
        install_weft
    fi
    [[ -x $WEFTCTL ]] || { echo "provision: $WEFTCTL missing (WEFT_PREFIX?)" >&2; exit 2; }
    export PATH="$WEFT_PREFIX/bin:$PATH"
    write_weft_config
    if [[ $WEFT_STORE == embedded ]]; then
        if [[ $WEFT_VM == 1 ]]; then systemctl disable --now etcd || true; fi
        if (( NODE_INDEX == 1 )); then
            # shellcheck disable=SC2046
            start_service weft-store "$WEFT_ROOT/etc/weft/store.env" $(unit_exec weft-store.service)
        fi
    else
        write_etcd_config
        if [[ $WEFT_VM == 1 ]]; then
            start_service etcd "$WEFT_ROOT/etc/default/etcd"
        else
            start_service etcd "$WEFT_ROOT/etc/default/etcd" etcd
        fi
    fi
    # shellcheck disable=SC2046  # ExecStart is a command line: split it on purpose
    start_service flanneld "$WEFT_ROOT/etc/weft/flanneld.env" $(unit_exec flanneld.service)
    # shellcheck disable=SC2046
    start_service dnsd "$WEFT_ROOT/etc/weft/dnsd.env" $(unit_exec dnsd.service)
    if [[ $WEFT_SCHED == 1 ]]; then
        # shellcheck disable=SC2046
        start_service weft-agent "$WEFT_ROOT/etc/weft/agent.env" $(unit_exec weft-agent.service)
    fi
    if (( NODE_INDEX != NODES )); then
        log "done; node $NODES writes the network config and checks the cluster"
        return 0
    fi
    wait_for "the store ($WEFT_STORE)" env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health
    "$WEFTCTL" network set --network "$WEFT_NETWORK" --backend "$WEFT_BACKEND" \
        -etcd-endpoints "$ENDPOINTS"
    log "network config: $("$WEFTCTL" network get -etcd-endpoints "$ENDPOINTS")"
    wait_for "$NODES subnet leases" all_leased
    wait_for "this node's subnet.env" test -s "$WEFT_ROOT/run/flannel/subnet.env"
    cross_host_ping
}

main "$@"
