-- A message taken down (the server API's DELETE, a user's delete_msg)
-- keeps its row as a tombstone: deleted_at is set and the body blanked.
-- History queries leave such rows out; the row stays so that a writer
-- still holding the message (its insert is ON CONFLICT DO NOTHING) does not
-- bring it back.

-- +goose Up
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;

-- +goose Down
ALTER TABLE messages DROP COLUMN deleted_at;
