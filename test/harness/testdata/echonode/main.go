// Command echonode is the harness's stand-in process: it takes meshnode's address flags,
// writes its bound HTTP and TCP addresses into its data dir as meshnode does, answers the
// health routes, echoes infer bodies, and counts its boots in the data dir, so that the
// harness's process control can be tested without meshnode.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	dataDir := flag.String("data-dir", "", "data folder (required)")
	name := flag.String("name", "echonode", "node name")
	httpAddr := flag.String("http", "127.0.0.1:0", "HTTP listen address")
	listen := flag.String("listen", "/ip4/127.0.0.1/tcp/0", "TCP listen multiaddr (/ip4/A/tcp/P)")
	join := flag.String("join", "", "seed address, only logged")
	bootstrap := flag.Bool("bootstrap", false, "write cluster.secret and admin.token, as a bootstrapping meshnode does")
	flag.String("cluster-secret-file", "", "ignored")
	flag.Bool("no-mdns", false, "ignored")
	flag.Int("gossip-port", 0, "ignored")
	flag.String("log-format", "text", "ignored")
	leaderFile := flag.String("leader-file", "", "GET /v1/cluster names the node in this file as leader (tests leader tracking)")
	ignoreTerm := flag.Bool("ignore-sigterm", false, "keep running on SIGTERM (tests the harness's kill after grace)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "echonode", "name", *name)
	log.Info("starting", "join", *join, "args", strings.Join(os.Args[1:], " "))
	if *bootstrap {
		for _, f := range []string{"cluster.secret", "admin.token"} {
			if err := writeAtomic(filepath.Join(*dataDir, f), fmt.Sprintf("%s-of-%s", f, *name)); err != nil {
				log.Error("bootstrap", "err", err)
				os.Exit(1)
			}
		}
	}
	if err := run(*dataDir, *name, *httpAddr, *listen, *leaderFile, *ignoreTerm, log); err != nil {
		log.Error("exit", "err", err)
		os.Exit(1)
	}
}

func run(dataDir, name, httpAddr, listen, leaderFile string, ignoreTerm bool, log *slog.Logger) error {
	if dataDir == "" {
		return errors.New("--data-dir is required")
	}
	boots, err := countBoot(dataDir)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	tcpAddr, err := multiaddrToHostPort(listen)
	if err != nil {
		return err
	}
	tl, err := net.Listen("tcp", tcpAddr)
	if err != nil {
		return err
	}
	go echoTCP(tl)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /v2/health/ready", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("GET /boots", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d %d", boots, os.Getpid())
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"no token","code":"unauthorized"}`)
			return
		}
		leader := ""
		if b, err := os.ReadFile(leaderFile); err == nil {
			leader = strings.TrimSpace(string(b))
		}
		fmt.Fprintf(w, `{"mode":"cluster","leader":%q,"self":%q,"nodes":[]}`, leader, name)
	})
	mux.HandleFunc("POST /v2/models/{name}/infer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
			w.Header().Set("Inference-Header-Content-Length", h)
		}
		_, _ = io.Copy(w, r.Body)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(hl) }()

	// Written last and renamed into place, so a reader never sees a half-written address
	// of a server that is not yet listening.
	if err := writeAtomic(filepath.Join(dataDir, "p2p.addr"), "/ip4/"+strings.Replace(tl.Addr().String(), ":", "/tcp/", 1)); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dataDir, "http.addr"), hl.Addr().String()); err != nil {
		return err
	}
	log.Info("serving", "http", hl.Addr().String(), "tcp", tl.Addr().String(), "boot", boots)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	for sig := range sigs {
		if ignoreTerm {
			log.Info("ignoring signal", "signal", sig.String())
			continue
		}
		break
	}
	log.Info("shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tl.Close()
	return srv.Shutdown(ctx)
}

// echoTCP echoes every connection byte for byte until the listener closes.
func echoTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// multiaddrToHostPort turns /ip4/A/tcp/P into A:P.
func multiaddrToHostPort(ma string) (string, error) {
	parts := strings.Split(strings.Trim(ma, "/"), "/")
	if len(parts) != 4 || parts[0] != "ip4" || parts[2] != "tcp" {
		return "", fmt.Errorf("unsupported multiaddr %q", ma)
	}
	return net.JoinHostPort(parts[1], parts[3]), nil
}

func countBoot(dir string) (int, error) {
	p := filepath.Join(dir, "boots")
	n := 0
	if b, err := os.ReadFile(p); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	n++
	return n, writeAtomic(p, strconv.Itoa(n))
}

func writeAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
