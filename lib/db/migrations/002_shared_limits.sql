-- Limits shared by several instances: rate-limit leases (RATE_LIMIT_STORE=postgres-leased) and
-- stream leases (one row per live answer, for MAX_CONCURRENT_STREAMS_PER_KEY across instances).

-- The tokens the latest lease took from a bucket, so the statement that took them can return the
-- number (PostgreSQL 15 cannot return a row's values from before an upsert). Constant default:
-- adding the column rewrites nothing.
ALTER TABLE rate_limit_buckets ADD COLUMN granted double precision NOT NULL DEFAULT 0;

-- A row counts while expires_at is ahead of the database clock. Its instance renews all of its
-- rows together; the rows of an instance that died (or lost the database) stop counting when
-- they expire. Unlogged like the buckets: after a database crash the leases start empty.
CREATE UNLOGGED TABLE stream_leases (
  id          uuid PRIMARY KEY,
  key         text NOT NULL,                       -- identity id: key:<uuid> or jwt:<sub>
  instance    uuid NOT NULL,                       -- random per process start
  expires_at  timestamptz NOT NULL
);
CREATE INDEX stream_leases_key ON stream_leases (key, expires_at);
CREATE INDEX stream_leases_instance ON stream_leases (instance);
CREATE INDEX stream_leases_expires ON stream_leases (expires_at);
