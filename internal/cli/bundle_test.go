package cli

import (
	"testing"
	"time"
)

func TestParseExpiry(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := map[string]time.Time{
		"72h":                  now.Add(72 * time.Hour),
		"30d":                  now.Add(30 * 24 * time.Hour),
		"2030-02-01T00:00:00Z": time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC),
	}
	for in, want := range cases {
		if got, err := ParseExpiry(in, now); err != nil || !got.Equal(want) {
			t.Errorf("ParseExpiry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "soon", "-1h", "0d", "0s"} {
		if _, err := ParseExpiry(bad, now); err == nil {
			t.Errorf("ParseExpiry(%q) accepted", bad)
		}
	}
}

func TestParseLabels(t *testing.T) {
	m, err := parseLabels([]string{"site=a", "tier=edge=x"})
	if err != nil || m["site"] != "a" || m["tier"] != "edge=x" {
		t.Fatalf("%v %v", m, err)
	}
	if _, err := parseLabels([]string{"=a"}); err == nil {
		t.Fatal("empty key accepted")
	}
}
