-- Monthly partitions of positions whose indexes were rebuilt once their month
-- was over. Filled as fixes arrive, every unit's in turn, an index holds a
-- unit's day on half-full pages scattered through its file; rebuilt, on
-- consecutive pages, which cold reads take in far fewer, larger reads: on 5M
-- rows, 100 one-day reads with PostgreSQL restarted and the OS cache dropped
-- took p50 / p99 39.4 / 51.8 ms, and 24.9 / 38.8 after a REINDEX (README,
-- Performance). A month takes no writes once over but late fixes: once is enough.
-- tracker/store/postgis_maintenance.py does it, a partition at a time, from the
-- retention run.
CREATE TABLE reindexed_partitions (
    name         text PRIMARY KEY,
    reindexed_at timestamptz NOT NULL
);
