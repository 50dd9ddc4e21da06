"""Plumbing every stage shares, one small module per topic (as timm's ``timm/utils/``): ``errors`` (exit
codes, ``RunError``), ``cli`` (``run_cli``, child commands), ``files`` (atomic writes), ``figures`` (PNG
bytes), ``log``, ``distributed``, ``seeding``, ``runtime`` (device, AMP), ``runlock``, ``faults``.
Nothing here imports another package of the project."""
