-- Token accounting per identity, agent and UTC day; budget reservations; per-key policies.

CREATE TABLE usage_daily (
  identity            text NOT NULL,
  day                 date NOT NULL,
  agent               text NOT NULL,
  tokens_in           bigint NOT NULL DEFAULT 0,
  tokens_out          bigint NOT NULL DEFAULT 0,
  requests            integer NOT NULL DEFAULT 0,
  estimated_requests  integer NOT NULL DEFAULT 0,   -- turns the upstream reported no usage for (aborted streams)
  PRIMARY KEY (identity, day, agent)
);

-- A turn's worst case, held against its identity's budget for the day until the turn settles it.
-- A crash between the two leaves the row to expire: expired rows count for nothing.
CREATE TABLE budget_reservations (
  id          uuid PRIMARY KEY,
  identity    text NOT NULL,
  day         date NOT NULL,
  tokens      bigint NOT NULL CHECK (tokens >= 0),
  expires_at  timestamptz NOT NULL
);
CREATE INDEX budget_reservations_identity_day ON budget_reservations (identity, day);

-- Per-key policies set by `keys create|update`; NULL keeps the server's default.
ALTER TABLE api_keys
  ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
  ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst > 0),
  ADD COLUMN max_streams integer CHECK (max_streams > 0),
  ADD COLUMN tokens_per_day bigint CHECK (tokens_per_day > 0),
  ADD COLUMN expires_at timestamptz,
  ADD COLUMN agents text[];
