-- Reads of many vehicles in one audit entry (GET /api/v1/locations, a live
-- subscription) name them in details.vehicles: a list of ids, or "*" for every
-- vehicle the reader may see. GET /api/v1/audit?vehicle_id= finds those too
-- (`details -> 'vehicles' ? id`, or ? '*'), through this index.
CREATE INDEX audit_log_vehicles_idx ON audit_log USING gin ((details -> 'vehicles'));
