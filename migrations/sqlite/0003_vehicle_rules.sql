-- Per-vehicle rule thresholds (SQLite): RuleSettings field name -> value, as
-- JSON text, overriding the global [rules] settings for that vehicle. '{}': none.
ALTER TABLE vehicles ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';
