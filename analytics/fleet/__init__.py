"""The calc fleet of a region (docs/analytics.md, "Processes"): the processes that keep every
assignment's intervals current, and what they share.

- ``leases``: shard leases in Redis and the fences in the datacenter databases;
- ``debounce``: the debounce timers (what is due, offered, claimed);
- ``cache``: a worker's local cache of its shards' messages and intervals;
- ``changes``: draining the change log into the caches, the pending ranges and the timers;
- ``requests``: the durable recalculation requests of assignments;
- ``batches``: the batch protocol the pump and the workers share (limits, busy marks, sending);
- ``worker``: what a worker holds (leases, caches) and the steps it delegates to the modules
  above and to ``analytics.calculation`` (the recalculation and the storing of its results);
- ``purge``: interval retention and the cache's message retention;
- ``pump``: the pump process (due timers into batches, reconciliation, purges);
- ``tasks`` and ``process``: the Celery tasks and the calc worker process around a worker;
- ``status``: the one reader of the fleet's state (the status page and ``/metrics``).

The web side of the contract (queues, task names, payloads, Redis keys, wake-ups) is
``flespi_site.fleet``, which imports none of this.
"""
