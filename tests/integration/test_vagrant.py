"""vagrant/: the Vagrantfile validates, provision.sh passes shellcheck, and its non-VM steps work.

The last test runs provision.sh with ``WEFT_VM=0`` on three testbed hosts at
once, exactly as Vagrant would on three VMs, minus apt/pip/systemctl: a real
3-member etcd cluster across the hosts, flanneld and dnsd started from the
rendered units with their EnvironmentFiles, the CNI plugin installed, the
network config written and a cross-host ping printed by the last node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlay.testbed import open_testbed

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
PREFIX = Path(sys.executable).absolute().parent.parent


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (Debian package {package}; make deps installs it)")


def test_vagrantfile_ruby_syntax() -> None:
    _need("ruby", "ruby")
    proc = subprocess.run(["ruby", "-c", str(VAGRANT / "Vagrantfile")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_vagrant_validate(tmp_path: Path) -> None:
    _need("vagrant", "vagrant")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"))
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    for node in ("weft1", "weft2", "weft3"):
        assert node in proc.stdout


@pytest.mark.parametrize("script", ["provision.sh", "qemu-cluster.sh", "vm-checks.sh",
                                    "cni-container.sh", "vm/customize.sh",
                                    "vagrant-cluster.sh", "lib.sh"])
def test_vagrant_scripts_pass_shellcheck(script: str) -> None:
    _need("shellcheck", "shellcheck")
    proc = subprocess.run(["shellcheck", "-x", str(VAGRANT / script)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_qemu_cluster_image_bakes_every_package_provision_installs() -> None:
    # the VMs have no network: provision.sh must find every package already there
    proc = subprocess.run(["bash", "-c", f"source <(sed -n '/^image_packages()/,/^}}/p; "
                           f"/^VM_PACKAGES=/,/\"$/p' {VAGRANT / 'qemu-cluster.sh'}); "
                           f"HERE={VAGRANT}; image_packages"],
                          capture_output=True, text=True, timeout=30)
    baked = set(proc.stdout.split())
    wanted = (VAGRANT / "provision.sh").read_text().split('WEFT_PACKAGES="', 1)[1].split('"')[0]
    assert baked >= set(wanted.split()) and "systemd" in baked, proc.stderr
    assert {"openssh-server", "sudo"} <= baked  # the Vagrant box is the same image


def test_vagrant_validate_with_the_libvirt_settings_of_vagrant_cluster(tmp_path: Path) -> None:
    _need("vagrant", "vagrant")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"), WEFT_PRIVATE_NET="198.18.2",
               WEFT_LIBVIRT_DRIVER="qemu", WEFT_LIBVIRT_MGMT_NET="198.18.1.0/24",
               WEFT_LIBVIRT_KERNEL="/k", WEFT_LIBVIRT_INITRD="/i",
               WEFT_LIBVIRT_CMDLINE="root=/dev/vda",
               WEFT_LIBVIRT_CONSOLE_DIR=str(tmp_path), WEFT_WHEELHOUSE=str(tmp_path),
               WEFT_STORE="embedded", WEFT_AGENT_TTL="15s")
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vagrant_cluster_refuses_commands_on_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    env = dict(os.environ, WEFT_VM_STATE=str(tmp_path / "none"))
    proc = subprocess.run([str(VAGRANT / "vagrant-cluster.sh"), "exec", "vm2", "--", "true"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0 and "is not up" in proc.stderr, proc.stderr
    down = subprocess.run([str(VAGRANT / "vagrant-cluster.sh"), "down"], capture_output=True,
                          text=True, timeout=30, env=env)
    assert down.returncode == 0 and "is not up" in down.stderr, down.stderr


def test_qemu_cluster_refuses_commands_on_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    env = dict(os.environ, WEFT_VM_STATE=str(tmp_path / "none"))
    proc = subprocess.run([str(VAGRANT / "qemu-cluster.sh"), "exec", "vm2", "--", "true"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0 and "is not up" in proc.stderr, proc.stderr
    usage = subprocess.run([str(VAGRANT / "qemu-cluster.sh")], capture_output=True, text=True,
                           timeout=30)
    assert usage.returncode == 2 and "qemu-cluster.sh up" in usage.stdout, usage.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({}, "NODE_INDEX", id="no-index"),
        pytest.param({"NODE_INDEX": "4", "NODE_IPS": "198.18.0.11,198.18.0.12"},
                     "outside 1..2", id="index-out-of-range"),
    ],
)
def test_provision_rejects_bad_settings(env: dict[str, str], message: str) -> None:
    proc = subprocess.run(["bash", str(VAGRANT / "provision.sh")], capture_output=True,
                          text=True, timeout=30, env={"PATH": os.environ["PATH"], **env})
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.root
@pytest.mark.etcd
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_provision_non_vm_steps_on_three_testbed_hosts(tmp_path: Path) -> None:
    for module in ("overlay/cli/flanneld.py", "dnsd/cli.py", "cni/main.py"):
        if not (REPO / module).exists():
            pytest.skip(f"{module} is not in this build yet")
    with open_testbed(3) as tb:
        ips = ",".join(str(h.ip) for h in tb.hosts.values())
        procs = []
        for i, host in enumerate(tb.hosts.values(), start=1):
            env = dict(os.environ, NODE_INDEX=str(i), NODE_IPS=ips, WEFT_SRC=str(REPO),
                       WEFT_PREFIX=str(PREFIX), WEFT_VM="0", WEFT_ROOT=str(tmp_path / host.name),
                       WEFT_WAIT="60")
            procs.append(subprocess.Popen(
                host.exec_argv(["bash", str(VAGRANT / "provision.sh")]), env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = []
        for p in procs:
            out, _ = p.communicate(timeout=150)
            outputs.append(out)
        logs = "\n".join(f"--- {h}\n{o}" for h, o in zip(tb.hosts, outputs, strict=True))
        for h in tb.hosts:
            for name in ("etcd", "flanneld", "dnsd"):
                f = tmp_path / h / "var" / "log" / f"{name}.log"
                if f.exists():
                    logs += f"\n--- {h} {name}.log (tail)\n" + "\n".join(
                        f.read_text(errors="replace").splitlines()[-15:])
        assert [p.returncode for p in procs] == [0, 0, 0], logs
        last = outputs[-1]
        assert last.count("cross-host ping to 10.244.") == 2 and "FAILED" not in last, logs
        assert "3 received, 0% packet loss" in last, logs
        for h in tb.hosts:
            root = tmp_path / h
            units = sorted(p.name for p in (root / "etc/systemd/system").iterdir())
            assert units == ["dnsd.service", "flanneld.service"]
            assert f"ExecStart={PREFIX}/bin/flanneld" in \
                (root / "etc/systemd/system/flanneld.service").read_text()
            assert (root / "opt/cni/bin/weft").exists()
            assert (root / "etc/cni/net.d/10-weft.conflist").exists()
            assert "FLANNEL_SUBNET=10.244." in (root / "run/flannel/subnet.env").read_text()
            # dnsd answers on the host's address
            dig = tb.exec(tb.hosts[h].netns, ["dig", f"@{tb.hosts[h].ip}", "skydns.local", "SOA",
                                               "+short", "+time=2", "+tries=2"], check=False)
            assert dig.returncode == 0, dig.stdout + dig.stderr


def test_vm_agent_runs_commands_dropped_into_its_channel(tmp_path: Path) -> None:
    """The guest side of `qemu-cluster.sh exec`: claim <id>.cmd, output to .out, rc last."""
    chan = tmp_path / "chan"
    agent = subprocess.Popen([sys.executable, str(VAGRANT / "vm" / "weft-vm-agent")],
                             env=dict(os.environ, WEFT_VM_CHAN=str(chan)))
    try:
        deadline = time.monotonic() + 30
        while not (chan / "ready").exists():
            assert time.monotonic() < deadline and agent.poll() is None, "agent not ready"
            time.sleep(0.05)
        jobs = {"a": "echo out; echo err >&2; exit 3\n", "b": "sleep 0.5; printf '%s' done\n"}
        for job, script in jobs.items():
            (chan / f"{job}.cmd.tmp").write_text(script)
            (chan / f"{job}.cmd.tmp").rename(chan / f"{job}.cmd")
        while not all((chan / f"{job}.rc").exists() for job in jobs):
            assert time.monotonic() < deadline, sorted(p.name for p in chan.iterdir())
            time.sleep(0.05)
        assert (chan / "a.rc").read_text() == "3\n"
        assert (chan / "a.out").read_text() == "out\nerr\n"
        assert (chan / "b.rc").read_text() == "0\n" and (chan / "b.out").read_text() == "done"
        assert not list(chan.glob("*.cmd"))  # claimed (renamed to .run), never run twice
    finally:
        agent.kill()
        agent.wait()


def test_root_unchanged_says_whether_two_snapshots_differ() -> None:
    # lib.sh's before/after check, shared by qemu-cluster.sh and vagrant-cluster.sh
    proc = subprocess.run(["bash", "-c", f'log() {{ echo "$*"; }}; . {VAGRANT / "lib.sh"}; '
                           'root_unchanged "$(printf "== link\\nlo")" "$(printf "== link\\nlo")"; '
                           'echo "same rc=$?"; root_unchanged "== link" "$(printf "== link\\nx")"; '
                           'echo "changed rc=$?"'],
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.splitlines() == [
        "ok: root namespace links, addresses, routes and nft ruleset unchanged", "same rc=0",
        "FAIL: the root namespace changed:", "changed rc=1"]
    assert "> x" in proc.stderr
