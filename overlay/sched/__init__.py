"""The scheduler: fleet-style units placed across machines (issue 13).

Pure core: ``model`` (store records), ``keys`` (the ``/weft/sched/`` layout),
``unitfile`` (unit-file parser), ``placement`` (where units go, when lost
machines' units may move). The shell (engine, agent, runners, fencing) and the
fleetctl verbs (``overlay/cli/fleet_cmd.py``) build on them.
"""
