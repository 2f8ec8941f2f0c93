// Command meshnode is the layermesh node daemon. It reads its configuration (flags >
// LAYERMESH_* environment > YAML --config file > defaults), loads ONNX Runtime, and
// runs a node that serves models over the KServe v2 HTTP API until SIGINT or
// SIGTERM.
//
// Without cluster flags the node serves alone (--model-dir and uploads); with any of
// --bootstrap, --bootstrap-expect, --join, --cluster-secret-file or --dht it joins or
// founds a cluster and serves the models placed there. A node whose data dir holds the
// Raft state of a cluster resumes that cluster even without cluster flags (and refuses
// --model-dir there).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"github.com/layermesh/layermesh/accel/ort"
	"github.com/layermesh/layermesh/accel/ort/gpu"
	"github.com/layermesh/layermesh/node"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its outcome as an exit code: 0 clean stop, 1 failure, 2 usage.
func run(args []string, stdout, stderr io.Writer) int {
	// Signals first, so that a SIGTERM during a slow start still stops us cleanly:
	// every step below takes ctx.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := loadConfig(args, os.Getenv, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0 // the flag package has printed the usage
		}
		if errors.Is(err, errUsage) {
			fmt.Fprintln(stderr, "meshnode:", err)
			return 2
		}
		fmt.Fprintln(stderr, "meshnode:", err)
		return 1
	}
	if cfg.Version {
		fmt.Fprintln(stdout, "meshnode", node.Version)
		return 0
	}

	log := newLogger(cfg, stderr)
	slog.SetDefault(log)

	// ONNX Runtime is a dlopen and, for auto, a probe of the GPU providers: it comes
	// before the listener because the node is built around it, and it is quick.
	backend, err := ort.New(backendConfig(cfg, log))
	if err != nil {
		log.Error("onnx runtime", "err", err)
		return 1
	}
	envProcs, err := strconv.Atoi(os.Getenv("GOMAXPROCS"))
	procs, procsFrom := goProcs(cfg, backend.Provider(), runtime.GOMAXPROCS(0), err == nil && envProcs > 0)
	if procs != runtime.GOMAXPROCS(0) {
		// Only a change is set: setting GOMAXPROCS stops Go following the process's
		// CPU limit.
		runtime.GOMAXPROCS(procs)
	}
	log.Info("go scheduler", "component", "accel", "gomaxprocs", procs, "from", procsFrom, "ort_threads", cfg.Threads, "session_pool", cfg.SessionPool)
	// NVML is read once: the GPU's name and memory go into the node's metadata and
	// set the stage budget of a node whose stages run on the GPU.
	gpus, gpuErr := gpu.Probe()
	budget, budgetFrom := stageBudget(cfg, backend.Provider(), gpus)
	if gpuErr != nil {
		log.Info("no GPU memory to report", "component", "accel", "reason", gpuErr)
	} else {
		log.Info("gpu", "component", "accel", "name", gpus[0].Name, "total_bytes", gpus[0].TotalBytes, "free_bytes", gpus[0].FreeBytes, "count", len(gpus))
	}
	if budget > 0 {
		log.Info("stage memory budget", "component", "accel", "provider", backend.Provider(), "bytes", budget, "from", budgetFrom)
	}
	// Closed last: the node closes its sessions on the way out of Run, and sessions
	// must go before the runtime that made them.
	defer backend.Close()

	// New binds the HTTP listener (and writes <data-dir>/http.addr), so liveness
	// answers from the moment Run starts, before any model has loaded.
	n, err := node.New(node.Config{
		Name:              cfg.Name,
		DataDir:           cfg.DataDir,
		ModelDir:          cfg.ModelDir,
		HTTPAddr:          cfg.HTTP,
		TLSCertFile:       cfg.TLSCert,
		TLSKeyFile:        cfg.TLSKey,
		Backend:           backend,
		IntraOpThreads:    cfg.Threads,
		SessionPool:       cfg.SessionPool,
		MaxBodyBytes:      int64(cfg.MaxBody),
		MaxModelBytes:     int64(cfg.MaxModelSize),
		RequireInferToken: cfg.RequireInferToken,
		GPUs:              gpus,
		Cluster: node.ClusterConfig{
			Listen:            cfg.Listen,
			GossipPort:        cfg.GossipPort,
			Join:              cfg.Join,
			Bootstrap:         cfg.Bootstrap,
			BootstrapExpect:   cfg.BootstrapExpect,
			ClusterSecretFile: cfg.ClusterSecretFile,
			MDNS:              !cfg.NoMDNS,
			DHT:               cfg.DHT,
			MemBudgetBytes:    budget,
			SessionTTL:        cfg.SessionTTL,
			MaxBatch:          cfg.MaxBatch,
		},
		Logger: log,
	})
	if err != nil {
		log.Error("starting node", "err", err)
		return 1
	}
	log.Info("meshnode starting", "version", node.Version, "name", n.Name(), "http", n.URL(), "data_dir", cfg.DataDir)

	// Run serves until a signal, then shuts down in order (HTTP drained first, then
	// model sessions); see node.Run.
	if err := n.Run(ctx); err != nil {
		log.Error("node stopped with an error", "err", err)
		return 1
	}
	return 0
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // checked in config.check
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h)
}
