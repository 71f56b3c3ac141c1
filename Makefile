# weft: `make demo` shows a whole cluster on this machine, `make test` runs every tier.
# Both install what they need (Debian packages via apt-get, Python via uv from uv.lock)
# and are safe to run again.

SHELL := /bin/bash
PY := .venv/bin/python
APT_PACKAGES := etcd-server etcd-client iproute2 nftables bind9-dnsutils iperf3 dnsperf \
	containernetworking-plugins knot tcpdump iputils-ping procps psmisc kmod \
	shellcheck ruby systemd
PYTEST_ARGS ?=

.PHONY: deps apt python lint test demo bench clean

deps: apt python

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

python:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@uv sync --frozen --quiet

lint: python
	uv run --frozen ruff check overlay dnsd cni tests bench
	uv run --frozen mypy

test: deps lint
	uv run --frozen pytest $(PYTEST_ARGS)

demo: deps
	uv run --frozen weftctl sandbox up

bench: deps
	@for b in bench/*.py; do echo "== $$b"; uv run --frozen python $$b || exit 1; done

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
