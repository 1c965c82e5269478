package cluster

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
)

func TestParseSeeds(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" , ,", nil},
		{"10.0.0.1:7946", []string{"10.0.0.1:7946"}},
		{"a:1, b:2 ,c:3", []string{"a:1", "b:2", "c:3"}},
		{"chatd-headless.chat.svc.cluster.local:7946", []string{"chatd-headless.chat.svc.cluster.local:7946"}},
		{"a:1 b:2\n[::1]:3", []string{"a:1", "b:2", "[::1]:3"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := ParseSeeds(tt.in); !slices.Equal(got, tt.want) {
				t.Fatalf("ParseSeeds(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// fakeResolver maps names to addresses; anything else is "not found".
func fakeResolver(records map[string][]string) LookupHostFunc {
	return func(ctx context.Context, host string) ([]string, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if addrs, ok := records[host]; ok {
			return addrs, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

func TestResolveSeeds(t *testing.T) {
	lookup := fakeResolver(map[string][]string{
		"chatd-headless.ns.svc": {"10.1.0.5", "10.1.0.6", "fd00::7"},
		"seeds.chatd.test":      {"127.0.0.1"},
		"empty.chatd.test":      {},
		"zoned.chatd.test":      {"fe80::1%eth0"},
	})
	tests := []struct {
		name    string
		seeds   []string
		want    []string
		wantErr string // substring; "" means no error
	}{
		{name: "ip and port", seeds: []string{"10.0.0.1:7000"}, want: []string{"10.0.0.1:7000"}},
		{name: "ip without port gets default", seeds: []string{"10.0.0.1"}, want: []string{"10.0.0.1:7946"}},
		{name: "ipv6", seeds: []string{"[fd00::1]:7000", "fd00::2"}, want: []string{"[fd00::1]:7000", "[fd00::2]:7946"}},
		{
			name:  "headless service: every record is a seed",
			seeds: []string{"chatd-headless.ns.svc:7946"},
			want:  []string{"10.1.0.5:7946", "10.1.0.6:7946", "[fd00::7]:7946"},
		},
		{name: "name without port", seeds: []string{"seeds.chatd.test"}, want: []string{"127.0.0.1:7946"}},
		{name: "duplicates removed", seeds: []string{"127.0.0.1:7946", "seeds.chatd.test:7946", "seeds.chatd.test"}, want: []string{"127.0.0.1:7946"}},
		{
			name:    "unknown name does not hide the others",
			seeds:   []string{"nope.chatd.test:7946", "10.0.0.1:7000"},
			want:    []string{"10.0.0.1:7000"},
			wantErr: `resolve seed "nope.chatd.test"`,
		},
		{name: "no records", seeds: []string{"empty.chatd.test:1"}, wantErr: "no addresses"},
		{name: "zone dropped", seeds: []string{"zoned.chatd.test:1"}, want: []string{"[fe80::1]:1"}},
		{name: "bad port", seeds: []string{"10.0.0.1:http"}, wantErr: "invalid port"},
		{name: "port out of range", seeds: []string{"10.0.0.1:70000"}, wantErr: "invalid port"},
		{name: "empty host", seeds: []string{":7946"}, wantErr: "empty host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveSeeds(context.Background(), tt.seeds, 7946, lookup)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("addresses = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResolveSeedsContextCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	lookup := fakeResolver(map[string][]string{"seeds.chatd.test": {"127.0.0.1"}})
	got, err := resolveSeeds(ctx, []string{"seeds.chatd.test:1", "10.0.0.1:2"}, 0, lookup)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if !slices.Equal(got, []string{"10.0.0.1:2"}) {
		t.Fatalf("addresses = %q, want the IP seed only", got)
	}
}

func TestValidateSeeds(t *testing.T) {
	if err := validateSeeds([]string{"a.b:1", "10.0.0.1", "[::1]:2"}, 7946); err != nil {
		t.Fatalf("valid seeds rejected: %v", err)
	}
	if err := validateSeeds([]string{"a.b"}, 0); err == nil || !strings.Contains(err.Error(), "no port") {
		t.Fatalf("seed without port and no default: error = %v", err)
	}
	if err := validateSeeds([]string{"a.b:x", ""}, 7946); err == nil {
		t.Fatal("invalid seeds accepted")
	}
}
