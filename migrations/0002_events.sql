-- Unit liveness, events (the feed), geofences and webhooks with their outbox (PostGIS).

-- When each unit last said anything: silence detection survives a restart.
CREATE TABLE unit_seen (
    unique_id text COLLATE "C" PRIMARY KEY,
    last_seen timestamptz NOT NULL
);

-- seq is the feed cursor. The store serialises insert_events (an advisory lock
-- held to commit), so a reader never sees seq n+1 before seq n is committed.
-- vehicle_id has no foreign key: events outlive a vehicle's registration.
CREATE TABLE events (
    seq         bigserial PRIMARY KEY,
    id          text COLLATE "C" NOT NULL UNIQUE,
    type        text COLLATE "C" NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    vehicle_id  text COLLATE "C" NOT NULL,
    unique_id   text COLLATE "C",
    fix_time    timestamptz,
    detected_at timestamptz NOT NULL,
    lat         double precision,
    lon         double precision,
    geom        geometry(Point, 4326),  -- set when lat and lon are
    details     jsonb NOT NULL DEFAULT '{}',
    late        boolean NOT NULL DEFAULT false,
    alert_key   text COLLATE "C",
    clears      boolean NOT NULL DEFAULT false
);

CREATE INDEX events_vehicle_seq_idx ON events (vehicle_id, seq);
CREATE INDEX events_type_seq_idx ON events (type, seq);
CREATE INDEX events_detected_at_idx ON events (detected_at);
-- open_alerts: the newest event of each (vehicle_id, alert_key)
CREATE INDEX events_alert_idx ON events (vehicle_id, alert_key, seq) WHERE alert_key IS NOT NULL;

-- geom is derived from the GeoJSON (made valid if it was not); geojson is what
-- was put, returned as is.
CREATE TABLE geofences (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    category    text NOT NULL,
    geom        geometry(Geometry, 4326) NOT NULL,
    geojson     jsonb NOT NULL,
    vehicle_ids text[],  -- NULL: every vehicle
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL
);

CREATE INDEX geofences_geom_idx ON geofences USING gist (geom);

CREATE TABLE webhooks (
    id          text COLLATE "C" PRIMARY KEY,
    url         text NOT NULL,
    secret      text NOT NULL,
    event_types text[],  -- NULL: every type
    created_at  timestamptz NOT NULL
);

-- The outbox: one row per (event, webhook), queued with the event.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       text COLLATE "C" NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_seq        bigint NOT NULL REFERENCES events (seq),
    status           text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    last_error       text,
    last_status_code integer,
    delivered_at     timestamptz
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
