package store

import (
	"time"

	"github.com/chatd/chatd/chat"
)

// messageRow is the gorm model of the messages table. The table itself is
// created by the migrations (migrations/*/00001_create_messages.sql), never
// from this struct; the tags only tell gorm the column names.
type messageRow struct {
	// ID is the message's UUIDv7 string, the primary key. Inserts are
	// idempotent on it.
	ID string `gorm:"column:id;primaryKey"`
	// Room is indexed together with ID: (room, id).
	Room       string    `gorm:"column:room"`
	UserID     string    `gorm:"column:user_id"`
	Body       string    `gorm:"column:body"`
	InsertedAt time.Time `gorm:"column:inserted_at"`
}

// TableName tells gorm the table name.
func (messageRow) TableName() string { return "messages" }

// rowFromMessage converts for storage. InsertedAt keeps microseconds, the
// precision of PostgreSQL's timestamptz, on every dialect, so history reads
// the same whichever database is behind it.
func rowFromMessage(m chat.Message) messageRow {
	return messageRow{
		ID:         m.ID,
		Room:       m.Room,
		UserID:     m.UserID,
		Body:       m.Body,
		InsertedAt: m.InsertedAt.UTC().Truncate(time.Microsecond),
	}
}

func (r messageRow) message() chat.Message {
	return chat.Message{
		ID:         r.ID,
		Room:       r.Room,
		UserID:     r.UserID,
		Body:       r.Body,
		InsertedAt: r.InsertedAt.UTC(),
	}
}
