-- Access control, share links, the audit log and loan states (SQLite). Times
-- are unix microseconds (UTC), JSON values JSON text.

-- loan_state_since: when loan_state last changed, set by the store. Vehicles
-- stored before this migration keep NULL: when their loan became 'current' is
-- unknown.
ALTER TABLE vehicles ADD COLUMN loan_state TEXT NOT NULL DEFAULT 'current'
    CHECK (loan_state IN ('current', 'delinquent', 'recovery', 'closed'));
ALTER TABLE vehicles ADD COLUMN loan_state_since INTEGER;

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'servicing', 'recovery', 'viewer')),
    created_at INTEGER NOT NULL
) STRICT;

-- Only the SHA-256 hex of a key is kept; UNIQUE indexes the lookup.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users ON DELETE CASCADE,
    key_hash   TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at);

CREATE TABLE vehicle_assignees (
    vehicle_id TEXT NOT NULL REFERENCES vehicles ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users ON DELETE CASCADE,
    PRIMARY KEY (vehicle_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX vehicle_assignees_user_idx ON vehicle_assignees (user_id);

-- No foreign key on vehicle_id (nor created_by): a share of a deleted vehicle
-- simply shows nothing, and the record of who shared what stays.
CREATE TABLE shares (
    id         TEXT PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    history_h  REAL NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE INDEX shares_created_idx ON shares (created_at DESC, id DESC);
CREATE INDEX shares_vehicle_idx ON shares (vehicle_id, created_at DESC, id DESC);

-- AUTOINCREMENT: seq, the paging cursor, is never reused.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    vehicle_id  TEXT,
    remote_addr TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}'
) STRICT;

CREATE INDEX audit_log_actor_idx ON audit_log (actor, seq);
CREATE INDEX audit_log_vehicle_idx ON audit_log (vehicle_id, seq);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- Append-only: every UPDATE or DELETE of a row is refused.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;
