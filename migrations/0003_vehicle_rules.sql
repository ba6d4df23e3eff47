-- Per-vehicle rule thresholds (PostGIS): RuleSettings field name -> value,
-- overriding the global [rules] settings for that vehicle. '{}': none.
ALTER TABLE vehicles ADD COLUMN rules jsonb NOT NULL DEFAULT '{}';
