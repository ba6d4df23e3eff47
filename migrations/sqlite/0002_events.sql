-- Unit liveness, events (the feed), geofences and webhooks with their outbox
-- (SQLite). Times are unix microseconds (UTC), JSON values JSON text, booleans 0/1.

CREATE TABLE unit_seen (
    unique_id TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL
) STRICT;

-- AUTOINCREMENT: seq is never reused, even after the newest rows are deleted.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    vehicle_id  TEXT NOT NULL,
    unique_id   TEXT,
    fix_time    INTEGER,
    detected_at INTEGER NOT NULL,
    lat         REAL,
    lon         REAL,
    details     TEXT NOT NULL DEFAULT '{}',
    late        INTEGER NOT NULL DEFAULT 0,
    alert_key   TEXT,
    clears      INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX events_vehicle_seq_idx ON events (vehicle_id, seq);
CREATE INDEX events_type_seq_idx ON events (type, seq);
CREATE INDEX events_detected_at_idx ON events (detected_at);
CREATE INDEX events_alert_idx ON events (vehicle_id, alert_key, seq) WHERE alert_key IS NOT NULL;

CREATE TABLE geofences (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    category    TEXT NOT NULL,
    geometry    TEXT NOT NULL,  -- GeoJSON
    vehicle_ids TEXT,           -- JSON array; NULL: every vehicle
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    event_types TEXT,  -- JSON array; NULL: every type
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id       TEXT NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_seq        INTEGER NOT NULL REFERENCES events (seq),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    last_error       TEXT,
    last_status_code INTEGER,
    delivered_at     INTEGER
) STRICT;

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
