"""flanneld's data paths: the Backend contract, the name table and the vxlan/host-gw/udp backends.

``base`` (contract and the ``BACKENDS`` name table), ``registry`` (build or
validate a backend by name), ``plan`` (pure desired-state and diff), ``netlink`` (the only
pyroute2 importer), ``vxlan``, ``hostgw``, ``udp``. Importing the package is
cheap: nothing here imports pyroute2 until a kernel is actually used.
"""
