// Command app is the test program of the container images the Docker tests
// build (internal/dockertest): a tiny static HTTP server whose behaviour
// comes from its environment, so one binary gives every variant a test
// needs.
//
//	VERSION  the body of GET / (a newline is added), such as "v1"
//	MODE     healthy (default): GET /health answers 200;
//	         unhealthy: GET /health answers 500;
//	         crash: the program exits with code 3 about 300ms after start
//	ADDR     the listen address, default ":8080"
//
// With -check it is its own health check (images are FROM scratch, with no
// shell or curl): it GETs http://127.0.0.1:8080/health (the port of ADDR
// when set) and exits 0 on 200, else 1.
//
// SIGTERM and SIGINT stop it at once with code 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	check := flag.Bool("check", false, "probe http://127.0.0.1:8080/health and exit 0 when it answers 200")
	flag.Parse()
	if *check {
		port := "8080"
		if _, p, err := net.SplitHostPort(os.Getenv("ADDR")); err == nil && p != "" {
			port = p
		}
		os.Exit(probe("http://127.0.0.1:" + port + "/health"))
	}
	os.Exit(serve())
}

// probe is the health check: 0 when url answers 200, else 1.
func probe(url string) int {
	c := &http.Client{Timeout: 4 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "check:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "check: status", resp.StatusCode)
		return 1
	}
	fmt.Println("ok")
	return 0
}

func serve() int {
	version := os.Getenv("VERSION")
	mode := os.Getenv("MODE")
	if mode == "" {
		mode = "healthy"
	}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = ":8080"
	}
	switch mode {
	case "healthy", "unhealthy", "crash":
	default:
		fmt.Fprintf(os.Stderr, "app: unknown MODE %q\n", mode)
		return 2
	}
	fmt.Printf("app %s starting in mode %s on %s\n", version, mode, addr)

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, version)
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if mode == "unhealthy" {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()

	var crash <-chan time.Time
	if mode == "crash" {
		crash = time.After(300 * time.Millisecond)
	}
	select {
	case <-ctx.Done():
		fmt.Println("app: signalled, exiting")
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return 0
	case <-crash:
		fmt.Fprintln(os.Stderr, "app: crashing as MODE=crash asks")
		return 3
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "app:", err)
		return 1
	}
}
