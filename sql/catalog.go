package sql

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed templates/*.sql
var builtinTemplates embed.FS

//go:embed demo/schema.sql
var demoSchema string

// DemoSchema is the SQL that creates and fills the demo bank's tables.
func DemoSchema() string { return demoSchema }

// Template is a named transaction: statements with named arguments.
type Template struct {
	Name       string
	Doc        string   // the leading comment lines
	Statements []string // each without its trailing semicolon
	Args       []string // every @name used, sorted
	// Positional are the statements with @name rewritten to $1, $2, …
	// once, here, rather than on every call; ArgOrder[i] names the
	// arguments of Positional[i] in order.
	Positional []string
	ArgOrder   [][]string
}

// Catalog is the set of templates a front-end accepts.
type Catalog struct {
	templates map[string]*Template
}

// Builtin returns the templates shipped with hafe (the demo bank's).
func Builtin() *Catalog {
	c, err := Load(builtinTemplates, "templates")
	if err != nil {
		panic(err) // the embedded files are tested
	}
	return c
}

// LoadDir reads every NAME.sql file of a directory as template NAME.
func LoadDir(dir string) (*Catalog, error) {
	return Load(os.DirFS(dir), ".")
}

var templateName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// Load reads every NAME.sql file of directory dir in fsys.
//
// File format: leading "--" comment lines document the template; then SQL
// statements, each ending with a semicolon at the end of a line. Arguments
// are named, @name, and every use of a name gets the same value.
func Load(fsys fs.FS, dir string) (*Catalog, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read templates: %w", err)
	}
	c := &Catalog{templates: map[string]*Template{}}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".sql")
		if e.IsDir() || !ok {
			continue
		}
		if !templateName.MatchString(name) {
			return nil, fmt.Errorf("template file %s: name must match %s", e.Name(), templateName)
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		t, err := Parse(name, string(b))
		if err != nil {
			return nil, err
		}
		c.templates[name] = t
	}
	if len(c.templates) == 0 {
		return nil, fmt.Errorf("no templates (*.sql files) in %s", dir)
	}
	return c, nil
}

var argPattern = regexp.MustCompile(`@([a-zA-Z_][a-zA-Z0-9_]*)`)

// Parse reads one template's text.
func Parse(name, text string) (*Template, error) {
	t := &Template{Name: name}
	var doc []string
	var stmt strings.Builder
	inBody := false
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if !inBody {
			if c, ok := strings.CutPrefix(trimmed, "--"); ok {
				doc = append(doc, strings.TrimSpace(c))
				continue
			}
			if trimmed == "" {
				continue
			}
			inBody = true
		}
		stmt.WriteString(line)
		stmt.WriteString("\n")
		if strings.HasSuffix(trimmed, ";") {
			s := strings.TrimSuffix(strings.TrimSpace(stmt.String()), ";")
			t.Statements = append(t.Statements, s)
			stmt.Reset()
		}
	}
	if rest := strings.TrimSpace(stmt.String()); rest != "" {
		t.Statements = append(t.Statements, rest)
	}
	if len(t.Statements) == 0 {
		return nil, fmt.Errorf("template %s has no statements", name)
	}
	t.Doc = strings.Join(doc, " ")
	// pgx's own rewriter decides what is an argument (not @x inside a
	// string literal or a comment), exactly as it would on every call.
	names := pgx.NamedArgs{}
	for _, s := range t.Statements {
		for _, m := range argPattern.FindAllStringSubmatch(s, -1) {
			names[m[1]] = m[1]
		}
	}
	seen := map[string]bool{}
	for _, s := range t.Statements {
		q, args, err := names.RewriteQuery(context.Background(), nil, s, nil)
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
		order := make([]string, len(args))
		for i, a := range args {
			order[i], _ = a.(string)
			if !seen[order[i]] {
				seen[order[i]] = true
				t.Args = append(t.Args, order[i])
			}
		}
		t.Positional = append(t.Positional, q)
		t.ArgOrder = append(t.ArgOrder, order)
	}
	sort.Strings(t.Args)
	return t, nil
}

// Call returns statement i's positional query and its arguments taken from
// args by name.
func (t *Template) Call(i int, args map[string]any) (string, []any) {
	vals := make([]any, len(t.ArgOrder[i]))
	for j, name := range t.ArgOrder[i] {
		vals[j] = args[name]
	}
	return t.Positional[i], vals
}

// Get returns the template called name.
func (c *Catalog) Get(name string) (*Template, bool) {
	t, ok := c.templates[name]
	return t, ok
}

// Names lists the templates, sorted.
func (c *Catalog) Names() []string {
	names := make([]string, 0, len(c.templates))
	for n := range c.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// CheckArgs says which arguments are missing or unknown for a call of t.
func (t *Template) CheckArgs(args map[string]any) error {
	var missing, unknown []string
	for _, a := range t.Args {
		if _, ok := args[a]; !ok {
			missing = append(missing, a)
		}
	}
	for a := range args {
		if !contains(t.Args, a) { // t.Args are the names the template uses
			unknown = append(unknown, a)
		}
	}
	sort.Strings(unknown)
	switch {
	case len(missing) > 0 && len(unknown) > 0:
		return fmt.Errorf("template %s: missing arguments %s; unknown arguments %s", t.Name, strings.Join(missing, ", "), strings.Join(unknown, ", "))
	case len(missing) > 0:
		return fmt.Errorf("template %s: missing arguments %s", t.Name, strings.Join(missing, ", "))
	case len(unknown) > 0:
		return fmt.Errorf("template %s: unknown arguments %s (it takes %s)", t.Name, strings.Join(unknown, ", "), strings.Join(t.Args, ", "))
	}
	return nil
}

func contains(list []string, s string) bool {
	i := sort.SearchStrings(list, s)
	return i < len(list) && list[i] == s
}
