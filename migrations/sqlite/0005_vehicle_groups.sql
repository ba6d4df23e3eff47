-- A vehicle's group: see ../0009_vehicle_groups.sql.
ALTER TABLE vehicles ADD COLUMN group_id TEXT;
