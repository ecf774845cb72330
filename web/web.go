package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the dashboard's files.
func Handler() http.Handler {
	sub, _ := fs.Sub(static, "static")
	return http.FileServer(http.FS(sub))
}
