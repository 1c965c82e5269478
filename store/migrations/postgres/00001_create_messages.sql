-- Messages as broadcast. id is the UUIDv7 string chosen by the node that
-- accepted the message; COLLATE "C" makes text order byte order, which for
-- UUIDv7 strings is time order whatever the database's default collation.

-- +goose Up
CREATE TABLE messages (
    id          text COLLATE "C" PRIMARY KEY,
    room        text COLLATE "C" NOT NULL,
    user_id     text NOT NULL,
    body        text NOT NULL,
    inserted_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE messages;
