package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/chatd/chatd/chat"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Page sizes of the HTTP history API.
const (
	// DefaultPageLimit is the page size when PageQuery.Limit is zero.
	DefaultPageLimit = 50
	// MaxPageLimit caps PageQuery.Limit.
	MaxPageLimit = 200
)

// History reads stored messages. It implements chat.History, and Page for
// the HTTP history API. It is safe for concurrent use.
//
// Only messages the Writer has already written are visible: the writer is
// asynchronous, so the newest messages of a room (usually the last few
// milliseconds' worth, more while the database is slow or down) may be
// missing from every result.
type History struct {
	db *DB
}

var (
	_ chat.History = (*History)(nil)
	_ chat.Eraser  = (*History)(nil)
)

// live selects the rows of messages not taken down.
const live = "deleted_at IS NULL"

// NewHistory returns the history of db's messages table.
func NewHistory(db *DB) *History { return &History{db: db} }

// Recent returns up to n of the newest stored messages of room, oldest
// first. n <= 0 returns none. Callers bound n (the join option allows 200).
func (h *History) Recent(ctx context.Context, room string, n int) ([]chat.Message, error) {
	if n <= 0 {
		return []chat.Message{}, nil
	}
	var rows []messageRow
	err := h.db.gorm.WithContext(ctx).
		Where("room = ?", room).
		Where(live).
		Order("id DESC").
		Limit(n).
		Find(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("store: recent messages of %q: %w", room, err)
	}
	slices.Reverse(rows)
	return messages(rows), nil
}

// After returns stored messages of room with an id greater than afterID,
// oldest first, at most limit of them (limit <= 0 returns none, but still
// reports found). found reports whether afterID itself is stored in room,
// taken down or not; when it is not (an unknown id, another room's, one not
// yet written) the messages are still those after it, but the caller
// cannot know what it missed. Messages taken down are left out.
func (h *History) After(ctx context.Context, room, afterID string, limit int) (msgs []chat.Message, found bool, err error) {
	var probe messageRow
	err = h.db.gorm.WithContext(ctx).
		Select("id").
		Where("room = ? AND id = ?", room, afterID).
		Take(&probe).Error
	switch {
	case err == nil:
		found = true
	case errors.Is(err, gorm.ErrRecordNotFound):
		found = false
	default:
		return nil, false, fmt.Errorf("store: messages of %q after %q: %w", room, afterID, err)
	}
	if limit <= 0 {
		return []chat.Message{}, found, nil
	}
	var rows []messageRow
	err = h.db.gorm.WithContext(ctx).
		Where("room = ? AND id > ?", room, afterID).
		Where(live).
		Order("id ASC").
		Limit(limit).
		Find(&rows).Error
	if err != nil {
		return nil, false, fmt.Errorf("store: messages of %q after %q: %w", room, afterID, err)
	}
	return messages(rows), found, nil
}

// PageQuery selects one page of a room's history. Ids are message ids; they
// need not be stored (paging from an id that is not there works).
type PageQuery struct {
	// Before, when not empty, keeps messages with an id less than it.
	Before string
	// After, when not empty, keeps messages with an id greater than it, and
	// turns the page order to oldest first.
	After string
	// Limit is the page size: zero or less means DefaultPageLimit, more than
	// MaxPageLimit means MaxPageLimit.
	Limit int
}

// Page returns one page of room's stored history, ordered by id:
//
//   - With no After (Before or nothing set): the newest messages, before
//     Before when it is set, NEWEST FIRST. Pass the last id of a page as the
//     next Before to go back in time.
//   - With After set: the oldest messages after After (and before Before
//     when set), OLDEST FIRST. Pass the last id of a page as the next After
//     to go forward in time.
//
// Messages taken down are left out. A page shorter than the limit is the
// last in its direction (for now: the
// writer may still add newer messages).
func (h *History) Page(ctx context.Context, room string, q PageQuery) ([]chat.Message, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultPageLimit
	}
	limit = min(limit, MaxPageLimit)
	tx := h.db.gorm.WithContext(ctx).Where("room = ?", room).Where(live)
	if q.Before != "" {
		tx = tx.Where("id < ?", q.Before)
	}
	if q.After != "" {
		tx = tx.Where("id > ?", q.After).Order("id ASC")
	} else {
		tx = tx.Order("id DESC")
	}
	var rows []messageRow
	if err := tx.Limit(limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("store: page of %q: %w", room, err)
	}
	return messages(rows), nil
}

// Message implements chat.Eraser.
func (h *History) Message(ctx context.Context, room, id string) (chat.Message, bool, error) {
	var row messageRow
	err := h.db.gorm.WithContext(ctx).
		Where("room = ? AND id = ?", room, id).
		Where(live).
		Take(&row).Error
	switch {
	case err == nil:
		return row.message(), true, nil
	case errors.Is(err, gorm.ErrRecordNotFound):
		return chat.Message{}, false, nil
	}
	return chat.Message{}, false, fmt.Errorf("store: message %q of %q: %w", id, room, err)
}

// tombstoneRow is a messages row as Erase writes it.
type tombstoneRow struct {
	ID         string    `gorm:"column:id;primaryKey"`
	Room       string    `gorm:"column:room"`
	UserID     string    `gorm:"column:user_id"`
	Body       string    `gorm:"column:body"`
	InsertedAt time.Time `gorm:"column:inserted_at"`
	DeletedAt  time.Time `gorm:"column:deleted_at"`
}

// Erase implements chat.Eraser with one upsert: the message's row is
// inserted with an empty body and deleted_at set, or, when it is stored,
// its body is blanked and deleted_at set. The writer's inserts do nothing
// on a conflict, so the tombstone stays.
func (h *History) Erase(ctx context.Context, msg chat.Message) error {
	if err := validMessage(msg); err != nil {
		return err
	}
	r := rowFromMessage(msg)
	row := tombstoneRow{ID: r.ID, Room: r.Room, UserID: r.UserID, InsertedAt: r.InsertedAt,
		DeletedAt: time.Now().UTC().Truncate(time.Microsecond)}
	err := h.db.gorm.WithContext(ctx).Table(messageRow{}.TableName()).
		Clauses(clause.OnConflict{
			Columns: []clause.Column{{Name: "id"}},
			// A second Erase keeps the first deletion time.
			DoUpdates: clause.Assignments(map[string]any{"body": "", "deleted_at": gorm.Expr("COALESCE(messages.deleted_at, ?)", row.DeletedAt)}),
		}).
		Create(&row).Error
	if err != nil {
		return fmt.Errorf("store: erase message %q of %q: %w", msg.ID, msg.Room, err)
	}
	return nil
}

func messages(rows []messageRow) []chat.Message {
	out := make([]chat.Message, len(rows))
	for i, r := range rows {
		out[i] = r.message()
	}
	return out
}
