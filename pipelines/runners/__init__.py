"""A real Flink or Spark cluster on this machine, for trying ``ib-ingest`` before a real one.

``ib-runner start flink|spark --dir D`` provisions what is missing
(:mod:`.provision`: the engine, Beam's job server, Beam's SDK boot binary),
starts the cluster and Beam's job server as separate processes
(:mod:`.cluster`) and prints the ``ib-ingest`` flags that send a job there.
``ib-runner stop --dir D`` stops all of it. :mod:`.metrics` reads a running
job's counters from the engine, so ``ib-ingest``'s progress line is true on
these runners too.
"""
