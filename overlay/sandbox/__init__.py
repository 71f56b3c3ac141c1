"""The sandbox: a whole weft cluster (store, flanneld, dnsd, CNI containers) in network namespaces.

``model`` is the pure part (options, the daemon table, the state file, the
tables printed to the user); ``cluster`` runs it (namespaces, processes,
probes); ``cli`` is ``weftctl sandbox up|status|exec|logs|kill|down``.
"""
