"""The benchmark suite: ``python benchmarks/run.py`` (see run.py).

A package so that each worker process can run ``python -m benchmarks.worker``
with ``benchmarks.settings`` as its Django settings; not installed with
djpoolapp (setup.cfg excludes it).
"""
