-- A vehicle may belong to one group (a fleet, a branch, a portfolio: the
-- servicing system names it), and a fence may apply to a group instead of a
-- list of vehicles: it then follows the group's members as they change.
ALTER TABLE vehicles ADD COLUMN group_id text COLLATE "C";
