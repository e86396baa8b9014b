"""The three importers under test. Each module's top-level imports are its cold start: the child
process times ``import bench.contenders.<name>`` before calling its ``run(spec)``.

``run`` returns ``{"rows_sent": int, "requests": int}`` as the contender itself saw them; the
parent checks against the stand-in's own record that every row really arrived.
"""
