"""The atomic-commit simulator (2PC, 3PC): scenario, hooks, cluster, runs, stepped driving.

Import from `dtxn.runtime.sim`, which re-exports what callers use.
"""
