# weft: `make demo` shows a whole cluster on this machine, `make test` runs every tier.
# Both install what they need (Debian packages via apt-get, Python via uv from uv.lock)
# and are safe to run again.

SHELL := /bin/bash
PY := .venv/bin/python
# uv from PATH, else the one pip installs into python3 (its shim may not be on PATH yet)
UV = $$(command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)
APT_PACKAGES := etcd-server etcd-client iproute2 nftables iptables bind9-dnsutils iperf3 dnsperf \
	containernetworking-plugins knot tcpdump iputils-ping procps psmisc kmod \
	shellcheck ruby systemd vagrant make
# only for make vm-test (three QEMU VMs; not part of make test)
VM_APT_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs
# only for make vagrant-test: Vagrant driving libvirt (started by hand inside a namespace)
VAGRANT_APT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	dnsmasq-base
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: deps apt python lint test demo bench clean vm-deps vm-test vagrant-deps vagrant-test

deps: apt python

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

python:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@$(UV) sync --frozen --quiet

lint: python
	$(PY) -m ruff check overlay dnsd cni tests bench
	$(PY) -m mypy

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# three Debian VMs under QEMU (TCG) with weft's units under systemd, checked and torn
# down; the image is cached in /var/cache/weft-vm ($$WEFT_VM_CACHE). Not part of make test.
vm-deps: deps
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(VM_APT_PACKAGES)"

vm-test: vm-deps
	vagrant/qemu-cluster.sh test

# the same checks through Vagrant: vagrant-libvirt and a libvirtd of its own inside a
# namespace, three VMs from a box made of the vm-test image. Not part of make test nor CI.
vagrant-deps: vm-deps
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(VAGRANT_APT_PACKAGES)"

vagrant-test: vagrant-deps
	vagrant/vagrant-cluster.sh test

# make demo DEMO_ARGS="--hosts 5 --backend host-gw"; the state dir follows $WEFT_SANDBOX_DIR
# (run again while a sandbox is up: says so and exits 0, changing nothing). It ends by
# killing the host of the demo unit web.service to show the unit move (sandbox failover).
demo: deps
	@rc=0; .venv/bin/weftctl sandbox up $(DEMO_ARGS) || rc=$$?; \
	if [ $$rc -eq 3 ]; then \
		echo "make demo: the sandbox is already up; nothing changed."; \
		echo "  weftctl sandbox status shows it, weftctl sandbox down removes it."; \
		exit 0; \
	fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	.venv/bin/weftctl sandbox failover

bench: deps
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
