package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestConfigPrecedence: flag > env > file > default, key by key.
func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "node.yaml")
	err := os.WriteFile(file, []byte(`
name: from-file
http: 127.0.0.1:9001
threads: 3
join: [a:1, b:2]
max-body: 1MiB
log-format: json
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LAYERMESH_HTTP": "127.0.0.1:9002", "LAYERMESH_THREADS": "5", "LAYERMESH_CONFIG": ""}
	getenv := func(k string) string { return env[k] }
	c, err := loadConfig([]string{"--config", file, "--threads", "7"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "from-file" || c.HTTP != "127.0.0.1:9002" || c.Threads != 7 || c.MaxBody != 1<<20 ||
		c.LogFormat != "json" || !reflect.DeepEqual([]string(c.Join), []string{"a:1", "b:2"}) || c.Accel != "auto" {
		t.Errorf("config = %+v", c)
	}
	// The config file may come from the environment too.
	env["LAYERMESH_CONFIG"] = file
	c, err = loadConfig(nil, getenv, io.Discard)
	if err != nil || c.Name != "from-file" || c.Threads != 5 {
		t.Errorf("config via LAYERMESH_CONFIG = %+v, %v", c, err)
	}
}

func TestConfigErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(file, []byte("dta-dir: /x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	none := func(string) string { return "" }
	for _, args := range [][]string{
		{"--accel", "tpu"},
		{"--log-format", "xml"},
		{"--max-body", "lots"},
		{"--tls-cert", "c.pem"},
		{"--config", file},
		{"--no-such-flag"},
		{"stray"},
	} {
		if _, err := loadConfig(args, none, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "64MiB": 64 << 20, "2GiB": 2 << 30, "512MB": 512e6, "1.5G": 3 << 29, "10KB": 1e4} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("%s = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "x", "1XB", "1e30GiB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
