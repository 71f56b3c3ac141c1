"""dnsd: SkyDNS-compatible service DNS answered from the cluster store's /skydns tree.

Modules: ``records`` (SkyDNS JSON), ``keys`` (name <-> key), ``index`` (the
watch-fed in-memory tree), ``engine`` (the answer rules, pure), ``message`` and
``wire`` (DNS values and wire format, precomputed answers), ``server`` (UDP/TCP
front end), ``batchio`` (recvmmsg/sendmmsg), ``feed`` (store -> index),
``forward`` (opt-in recursion), ``metrics``, ``config`` (``DnsdConfig`` and its
flags), ``skyconfig`` (the ``<prefix>/config`` key), ``daemon`` (the running pieces),
``cli`` (``main`` only) and ``admin`` (``weftctl dns``).

Quick start::

    dnsd -addr 127.0.0.1:5353 -domain skydns.local. -etcd-endpoints http://127.0.0.1:2379
    weftctl dns set x1.web.skydns.local --host 10.0.0.1 --port 80
    dig -p 5353 @127.0.0.1 web.skydns.local SRV
"""
