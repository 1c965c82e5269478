-- Every history query reads one room in id order: Recent, After and Page are
-- index range scans on (room, id).

-- +goose Up
CREATE INDEX messages_room_id_idx ON messages (room, id);

-- +goose Down
DROP INDEX messages_room_id_idx;
