-- Access control, share links, the audit log and loan states (PostGIS).

-- A vehicle's loan state. loan_state_since is when it last changed: set by the
-- store when a vehicle is created or its state changes. Vehicles stored before
-- this migration keep NULL there: when their loan became 'current' is unknown.
ALTER TABLE vehicles
    ADD COLUMN loan_state text NOT NULL DEFAULT 'current'
        CHECK (loan_state IN ('current', 'delinquent', 'recovery', 'closed')),
    ADD COLUMN loan_state_since timestamptz;

CREATE TABLE users (
    id         text COLLATE "C" PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'servicing', 'recovery', 'viewer')),
    created_at timestamptz NOT NULL
);

-- Only the SHA-256 hex of a key is kept. key_hash is UNIQUE: its index is the
-- lookup of every authenticated request.
CREATE TABLE api_keys (
    id         text COLLATE "C" PRIMARY KEY,
    user_id    text COLLATE "C" NOT NULL REFERENCES users ON DELETE CASCADE,
    key_hash   text COLLATE "C" NOT NULL UNIQUE,
    prefix     text NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at);

-- The recovery agents assigned to a vehicle.
CREATE TABLE vehicle_assignees (
    vehicle_id text COLLATE "C" NOT NULL REFERENCES vehicles ON DELETE CASCADE,
    user_id    text COLLATE "C" NOT NULL REFERENCES users ON DELETE CASCADE,
    PRIMARY KEY (vehicle_id, user_id)
);

-- the vehicles of one agent; also what a user's delete cascades through
CREATE INDEX vehicle_assignees_user_idx ON vehicle_assignees (user_id);

-- Share links. vehicle_id has no foreign key: a share of a deleted vehicle
-- simply shows nothing, and the record of who shared what stays. created_by has
-- none either, for the same reason.
CREATE TABLE shares (
    id         text COLLATE "C" PRIMARY KEY,
    vehicle_id text COLLATE "C" NOT NULL,
    token_hash text COLLATE "C" NOT NULL UNIQUE,
    created_by text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    history_h  double precision NOT NULL,
    revoked_at timestamptz
);

CREATE INDEX shares_created_idx ON shares (created_at DESC, id DESC);
CREATE INDEX shares_vehicle_idx ON shares (vehicle_id, created_at DESC, id DESC);

-- Who read or shared a borrower's movements. seq orders it (newest first) and
-- is the paging cursor. vehicle_id has no foreign key: the log outlives vehicles.
CREATE TABLE audit_log (
    seq         bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor       text COLLATE "C" NOT NULL,
    action      text COLLATE "C" NOT NULL,
    vehicle_id  text COLLATE "C",
    remote_addr text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_actor_idx ON audit_log (actor, seq);
CREATE INDEX audit_log_vehicle_idx ON audit_log (vehicle_id, seq);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- Append-only. A trigger and not a rule: a rule can only rewrite the statement
-- (DO INSTEAD NOTHING makes an UPDATE or DELETE silently do nothing, and the
-- caller believes it worked), while a trigger makes the attempt fail loudly.
-- Nor is REVOKE enough: the server's role owns the table, and an owner can
-- grant itself back whatever was revoked.
-- Statement-level, so it fires even when no row matches, and TRUNCATE (which
-- skips row triggers) is refused too. It guards against bugs and careless
-- hands, not against a superuser or the owner who drops the trigger first.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
