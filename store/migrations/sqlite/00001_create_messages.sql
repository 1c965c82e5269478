-- Messages as broadcast. id is the UUIDv7 string chosen by the server; TEXT
-- compares bytewise (BINARY collation), which for UUIDv7 strings is time
-- order.

-- +goose Up
CREATE TABLE messages (
    id          TEXT NOT NULL PRIMARY KEY,
    room        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    body        TEXT NOT NULL,
    inserted_at DATETIME NOT NULL
);

-- +goose Down
DROP TABLE messages;
