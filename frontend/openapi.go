package frontend

import (
	_ "embed"
	"net/http"
)

// openAPIDoc describes the routes of Server.routes and the codes of every
// refusal; TestOpenAPIMatchesRoutesAndErrorCodes keeps the three (and
// docs/api.md's table) the same.
//
//go:embed openapi.json
var openAPIDoc []byte

// openAPI serves the description without a token: it runs nothing and
// says nothing a client could not read in the repository.
func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(openAPIDoc)
}
