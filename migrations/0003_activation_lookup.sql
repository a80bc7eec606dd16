-- An instance's latest activation on a license (activate, deactivate) is looked up by
-- (license_id, instance_id) over all of its rows, deactivated ones included; the only index on
-- that pair is partial (active rows), so the lookup scanned the whole table, growing with every
-- activation of every brand (docs/benchmarks.md: 1.4 ms per call at 15,000 rows).
CREATE INDEX activations_by_license_instance ON activations (license_id, instance_id);
