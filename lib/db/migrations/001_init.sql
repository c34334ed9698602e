-- Initial schema: API keys, conversations, messages, rate-limit buckets.

CREATE TABLE api_keys (
  id          uuid PRIMARY KEY,
  name        text NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 100),
  prefix      text NOT NULL,                       -- first characters of the key, for display only
  key_hash    bytea NOT NULL UNIQUE,               -- SHA-256 of the whole key; the key itself is never stored
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);

CREATE TABLE conversations (
  id          uuid PRIMARY KEY,
  owner       text NOT NULL,                       -- identity id: key:<uuid> or jwt:<sub>
  agent       text NOT NULL,
  title       text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_owner_updated ON conversations (owner, updated_at DESC, id DESC);

CREATE TABLE messages (
  id                 uuid PRIMARY KEY,
  conversation_id    uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  seq                bigint GENERATED ALWAYS AS IDENTITY,
  role               text NOT NULL CHECK (role IN ('user', 'assistant')),
  content            text NOT NULL,
  status             text NOT NULL CHECK (status IN ('complete', 'incomplete', 'error')),
  finish_reason      text,
  prompt_tokens      integer,
  completion_tokens  integer,
  error_code         text,
  created_at         timestamptz NOT NULL DEFAULT now(),
  completed_at       timestamptz
);
CREATE INDEX messages_conversation_seq ON messages (conversation_id, seq);

CREATE UNLOGGED TABLE rate_limit_buckets (
  key         text PRIMARY KEY,
  tokens      double precision NOT NULL,
  updated_at  timestamptz NOT NULL
);
CREATE INDEX rate_limit_buckets_updated ON rate_limit_buckets (updated_at);
