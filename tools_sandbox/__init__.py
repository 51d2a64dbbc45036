"""Isolated execution of model-written code (bubblewrap, cgroups, rlimits).

Not built yet: the sandbox, sessions and the warm pool are tracked in their own issue. Nothing
in the framework runs model output until it exists.
"""
