// Command fakehafe stands in for hafe in the harness's own tests: an image
// built like hafe's (static, FROM scratch) whose `serve` answers /healthz and
// /whoami over HTTP, and whose `version` prints one line. It lets the
// harness's fault operations be tested without depending on hafe's behaviour.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakehafe serve|version [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "version":
		fmt.Println("fakehafe (harness test double)")
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		listen := fs.String("listen", ":8080", "listen address")
		id := fs.String("id", "fake", "front-end id")
		fs.String("db", "", "ignored")
		fs.Parse(os.Args[2:])
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, *id) })
		srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		fmt.Println("fakehafe", *id, "listening on", *listen)
		if err := srv.ListenAndServe(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "fakehafe: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
