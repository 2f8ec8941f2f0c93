// Package importrules states the module's layering as data and checks it against the
// import graph that `go list` reports. The layering is what keeps the request path
// buildable without cgo and stops a package from reaching up into the one that wires it;
// a rule written only in a document erodes one convenient import at a time, so the
// package's test runs Check over the real module and fails on the first such import.
//
// Only non-test imports count: a _test.go file may import whatever it needs to run a
// real model (accel/ort) or a real node.
package importrules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// Module is the module path the rules' patterns are relative to.
const Module = "github.com/layermesh/layermesh"

// Package is one package of the import graph.
type Package struct {
	ImportPath string
	// Imports are the package's direct, non-test imports.
	Imports []string
	// Cgo is true when the package has cgo files.
	Cgo bool
	// Standard is true for a standard-library package. Those with cgo files (net,
	// os/user) have pure-Go fallbacks and build with CGO_ENABLED=0, so they never count
	// as cgo dependencies.
	Standard bool
}

// Graph maps an import path to its package: the module's packages and everything they
// depend on.
type Graph map[string]*Package

// Rule forbids some packages (From, less Except) to depend on others (Forbid), or on
// any non-standard cgo package (Cgo). Patterns are relative to Module: "api" is one
// package, "api/..." is api and everything under it, "..." is every package of the
// module.
type Rule struct {
	// Name says what the rule keeps true; violations are reported under it.
	Name   string
	From   []string
	Except []string
	Forbid []string
	// Cgo forbids every non-standard package with cgo files.
	Cgo bool
	// Direct limits the rule to direct imports; otherwise an import through other
	// packages counts too.
	Direct bool
}

// Rules is the module's layering.
var Rules = []Rule{
	{
		// The HTTP surface, the partitioner and accel's interface run in binaries and
		// tools that must build with CGO_ENABLED=0; the cgo backend is accel/ort (with
		// accel/ort/gpu, which reads NVML through cgo).
		Name:   "api, partition, compress and accel's interface build without cgo",
		From:   []string{"api/...", "partition/...", "compress/...", "accel/..."},
		Except: []string{"accel/ort/..."},
		Cgo:    true,
	},
	{
		// The request path and the control loop meet only through the Raft state and
		// the interfaces node wires between them.
		Name:   "pipeline does not import control",
		From:   []string{"pipeline/..."},
		Forbid: []string{"control/..."},
	},
	{
		Name:   "control does not import pipeline",
		From:   []string{"control/..."},
		Forbid: []string{"pipeline/..."},
	},
	{
		// node wires everything; whatever it wires cannot depend on it.
		Name:   "only cmd and the tests import node",
		From:   []string{"..."},
		Except: []string{"cmd/...", "test/..."},
		Forbid: []string{"node"},
		Direct: true,
	},
	{
		Name:   "mesh, consensus, partition, compress, accel and api sit below node",
		From:   []string{"mesh/...", "consensus/...", "partition/...", "compress/...", "accel/...", "api/..."},
		Forbid: []string{"node/..."},
	},
	{
		// Opening ONNX Runtime is the binaries' decision. partition.Verify and
		// partition.MeasureValues take an accel.Backend: their ORT wiring is in
		// cmd/meshctl (partition --verify, --measure) and in the tests.
		Name:   "only node, cmd and the tests import accel/ort",
		From:   []string{"..."},
		Except: []string{"node/...", "cmd/...", "test/...", "accel/ort/..."},
		Forbid: []string{"accel/ort/..."},
		Direct: true,
	},
}

// Check returns one error per violation of rules in g, and one per pattern that matches
// no package of the module (a pattern that matches nothing is an error, so that a
// renamed package cannot turn a rule off silently).
func Check(g Graph, rules []Rule) []error {
	own := g.modulePackages()
	var errs []error
	for _, r := range rules {
		errs = append(errs, r.unmatched(own)...)
		for _, from := range own {
			if !matchAny(r.From, from) || matchAny(r.Except, from) {
				continue
			}
			if chain := g.reach(from, r); chain != nil {
				errs = append(errs, fmt.Errorf("%s: %s", r.Name, strings.Join(chain, " -> ")))
			}
		}
	}
	return errs
}

// unmatched reports the patterns of r that match none of the module's packages.
func (r Rule) unmatched(own []string) []error {
	var errs []error
	for _, p := range slices.Concat(r.From, r.Except, r.Forbid) {
		if !slices.ContainsFunc(own, func(path string) bool { return match(p, path) }) {
			errs = append(errs, fmt.Errorf("%s: pattern %q matches no package of the module", r.Name, p))
		}
	}
	return errs
}

// forbidden reports whether r forbids depending on path, and how to name it.
func (r Rule) forbidden(g Graph, path string) (string, bool) {
	if r.Cgo {
		if p := g[path]; p != nil && p.Cgo && !p.Standard {
			return shortName(path) + " (cgo)", true
		}
		return "", false
	}
	if strings.HasPrefix(path, Module+"/") && matchAny(r.Forbid, path) {
		return shortName(path), true
	}
	return "", false
}

// reach returns the import chain from `from` to the first package r forbids, or nil.
// The search is breadth-first, so the chain is a shortest one. Under a Cgo rule the
// package's own cgo files count too.
func (g Graph) reach(from string, r Rule) []string {
	if name, bad := r.forbidden(g, from); bad && r.Cgo {
		return []string{name}
	}
	parent := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		p := g[cur]
		if p == nil {
			continue
		}
		for _, imp := range p.Imports {
			if _, seen := parent[imp]; seen {
				continue
			}
			parent[imp] = cur
			if name, bad := r.forbidden(g, imp); bad {
				chain := []string{name}
				for at := cur; at != ""; at = parent[at] {
					chain = append(chain, shortName(at))
				}
				slices.Reverse(chain)
				return chain
			}
			if !r.Direct {
				queue = append(queue, imp)
			}
		}
	}
	return nil
}

// modulePackages lists the graph's packages that belong to Module, sorted.
func (g Graph) modulePackages() []string {
	var out []string
	for path := range g {
		if path == Module || strings.HasPrefix(path, Module+"/") {
			out = append(out, path)
		}
	}
	slices.Sort(out)
	return out
}

func shortName(path string) string {
	if rel, ok := strings.CutPrefix(path, Module+"/"); ok {
		return rel
	}
	return path
}

func matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return match(p, path) })
}

// match reports whether the module package path matches pattern, with the meaning
// `go list` gives "x/...": x itself and every package below it.
func match(pattern, path string) bool {
	rel, ok := strings.CutPrefix(path, Module+"/")
	if !ok {
		return false
	}
	if pattern == "..." {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == base || strings.HasPrefix(rel, base+"/")
	}
	return rel == pattern
}

// Load runs `go list -deps` over the module and returns its import graph. cgo is
// enabled for the listing so that cgo files are reported whatever the environment says.
func Load() (Graph, error) {
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,CgoFiles,Standard", Module+"/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w: %s", err, stderr.String())
	}
	return decodeList(bytes.NewReader(out))
}

// decodeList reads the stream of JSON objects `go list -json` writes.
func decodeList(r io.Reader) (Graph, error) {
	g := Graph{}
	dec := json.NewDecoder(r)
	for {
		var p struct {
			ImportPath string
			Imports    []string
			CgoFiles   []string
			Standard   bool
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return g, nil
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		g[p.ImportPath] = &Package{ImportPath: p.ImportPath, Imports: p.Imports, Cgo: len(p.CgoFiles) > 0, Standard: p.Standard}
	}
}
