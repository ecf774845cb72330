package rawsql

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// tokenKind is what a token is, as far as Check cares.
type tokenKind uint8

const (
	tokIdent  tokenKind = iota // an identifier or key word; text is its value
	tokString                  // a string constant of any kind
	tokNumber                  // a numeric constant
	tokParam                   // $1, $2, …
	tokOp                      // one operator or punctuation character
)

// token is one lexical element. For identifiers, text is the value
// PostgreSQL uses: unquoted ones folded to lower case (ASCII only, as the
// server does), quoted ones as written, Unicode escapes decoded. quoted says
// the identifier was quoted, so it cannot be a key word. For plain string
// constants (no prefix, no backslash) text is the value; other strings
// leave it empty and set escaped.
type token struct {
	kind    tokenKind
	text    string
	quoted  bool
	escaped bool
}

var errUnterminated = errors.New("unterminated comment, quoted identifier or string")

// lex splits query into tokens the way PostgreSQL's lexer does, with
// standard_conforming_strings on or off. Whitespace and comments are
// dropped.
func lex(query string, standardStrings bool) ([]token, error) {
	var toks []token
	s := query
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case strings.HasPrefix(s[i:], "--"):
			for i < len(s) && s[i] != '\n' && s[i] != '\r' {
				i++
			}
		case strings.HasPrefix(s[i:], "/*"):
			// Block comments nest.
			depth := 0
			for first := true; first || depth > 0; first = false {
				switch {
				case i >= len(s):
					return nil, errUnterminated
				case strings.HasPrefix(s[i:], "/*"):
					depth++
					i += 2
				case strings.HasPrefix(s[i:], "*/"):
					depth--
					i += 2
				default:
					i++
				}
			}
		case c == '\'':
			n, val, plain, err := lexString(s[i:], !standardStrings)
			if err != nil {
				return nil, err
			}
			toks = append(toks, stringToken(val, plain))
			i += n
		case (c == 'e' || c == 'E') && next(s, i+1) == '\'':
			n, _, _, err := lexString(s[i+1:], true)
			if err != nil {
				return nil, err
			}
			toks = append(toks, stringToken("", false))
			i += 1 + n
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && next(s, i+1) == '\'':
			// Bit strings: no escapes, no doubled quotes.
			end := strings.IndexByte(s[i+2:], '\'')
			if end < 0 {
				return nil, errUnterminated
			}
			toks = append(toks, stringToken("", false))
			i += 2 + end + 1
		case (c == 'n' || c == 'N') && next(s, i+1) == '\'':
			// National character: the prefix is dropped, the string lexes
			// as a plain one.
			i++
		case (c == 'u' || c == 'U') && next(s, i+1) == '&' && (next(s, i+2) == '\'' || next(s, i+2) == '"'):
			quote := s[i+2]
			n, raw, err := lexQuoted(s[i+2:], quote)
			if err != nil {
				return nil, err
			}
			i += 2 + n
			esc := byte('\\')
			// An optional UESCAPE 'c' clause names another escape character.
			if j, e, ok := uescape(s, i); ok {
				esc, i = e, j
			}
			if quote == '\'' {
				toks = append(toks, stringToken("", false))
				continue
			}
			val, ok := decodeUnicode(raw, esc)
			if !ok {
				return nil, errors.New("invalid Unicode escape in identifier")
			}
			toks = append(toks, token{kind: tokIdent, text: val, quoted: true})
		case c == '"':
			n, raw, err := lexQuoted(s[i:], '"')
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tokIdent, text: raw, quoted: true})
			i += n
		case c == '$' && isDigit(next(s, i+1)):
			j := i + 1
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			toks = append(toks, token{kind: tokParam, text: s[i:j]})
			i = j
		case c == '$':
			tag, ok := dollarTag(s[i:])
			if !ok {
				toks = append(toks, token{kind: tokOp, text: "$"})
				i++
				continue
			}
			end := strings.Index(s[i+len(tag):], tag)
			if end < 0 {
				return nil, errUnterminated
			}
			toks = append(toks, stringToken("", false))
			i += len(tag) + end + len(tag)
		case isIdentStart(c):
			j := i + 1
			for j < len(s) && isIdentCont(s[j]) {
				j++
			}
			toks = append(toks, token{kind: tokIdent, text: foldASCII(s[i:j])})
			i = j
		case isDigit(c) || c == '.' && isDigit(next(s, i+1)):
			// Digits only: letters after a number (1e5, 0x1F, or junk)
			// lex as an identifier of their own here, which can only make
			// Check see more, never less.
			j := i
			for j < len(s) && (isDigit(s[j]) || s[j] == '.' || s[j] == '_') {
				j++
			}
			toks = append(toks, token{kind: tokNumber, text: s[i:j]})
			i = j
		default:
			_, size := utf8.DecodeRuneInString(s[i:])
			toks = append(toks, token{kind: tokOp, text: s[i : i+size]})
			i += size
		}
	}
	return toks, nil
}

func stringToken(val string, plain bool) token {
	if !plain {
		return token{kind: tokString, escaped: true}
	}
	return token{kind: tokString, text: val}
}

// lexString reads a string constant that starts at s[0] == '\”. With
// backslashes set, a backslash escapes the next character (E” strings, and
// plain strings when standard_conforming_strings is off). It returns the
// bytes consumed, the value of a plain string, and whether it was plain (no
// backslash at all).
func lexString(s string, backslashes bool) (n int, val string, plain bool, err error) {
	plain = true
	doubled := false
	i := 1
	for {
		// Adjacent constants separated by whitespace with a newline are
		// one string; that never changes where code starts, so each part
		// is its own token here.
		if i >= len(s) {
			return 0, "", false, errUnterminated
		}
		c := s[i]
		switch {
		case c == '\\':
			plain = false
			if backslashes {
				i += 2
				continue
			}
			i++
		case c == '\'' && next(s, i+1) == '\'':
			doubled = true
			i += 2
		case c == '\'':
			// The value is a slice of the query, not a copy: a long
			// literal costs no memory here.
			val = s[1:i]
			if doubled {
				val = strings.ReplaceAll(val, "''", "'")
			}
			return i + 1, val, plain, nil
		default:
			i++
		}
	}
}

// lexQuoted reads a quoted identifier or a U& string, which double their
// quote to include it and know no backslash escapes.
func lexQuoted(s string, quote byte) (int, string, error) {
	doubled := false
	i := 1
	for {
		if i >= len(s) {
			return 0, "", errUnterminated
		}
		switch {
		case s[i] == quote && next(s, i+1) == quote:
			doubled = true
			i += 2
		case s[i] == quote:
			val := s[1:i]
			if doubled {
				q := string(quote)
				val = strings.ReplaceAll(val, q+q, q)
			}
			return i + 1, val, nil
		default:
			i++
		}
	}
}

// uescape reads an optional `UESCAPE 'c'` after a U& constant at s[i:].
func uescape(s string, i int) (int, byte, bool) {
	j := i
	for j < len(s) && isSpace(s[j]) {
		j++
	}
	if len(s)-j < 7 || foldASCII(s[j:j+7]) != "uescape" || (j+7 < len(s) && isIdentCont(s[j+7])) {
		return i, 0, false
	}
	j += 7
	for j < len(s) && isSpace(s[j]) {
		j++
	}
	if j+2 < len(s) && s[j] == '\'' && s[j+2] == '\'' {
		return j + 3, s[j+1], true
	}
	return i, 0, false
}

// decodeUnicode resolves \XXXX and \+XXXXXX escapes (with esc for the
// backslash) in a U&"…" identifier.
func decodeUnicode(raw string, esc byte) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(raw); {
		if raw[i] != esc {
			b.WriteByte(raw[i])
			i++
			continue
		}
		switch {
		case next(raw, i+1) == esc:
			b.WriteByte(esc)
			i += 2
		case next(raw, i+1) == '+' && i+8 <= len(raw):
			r, err := strconv.ParseUint(raw[i+2:i+8], 16, 32)
			if err != nil {
				return "", false
			}
			b.WriteRune(rune(r))
			i += 8
		case i+5 <= len(raw):
			r, err := strconv.ParseUint(raw[i+1:i+5], 16, 32)
			if err != nil {
				return "", false
			}
			b.WriteRune(rune(r))
			i += 5
		default:
			return "", false
		}
	}
	return b.String(), true
}

// dollarTag returns the opening tag ($$ or $name$) of a dollar-quoted
// string at s, if s starts with one.
func dollarTag(s string) (string, bool) {
	j := 1
	if j < len(s) && isIdentStart(s[j]) {
		j++
		for j < len(s) && isIdentCont(s[j]) && s[j] != '$' {
			j++
		}
	}
	if j < len(s) && s[j] == '$' {
		return s[:j+1], true
	}
	return "", false
}

func next(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// foldASCII lowers ASCII letters only, as PostgreSQL folds unquoted
// identifiers in multi-byte encodings.
func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
