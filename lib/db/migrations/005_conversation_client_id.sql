-- A client's own id for a conversation (the AI SDK's chat id), unique per owner.

ALTER TABLE conversations ADD COLUMN client_id text CHECK (char_length(client_id) BETWEEN 1 AND 128);
CREATE UNIQUE INDEX conversations_owner_client_id ON conversations (owner, client_id) WHERE client_id IS NOT NULL;
