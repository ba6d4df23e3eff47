-- One unit's fixes over a day, read from one short range of one index.
--
-- Positions are written in time order, every unit's together, so one unit's day
-- of 10 s fixes lies on 8,640 different heap pages. Out of 100 million rows few
-- of those pages are cached, and reading them one at a time took 0.7 s (p50) to
-- 2.5 s (p99) in bench/track.py. This index holds every column the track query
-- returns, in (unique_id, fix_time) order: the same day is an index-only scan of
-- about 160 pages.
--
-- A btree entry must stay under about 2.7 kB and attributes may be large (raw
-- protocol values), so rows whose attributes take more than 1,000 bytes as JSON
-- text stay out of it and are found through the second, narrow index instead.
-- (The largest attributes any protocol's test vectors produce take under 800;
-- at 1,000, even jsonb that expands fourfold fits, compressed.) TRACK in
-- tracker/store/postgis.py asks both and repeats their WHERE clauses exactly.
--
-- The price: one more index entry per stored row (the store's batch inserts
-- were about a fifth slower in a bench run) and about three quarters of the
-- table's size again on disk. Only pages that VACUUM has marked all-visible are
-- read from the index alone; for the newest rows the heap is visited as before.

CREATE INDEX positions_track_idx ON positions (unique_id, fix_time)
    INCLUDE (vehicle_id, protocol, server_time, lat, lon, valid, speed_kmh, course_deg,
             altitude_m, accuracy_m, satellites, attributes)
    WHERE octet_length(attributes::text) <= 1000;

CREATE INDEX positions_track_large_idx ON positions (unique_id, fix_time)
    WHERE octet_length(attributes::text) > 1000;
