-- The model that wrote each assistant answer: the agent's own, or the fallback that took over.
ALTER TABLE messages ADD COLUMN model text;
