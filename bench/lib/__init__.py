"""Parts the benchmarks share, one thing per module: the Celery clients and their round trips
(clients), CPU accounting by process (cpu), counting the commands Redis receives (redis_commands),
the worker processes a benchmark starts (workers) and the placement worker's section timers
(worker_profile)."""
