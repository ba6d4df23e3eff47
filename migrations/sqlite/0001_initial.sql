-- Vehicles, their units, positions and unknown units (SQLite, the embedded store).
-- The PostGIS schema in spirit: times are unix microseconds (UTC), attributes JSON
-- text, no geometry column (spatial work is done in process).

CREATE TABLE vehicles (
    vehicle_id TEXT PRIMARY KEY,
    plate      TEXT,
    vin        TEXT,
    loan_ref   TEXT,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE units (
    unique_id      TEXT PRIMARY KEY,
    vehicle_id     TEXT NOT NULL REFERENCES vehicles ON DELETE CASCADE,
    kind           TEXT NOT NULL DEFAULT 'wired' CHECK (kind IN ('wired', 'battery')),
    silent_after_s INTEGER
) STRICT;

CREATE INDEX units_vehicle_id_idx ON units (vehicle_id);

-- Clustered on (unique_id, fix_time): one unit's track and its newest fix are
-- range reads of the primary key.
CREATE TABLE positions (
    unique_id   TEXT NOT NULL,
    vehicle_id  TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    fix_time    INTEGER NOT NULL,
    server_time INTEGER NOT NULL,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL,
    valid       INTEGER NOT NULL,
    speed_kmh   REAL NOT NULL,
    course_deg  REAL NOT NULL,
    altitude_m  REAL,
    accuracy_m  REAL,
    satellites  INTEGER,
    attributes  TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (unique_id, fix_time)
) STRICT, WITHOUT ROWID;

CREATE TABLE unknown_units (
    unique_id   TEXT PRIMARY KEY,
    protocol    TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    count       INTEGER NOT NULL
) STRICT;

CREATE INDEX unknown_units_last_seen_idx ON unknown_units (last_seen DESC);
