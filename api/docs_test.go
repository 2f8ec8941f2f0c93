package api_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/layermesh/layermesh/api"
)

// TestDocsListEveryCode keeps docs/API.md's error table and the catalogue in step:
// every code with its status, and no code the catalogue does not have.
func TestDocsListEveryCode(t *testing.T) {
	b, err := os.ReadFile("../docs/API.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	known := map[string]bool{}
	for _, e := range api.Catalogue() {
		known[string(e.Code)] = true
		row := fmt.Sprintf("| `%s` | %d |", e.Code, e.Status)
		if !strings.Contains(doc, row) {
			t.Errorf("docs/API.md lacks the row %q", row)
		}
	}
	for _, line := range strings.Split(doc, "\n") {
		if code, ok := strings.CutPrefix(line, "| `"); ok {
			code, _, _ = strings.Cut(code, "`")
			if strings.Contains(line, "| 4") || strings.Contains(line, "| 5") {
				if !known[code] {
					t.Errorf("docs/API.md lists %q, which the catalogue does not have", code)
				}
			}
		}
	}
}
