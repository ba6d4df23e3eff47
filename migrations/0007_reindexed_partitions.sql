-- Monthly partitions of positions whose indexes were rebuilt once their month
-- was over. Filled as fixes arrive, every unit's in turn, an index holds a
-- unit's day on half-full pages scattered through its file; rebuilt, on
-- consecutive pages, which cold reads take in far fewer, larger reads: a day's
-- store read on 5M rows, PostgreSQL restarted and the OS cache dropped, p50 /
-- p99 35.6 / 46.1 ms, and 18.8 / 21.8 once rebuilt (bench/track.py
-- --index-as-loaded --cold, then with --reindex; README, Performance).
-- A month takes no writes once over but late fixes: once is enough.
-- tracker/store/postgis_maintenance.py does it, a partition at a time, from the
-- retention run.
CREATE TABLE reindexed_partitions (
    name         text PRIMARY KEY,
    reindexed_at timestamptz NOT NULL
);
