package node

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMemAvailable(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, body string
		want       int64
		ok         bool
	}{
		{"present", "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   2000000 kB\n", 2000000 << 10, true},
		{"missing", "MemTotal:       24000000 kB\n", 0, false},
		{"bad unit", "MemAvailable:   2000000 MB\n", 0, false},
		{"garbage", "MemAvailable:   lots kB\n", 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			if err := os.WriteFile(p, []byte(c.body), 0o600); err != nil {
				t.Fatal(err)
			}
			got, ok := memAvailable(p)
			if got != c.want || ok != c.ok {
				t.Fatalf("memAvailable = %d, %v; want %d, %v", got, ok, c.want, c.ok)
			}
		})
	}
	if _, ok := memAvailable(filepath.Join(dir, "absent")); ok {
		t.Fatal("absent file read as ok")
	}
	if b := defaultMemBudget(); b <= 0 {
		t.Fatalf("defaultMemBudget() = %d", b)
	}
}
