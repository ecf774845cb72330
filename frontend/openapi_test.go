package frontend

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// openAPISpec is the part of openapi.json the sync test reads.
type openAPISpec struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
	Comps   struct {
		Schemas struct {
			ErrorCode struct {
				Enum []string `json:"enum"`
			} `json:"ErrorCode"`
		} `json:"schemas"`
	} `json:"components"`
}

// TestOpenAPIMatchesRoutesAndErrorCodes keeps three descriptions of the
// API from drifting apart: the routes the router registers, the refusal
// codes the code sends (every refuse(status, "code", …) call), the
// Refusals table of docs/api.md, and openapi.json as a front-end serves it.
func TestOpenAPIMatchesRoutesAndErrorCodes(t *testing.T) {
	fe := startFrontend(t, newDB(t), strictConfig(), false)

	// Served without a token (it runs nothing), byte for byte the file.
	resp := fe.do(t, request{method: http.MethodGet, path: "/v1/openapi.json"})
	body := readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	file, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, file) {
		t.Fatal("GET /v1/openapi.json differs from frontend/openapi.json")
	}
	var spec openAPISpec
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&spec); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(spec.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", spec.OpenAPI)
	}

	// Routes: what chi registered against what the document describes.
	var registered []string
	err = chi.Walk(fe.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		// The dashboard's assets are one wildcard, described as its page.
		route = strings.Replace(route, "/dashboard/*", "/dashboard/", 1)
		// chi strips a sub-router's trailing "/*" into its routes.
		route = strings.ReplaceAll(route, "/*/", "/")
		registered = append(registered, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Handle registers every method; the document names the one that is used.
	registered = slices.DeleteFunc(registered, func(r string) bool {
		m, p, _ := strings.Cut(r, " ")
		return (p == "/metrics" || p == "/dashboard/") && m != http.MethodGet
	})
	var described []string
	for path, ops := range spec.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			described = append(described, strings.ToUpper(m)+" "+path)
		}
	}
	compareSets(t, "routes (registered vs openapi.json)", registered, described)

	// Refusal codes: the code, the document and docs/api.md.
	sent := refusalCodesInSource(t)
	var sentCodes []string
	for c := range sent {
		sentCodes = append(sentCodes, c)
	}
	compareSets(t, "refusal codes (source vs openapi.json ErrorCode)", sentCodes, spec.Comps.Schemas.ErrorCode.Enum)
	documented := refusalCodesInDocs(t)
	var docCodes []string
	for c, status := range documented {
		docCodes = append(docCodes, c)
		if sent[c] != 0 && sent[c] != status {
			t.Errorf("docs/api.md lists %s under %d, the code sends it with %d", c, status, sent[c])
		}
	}
	compareSets(t, "refusal codes (source vs docs/api.md)", sentCodes, docCodes)
}

// refusalCodesInSource finds every refuse(STATUS, "code", …) call in the
// package's non-test files.
func refusalCodesInSource(t *testing.T) map[string]int {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]int{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 2 {
				return true
			}
			if id, ok := call.Fun.(*ast.Ident); !ok || id.Name != "refuse" {
				return true
			}
			status, ok1 := call.Args[0].(*ast.BasicLit)
			code, ok2 := call.Args[1].(*ast.BasicLit)
			if !ok1 || !ok2 || status.Kind != token.INT || code.Kind != token.STRING {
				t.Errorf("%s: refuse with a status or code that is not a literal: the sync test cannot see it", fset.Position(call.Pos()))
				return true
			}
			s, _ := strconv.Atoi(status.Value)
			c, _ := strconv.Unquote(code.Value)
			codes[c] = s
			return true
		})
	}
	if len(codes) < 10 {
		t.Fatalf("found only %d refusal codes in the source: %v", len(codes), codes)
	}
	return codes
}

// refusalCodesInDocs reads the Refusals table of docs/api.md: rows of
// "| status | `code`, `code` | when |".
func refusalCodesInDocs(t *testing.T) map[string]int {
	t.Helper()
	doc, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "### Refusals")
	if !ok {
		t.Fatal("docs/api.md has no Refusals section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	row := regexp.MustCompile("(?m)^\\| ([0-9]{3}) \\| ([^|]+) \\|")
	code := regexp.MustCompile("`([a-z_]+)`")
	codes := map[string]int{}
	for _, m := range row.FindAllStringSubmatch(table, -1) {
		status, _ := strconv.Atoi(m[1])
		for _, c := range code.FindAllStringSubmatch(m[2], -1) {
			codes[c[1]] = status
		}
	}
	return codes
}

func compareSets(t *testing.T, what string, got, want []string) {
	t.Helper()
	sort.Strings(got)
	sort.Strings(want)
	got, want = slices.Compact(got), slices.Compact(want)
	var missing, extra []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			extra = append(extra, w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			missing = append(missing, g)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("%s differ:\n  only in the first: %v\n  only in the second: %v", what, missing, extra)
	}
	if len(got) == 0 {
		t.Errorf("%s: none found", what)
	}
}
