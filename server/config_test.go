package server

import (
	"reflect"
	"testing"
	"time"
)

// The zero Config gets the defaults its fields' comments state.
func TestConfigDefaults(t *testing.T) {
	got, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{DevTokenTTL: 24 * time.Hour, ReadyTimeout: 2 * time.Second, MaxTokenTTL: 24 * time.Hour, PublicRooms: []string{"*"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("defaults\n%+v\nwant\n%+v", got, want)
	}
	// Dev tokens never outlive what the server accepts.
	if got, _ := (Config{MaxTokenTTL: time.Hour}).withDefaults(); got.DevTokenTTL != time.Hour {
		t.Fatalf("DevTokenTTL %v with MaxTokenTTL 1h", got.DevTokenTTL)
	}
	// An empty, non-nil PublicRooms stays empty: no room is public.
	if got, _ := (Config{PublicRooms: []string{}}).withDefaults(); got.PublicRooms == nil || len(got.PublicRooms) != 0 {
		t.Fatalf("PublicRooms %#v, want empty", got.PublicRooms)
	}
}

func TestConfigRejected(t *testing.T) {
	for name, cfg := range map[string]Config{
		"negative MaxTokenTTL":    {MaxTokenTTL: -time.Second},
		"negative DevTokenTTL":    {DevTokenTTL: -1},
		"negative ReadyTimeout":   {ReadyTimeout: -1},
		"negative DrainDelay":     {DrainDelay: -1},
		"API key is admin token":  {APIKey: "k", AdminToken: "k"},
		"bad origin pattern":      {AllowedOrigins: []string{"[a-"}},
		"bad trusted proxy":       {TrustedProxies: []string{"not-an-ip"}},
		"bad public room pattern": {PublicRooms: []string{"team-*-x"}},
	} {
		if _, err := cfg.withDefaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
