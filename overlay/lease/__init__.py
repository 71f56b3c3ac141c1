"""Subnet leases: the flannel model, the pure allocator and watcher, and the store-side manager."""
