package rawsql

import (
	"fmt"
	"regexp"
	"slices"
)

// Refusal says why a statement may not run inside a slot's transaction.
type Refusal struct {
	Reason string
}

func (r *Refusal) Error() string { return r.Reason }

func refuse(format string, args ...any) *Refusal {
	return &Refusal{Reason: fmt.Sprintf(format, args...)}
}

// Check returns nil when query may run inside a slot's transaction under
// the client role, or a *Refusal saying why it may not.
func Check(query string) error {
	lexed := 0
	for _, standard := range []bool{true, false} {
		toks, err := lex(query, standard)
		if err != nil {
			// The server cannot read it this way either.
			continue
		}
		lexed++
		if r := checkTokens(toks); r != nil {
			return r
		}
	}
	if lexed == 0 {
		return refuse("the statement cannot be read: %v", errUnterminated)
	}
	return nil
}

func checkTokens(toks []token) *Refusal {
	for _, stmt := range splitStatements(toks) {
		if r := checkStatement(stmt); r != nil {
			return r
		}
	}
	return nil
}

func splitStatements(toks []token) [][]token {
	var out [][]token
	start := 0
	for i, t := range toks {
		if t.kind == tokOp && t.text == ";" {
			if i > start {
				out = append(out, toks[start:i])
			}
			start = i + 1
		}
	}
	if start < len(toks) {
		out = append(out, toks[start:])
	}
	return out
}

// transactionControl are the statements that end, commit, roll back or
// split a transaction.
var transactionControl = []string{"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"}

// sessionState are the statements whose effect outlives the transaction on
// the pooled session.
var sessionState = []string{"reset", "discard", "listen", "unlisten", "prepare", "execute", "deallocate", "load"}

// protectedSettings may not be changed even for the transaction: the role
// and the session's identity keep the client away from hafe's records, the
// transaction's mode is the slot's, and the string syntax decides how
// later statements read.
var protectedSettings = []string{
	"role", "session_authorization", "session", "transaction", "transaction_isolation",
	"transaction_read_only", "transaction_deferrable", "standard_conforming_strings", "backslash_quote",
	// Fencing finds a front-end's sessions by name, and ends those left open.
	"application_name", "idle_in_transaction_session_timeout",
}

func checkStatement(stmt []token) *Refusal {
	for i, t := range stmt {
		if t.kind != tokIdent {
			continue
		}
		switch t.text {
		case "set_config":
			if r := checkSetConfig(stmt[i+1:]); r != nil {
				return r
			}
		case "pg_settings":
			// Its update rule calls set_config for the session.
			return refuse("pg_settings may not be used; read settings with current_setting()")
		}
	}
	k, ok := keyword(stmt, 0)
	if !ok {
		return nil
	}
	switch {
	case slices.Contains(transactionControl, k):
		return refuse("%s controls the transaction; each transaction of a batch is one database transaction that hafe begins and commits", upper(k))
	case k == "prepare" && isKeyword(stmt, 1, "transaction"):
		return refuse("PREPARE TRANSACTION controls the transaction; each transaction of a batch is one database transaction that hafe begins and commits")
	case slices.Contains(sessionState, k):
		return refuse("%s changes the session, which later clients of the connection would inherit", upper(k))
	case k == "set":
		return checkSet(stmt[1:])
	case k == "alter" && (isKeyword(stmt, 1, "role") || isKeyword(stmt, 1, "user") || isKeyword(stmt, 1, "group")):
		return refuse("%s %s changes the client role, which every later client logs in as", upper(k), upper(stmt[1].text))
	case k == "do":
		return refuse("DO blocks may not run: their body could leave the client role; CALL a procedure instead")
	case k == "create":
		j := 1
		if isKeyword(stmt, j, "or") && isKeyword(stmt, j+1, "replace") {
			j += 2
		}
		if isKeyword(stmt, j, "function") || isKeyword(stmt, j, "procedure") {
			return refuse("CREATE FUNCTION and CREATE PROCEDURE may not run: the body could leave the client role")
		}
	case k == "copy":
		for j := 1; j < len(stmt); j++ {
			if isKeyword(stmt, j, "stdin") || isKeyword(stmt, j, "stdout") {
				return refuse("COPY FROM STDIN and COPY TO STDOUT need the copy protocol, which the batch API does not speak")
			}
		}
	case k == "declare":
		for j := 1; j+1 < len(stmt); j++ {
			if isKeyword(stmt, j, "with") && isKeyword(stmt, j+1, "hold") {
				return refuse("a cursor WITH HOLD outlives the transaction")
			}
			if isKeyword(stmt, j, "for") {
				break
			}
		}
	case k == "explain":
		j := 1
		for {
			switch {
			case isKeyword(stmt, j, "analyze") || isKeyword(stmt, j, "analyse") || isKeyword(stmt, j, "verbose"):
				j++
				continue
			case j < len(stmt) && stmt[j].kind == tokOp && stmt[j].text == "(":
				depth := 0
				for ; j < len(stmt); j++ {
					if stmt[j].kind == tokOp && stmt[j].text == "(" {
						depth++
					}
					if stmt[j].kind == tokOp && stmt[j].text == ")" {
						depth--
						if depth == 0 {
							j++
							break
						}
					}
				}
				continue
			}
			break
		}
		if j < len(stmt) {
			return checkStatement(stmt[j:])
		}
	}
	return nil
}

// checkSet allows SET LOCAL (the transaction's own settings) and SET
// CONSTRAINTS; anything else changes the session.
func checkSet(rest []token) *Refusal {
	switch {
	case isKeyword(rest, 0, "constraints"):
		return nil
	case isKeyword(rest, 0, "local"):
		if len(rest) > 1 && rest[1].kind == tokIdent && slices.Contains(protectedSettings, foldASCII(rest[1].text)) {
			return refuse("SET LOCAL %s may not be changed by a client", rest[1].text)
		}
		return nil
	}
	return refuse("SET without LOCAL changes the session, which later clients of the connection would inherit; use SET LOCAL")
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// checkSetConfig allows set_config('name', value, true) for a name given
// as a plain constant that is not protected: a transaction-local setting.
// rest follows the function's name.
func checkSetConfig(rest []token) *Refusal {
	const form = "set_config may only be called as set_config('name', value, true), for the transaction"
	if len(rest) < 5 || !isOp(rest, 0, "(") || rest[1].kind != tokString || rest[1].escaped || !isOp(rest, 2, ",") {
		return refuse(form)
	}
	name := rest[1].text
	if !settingName.MatchString(name) {
		return refuse(form)
	}
	if slices.Contains(protectedSettings, foldASCII(name)) {
		return refuse("set_config may not change %s", name)
	}
	depth := 0
	for j := 3; j < len(rest); j++ {
		switch {
		case isOp(rest, j, "(") || isOp(rest, j, "["):
			depth++
		case isOp(rest, j, ")") || isOp(rest, j, "]"):
			depth--
			if depth < 0 {
				return refuse(form)
			}
		case depth == 0 && isOp(rest, j, ","):
			if isKeyword(rest, j+1, "true") && isOp(rest, j+2, ")") {
				return nil
			}
			return refuse(form)
		}
	}
	return refuse(form)
}

// keyword returns the key word at stmt[i]: an unquoted identifier.
func keyword(stmt []token, i int) (string, bool) {
	if i < len(stmt) && stmt[i].kind == tokIdent && !stmt[i].quoted {
		return stmt[i].text, true
	}
	return "", false
}

func isKeyword(stmt []token, i int, k string) bool {
	got, ok := keyword(stmt, i)
	return ok && got == k
}

func isOp(stmt []token, i int, op string) bool {
	return i < len(stmt) && stmt[i].kind == tokOp && stmt[i].text == op
}

func upper(k string) string {
	b := []byte(k)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
