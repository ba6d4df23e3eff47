-- Vehicles, their units, positions and unknown units (PostGIS).
-- Identifiers use the "C" collation: byte order, the same order SQLite gives,
-- so keyset paging behaves alike on both adapters.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE vehicles (
    vehicle_id text COLLATE "C" PRIMARY KEY,
    plate      text,
    vin        text,
    loan_ref   text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE units (
    unique_id      text COLLATE "C" PRIMARY KEY,
    vehicle_id     text COLLATE "C" NOT NULL REFERENCES vehicles ON DELETE CASCADE,
    kind           text NOT NULL DEFAULT 'wired' CHECK (kind IN ('wired', 'battery')),
    silent_after_s integer
);

CREATE INDEX units_vehicle_id_idx ON units (vehicle_id);

-- One partition per calendar month (UTC) of fix_time, named positions_yYYYYmMM,
-- created by the store for the months a batch touches. No default partition:
-- a fix outside every partition is an error, never a silent pile-up.
-- vehicle_id is the unit's vehicle when the position was stored: no foreign key,
-- positions outlive a vehicle's registration.
CREATE TABLE positions (
    unique_id   text COLLATE "C" NOT NULL,
    vehicle_id  text COLLATE "C" NOT NULL,
    protocol    text NOT NULL,
    fix_time    timestamptz NOT NULL,
    server_time timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    geom        geometry(Point, 4326) NOT NULL,
    valid       boolean NOT NULL,
    speed_kmh   real NOT NULL,
    course_deg  real NOT NULL,
    altitude_m  real,
    accuracy_m  real,
    satellites  smallint,
    attributes  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (unique_id, fix_time)
) PARTITION BY RANGE (fix_time);

CREATE INDEX positions_geom_idx ON positions USING gist (geom);

CREATE TABLE unknown_units (
    unique_id   text COLLATE "C" PRIMARY KEY,
    protocol    text NOT NULL,
    remote_addr text NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    count       bigint NOT NULL
);

CREATE INDEX unknown_units_last_seen_idx ON unknown_units (last_seen DESC);
