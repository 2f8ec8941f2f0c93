package importrules

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestModuleKeepsItsLayering is the real check: the module as `go list` sees it now.
func TestModuleKeepsItsLayering(t *testing.T) {
	statModuleSources(t)
	g, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	// The cgo rule is only as good as the cgo flags it reads: the ORT backend must be
	// seen as a cgo package, and the interface package as not one.
	if p := g[Module+"/accel/ort"]; p == nil || !p.Cgo {
		t.Fatalf("go list does not report accel/ort as a cgo package: %+v", p)
	}
	if p := g[Module+"/accel"]; p == nil || p.Cgo {
		t.Fatalf("go list reports accel as a cgo package, or not at all: %+v", p)
	}
	for _, err := range Check(g, Rules) {
		t.Error(err)
	}
}

// statModuleSources stats every directory and Go file of the module. go test caches a
// passing result keyed on the test binary and the files the test touched, and this
// package imports none of the packages it checks: without these stats, an import added
// elsewhere would leave the cached pass standing.
func statModuleSources(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || strings.HasSuffix(path, ".go") {
			_, err = os.Stat(path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// syntheticModule is a clean import graph shaped like the module: every package the
// rules name, the allowed imports of node and accel/ort, and standard-library
// packages with cgo files that must not count.
func syntheticModule() map[string][]string {
	return map[string][]string{
		"accel":                           {"accel/tensor"},
		"accel/tensor":                    {"net"},
		"accel/onnxconv":                  {"accel/tensor", "partition/onnxpb"},
		"accel/ort":                       {"accel", "accel/tensor", "runtime/cgo"},
		"api":                             {"accel", "api/wire", "net"},
		"api/wire":                        {"accel/tensor"},
		"api/client":                      {"api/wire"},
		"partition":                       {"accel", "partition/onnxpb"},
		"partition/onnxpb":                nil,
		"compress":                        {"accel/tensor"},
		"mesh":                            {"accel/tensor", "os/user"},
		"consensus":                       {"consensus/badgerstore"},
		"consensus/badgerstore":           nil,
		"pipeline":                        {"accel", "api", "consensus", "mesh"},
		"control":                         {"api", "compress", "consensus", "mesh", "partition"},
		"node":                            {"accel", "api", "consensus", "mesh", "partition", "pipeline", "control"},
		"cmd/meshnode":                    {"node", "accel/ort"},
		"cmd/meshctl":                     {"accel/ort", "partition", "api/client"},
		"test/ops":                        {"node", "accel/ort", "test/harness"},
		"test/harness":                    {"api/client"},
		"scripts/benchreport":             {"github.com/yalue/onnxruntime_go"},
		"github.com/yalue/onnxruntime_go": {"runtime/cgo"},
		"net":                             {"runtime/cgo"},
		"os/user":                         {"runtime/cgo"},
		"runtime/cgo":                     nil,
	}
}

var standardLibrary = map[string]bool{"net": true, "os/user": true, "runtime/cgo": true}

// graphOf builds a Graph from module-relative names (standard-library and dotted
// names stay as they are); the packages in cgo have cgo files.
func graphOf(edges map[string][]string, cgo ...string) Graph {
	full := func(name string) string {
		if standardLibrary[name] || strings.Contains(strings.Split(name, "/")[0], ".") {
			return name
		}
		return Module + "/" + name
	}
	g := Graph{}
	for name, imports := range edges {
		p := &Package{ImportPath: full(name), Standard: standardLibrary[name], Cgo: slices.Contains(cgo, name)}
		for _, imp := range imports {
			p.Imports = append(p.Imports, full(imp))
		}
		g[p.ImportPath] = p
	}
	return g
}

var syntheticCgo = []string{"accel/ort", "github.com/yalue/onnxruntime_go", "net", "os/user", "runtime/cgo"}

// TestEachRuleCatchesItsViolation runs the module's rules over synthetic graphs, each
// with one forbidden import, and expects exactly the violations listed: so every rule
// is shown to fail, and to fail only where it should.
func TestEachRuleCatchesItsViolation(t *testing.T) {
	const (
		noCgo         = "api, partition, compress and accel's interface build without cgo"
		pipelineRule  = "pipeline does not import control"
		controlRule   = "control does not import pipeline"
		onlyCmdNode   = "only cmd and the tests import node"
		belowNode     = "mesh, consensus, partition, compress, accel and api sit below node"
		onlyCmdORT    = "only node, cmd and the tests import accel/ort"
		unmatchedRule = "pattern %q matches no package of the module"
	)
	cases := []struct {
		name   string
		add    map[string][]string // imports added to the clean graph (and new packages)
		remove []string            // packages taken out of the clean graph
		cgo    []string            // packages given cgo files besides syntheticCgo
		want   []string
	}{
		{name: "the clean graph passes"},
		{
			name: "api reaching a cgo package through api/wire",
			add:  map[string][]string{"api/wire": {"accel/tensor", "github.com/yalue/onnxruntime_go"}},
			want: []string{
				noCgo + ": api -> api/wire -> github.com/yalue/onnxruntime_go (cgo)",
				noCgo + ": api/client -> api/wire -> github.com/yalue/onnxruntime_go (cgo)",
				noCgo + ": api/wire -> github.com/yalue/onnxruntime_go (cgo)",
			},
		},
		{
			name: "accel itself with cgo files",
			cgo:  []string{"accel"},
			want: []string{
				noCgo + ": accel (cgo)",
				noCgo + ": api -> accel (cgo)",
				noCgo + ": partition -> accel (cgo)",
			},
		},
		{
			name: "partition opening ORT itself",
			add:  map[string][]string{"partition": {"accel", "accel/ort"}},
			want: []string{
				noCgo + ": partition -> accel/ort (cgo)",
				onlyCmdORT + ": partition -> accel/ort",
			},
		},
		{
			name: "mesh importing accel/ort",
			add:  map[string][]string{"mesh": {"accel/ort"}},
			want: []string{onlyCmdORT + ": mesh -> accel/ort"},
		},
		{
			name: "pipeline importing control through another package",
			add:  map[string][]string{"pipeline": {"compress"}, "compress": {"control"}, "control": nil},
			want: []string{pipelineRule + ": pipeline -> compress -> control"},
		},
		{
			name: "control importing pipeline",
			add:  map[string][]string{"pipeline": nil, "control": {"pipeline/sessions"}, "pipeline/sessions": nil},
			want: []string{controlRule + ": control -> pipeline/sessions"},
		},
		{
			name: "mesh importing node",
			add:  map[string][]string{"mesh": {"node"}},
			// node imports both halves, so each now reaches the other through mesh.
			want: []string{
				pipelineRule + ": pipeline -> mesh -> node -> control",
				controlRule + ": control -> mesh -> node -> pipeline",
				onlyCmdNode + ": mesh -> node",
				belowNode + ": mesh -> node",
			},
		},
		{
			name: "api reaching node through a package outside the layers",
			add:  map[string][]string{"api": {"internal/report"}, "internal/report": {"node"}},
			want: []string{
				pipelineRule + ": pipeline -> api -> internal/report -> node -> control",
				controlRule + ": control -> api -> internal/report -> node -> pipeline",
				onlyCmdNode + ": internal/report -> node",
				belowNode + ": api -> internal/report -> node",
			},
		},
		{
			name: "pipeline importing node",
			add:  map[string][]string{"pipeline": {"node"}},
			want: []string{pipelineRule + ": pipeline -> node -> control", onlyCmdNode + ": pipeline -> node"},
		},
		{
			name:   "a renamed package leaves a rule's pattern matching nothing",
			remove: []string{"consensus", "consensus/badgerstore"},
			want:   []string{belowNode + ": " + fmt.Sprintf(unmatchedRule, "consensus/...")},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			edges := syntheticModule()
			for name, imports := range c.add {
				edges[name] = imports
			}
			for _, name := range c.remove {
				delete(edges, name)
			}
			var got []string
			for _, err := range Check(graphOf(edges, append(c.cgo, syntheticCgo...)...), Rules) {
				got = append(got, err.Error())
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("violations:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
}

func TestPatternsMatchAsGoListDoes(t *testing.T) {
	cases := []struct {
		pattern, path string
		want          bool
	}{
		{"api", "api", true},
		{"api", "api/client", false},
		{"api/...", "api", true},
		{"api/...", "api/client", true},
		{"api/...", "apiary", false},
		{"node/...", "node", true},
		{"...", "cmd/meshctl", true},
		{"accel/ort", "accel/ort", true},
		{"accel/ort", "accel", false},
	}
	for _, c := range cases {
		if got := match(c.pattern, Module+"/"+c.path); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
	if match("...", "github.com/other/module") {
		t.Error(`"..." matches a package outside the module`)
	}
}
