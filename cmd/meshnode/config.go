package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/layermesh/layermesh/accel/ort"
)

// errUsage marks a configuration mistake: main exits 2 for it.
var errUsage = errors.New("usage")

// envPrefix prefixes the environment variable of every flag: --data-dir is
// LAYERMESH_DATA_DIR.
const envPrefix = "LAYERMESH_"

// config is everything meshnode can be told, by flag, environment or config file.
type config struct {
	ConfigFile        string
	DataDir           string
	Name              string
	Listen            stringList
	HTTP              string
	GossipPort        int
	Join              stringList
	Bootstrap         bool
	BootstrapExpect   int
	ClusterSecretFile string
	MemBudget         byteSize
	GPUMemBudget      byteSize
	SessionTTL        time.Duration
	MaxBatch          int
	Accel             string
	EPLib             stringList
	EPOption          stringList
	Threads           int
	SessionPool       int
	GoProcs           int
	NoMDNS            bool
	DHT               bool
	ORTLib            string
	LogLevel          string
	LogFormat         string
	ModelDir          string
	MaxBody           byteSize
	MaxModelSize      byteSize
	RequireInferToken bool
	TLSCert           string
	TLSKey            string
	Version           bool
}

func newFlagSet(c *config, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("meshnode", flag.ContinueOnError)
	fs.SetOutput(out)
	c.MaxBody = 64 << 20
	c.MaxModelSize = 8 << 30
	fs.StringVar(&c.ConfigFile, "config", "", "YAML config file; its keys are the flag names (flags and LAYERMESH_* env win over it)")
	fs.StringVar(&c.DataDir, "data-dir", "layermesh-data", "folder for the node's state: admin token, uploaded models, identity")
	fs.StringVar(&c.Name, "name", "", "node name (default: host name)")
	fs.Var(&c.Listen, "listen", "libp2p listen multiaddr, repeatable or comma-separated (cluster mode)")
	fs.StringVar(&c.HTTP, "http", "127.0.0.1:8000", "HTTP API listen address host:port (port 0 picks one; see <data-dir>/http.addr)")
	fs.IntVar(&c.GossipPort, "gossip-port", 7946, "memberlist port (cluster mode)")
	fs.Var(&c.Join, "join", "seed peers to join, repeatable or comma-separated (cluster mode)")
	fs.BoolVar(&c.Bootstrap, "bootstrap", false, "create a new cluster (cluster mode)")
	fs.IntVar(&c.BootstrapExpect, "bootstrap-expect", 0, "wait for this many nodes before bootstrapping (cluster mode)")
	fs.StringVar(&c.ClusterSecretFile, "cluster-secret-file", "", "file holding the cluster secret (cluster mode)")
	fs.Var(&c.MemBudget, "mem-budget", "memory this node offers for model stages, e.g. 2GiB (default: half the memory available at start)")
	fs.Var(&c.GPUMemBudget, "gpu-mem-budget", "GPU memory this node offers for model stages when its provider is cuda or tensorrt, e.g. 40GiB (default: 90% of the GPU's free memory at start, as NVML reports it)")
	fs.DurationVar(&c.SessionTTL, "session-ttl", 5*time.Minute, "how long a generation session's state stays on a stage without a step (cluster mode)")
	fs.IntVar(&c.MaxBatch, "max-batch", 1, "how many generation sessions' decode steps one stage run may carry (cluster mode); above 1, concurrent sessions run together, faster but no longer bit for bit what each gives alone")
	fs.StringVar(&c.Accel, "accel", "auto", "execution provider: auto, cpu, cuda or tensorrt")
	fs.Var(&c.EPLib, "ep-lib", "execution provider plugin library, PROVIDER=PATH (cuda=/opt/ort/libonnxruntime_providers_cuda.so), repeatable; default: the plugin beside the ONNX Runtime library")
	fs.Var(&c.EPOption, "ep-option", "execution provider option, PROVIDER:KEY=VALUE (cuda:use_tf32=0), repeatable")
	fs.IntVar(&c.Threads, "threads", 0, "ONNX Runtime intra-op threads per session (default: number of cores)")
	fs.IntVar(&c.SessionPool, "session-pool", 1, "ONNX Runtime sessions per model, for concurrent requests")
	fs.IntVar(&c.GoProcs, "go-procs", 0, "threads Go's scheduler runs the node's own work on (GOMAXPROCS; ONNX Runtime's threads are apart) (default: with stages on the CPU, the cores --threads x --session-pool leave, at least 1; on a GPU, every core; the GOMAXPROCS environment variable, when set)")
	fs.BoolVar(&c.NoMDNS, "no-mdns", false, "disable mDNS discovery on the LAN (cluster mode)")
	fs.BoolVar(&c.DHT, "dht", false, "enable Kademlia DHT discovery (cluster mode)")
	fs.StringVar(&c.ORTLib, "ort-lib", "", "ONNX Runtime shared library (default: $ORT_LIB, else third_party/onnxruntime/current above the working dir or the binary)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	fs.StringVar(&c.ModelDir, "model-dir", "", "serve every *.onnx in this folder (name = file name without .onnx)")
	fs.Var(&c.MaxBody, "max-body", "largest inference request body, e.g. 64MiB")
	fs.Var(&c.MaxModelSize, "max-model-size", "largest model upload, e.g. 8GiB")
	fs.BoolVar(&c.RequireInferToken, "require-infer-token", false, "require a token for inference and model metadata")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate (PEM) for the HTTP API")
	fs.StringVar(&c.TLSKey, "tls-key", "", "TLS private key (PEM) for the HTTP API")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	return fs
}

// loadConfig applies flags, then LAYERMESH_* environment variables for flags not
// given, then the config file for what is still unset; defaults fill the rest.
func loadConfig(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{}
	fs := newFlagSet(c, out)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil {
			return
		}
		key := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(key); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%w: %s=%q: %w", errUsage, key, v, err)
			}
			set[f.Name] = true
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	if c.ConfigFile != "" {
		if err := applyFile(fs, c.ConfigFile, set); err != nil {
			return nil, err
		}
	}
	return c, c.check()
}

// applyFile sets every flag the YAML file names and nothing set before has.
func applyFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: config file: %w", errUsage, err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%w: config file %s: %w", errUsage, path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("%w: config file %s: unknown key %q (keys are the flag names)", errUsage, path, k)
		}
		if set[k] {
			continue
		}
		var vals []string
		switch v := doc[k].(type) {
		case []any:
			for _, e := range v {
				vals = append(vals, fmt.Sprint(e))
			}
		case nil:
			continue
		default:
			vals = []string{fmt.Sprint(v)}
		}
		if err := fs.Set(k, strings.Join(vals, ",")); err != nil {
			return fmt.Errorf("%w: config file %s: %s: %w", errUsage, path, k, err)
		}
	}
	return nil
}

func (c *config) check() error {
	switch c.Accel {
	case "auto", "cpu", "cuda", "tensorrt":
	default:
		return fmt.Errorf("%w: --accel %q: want auto, cpu, cuda or tensorrt", errUsage, c.Accel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("%w: --log-format %q: want text or json", errUsage, c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, c.LogLevel)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: --tls-cert and --tls-key go together", errUsage)
	}
	for _, s := range c.EPLib {
		if _, err := ort.ParsePluginLibrary(nil, s); err != nil {
			return fmt.Errorf("%w: --ep-lib: %w", errUsage, err)
		}
	}
	for _, s := range c.EPOption {
		if _, err := ort.ParseProviderOption(nil, s); err != nil {
			return fmt.Errorf("%w: --ep-option: %w", errUsage, err)
		}
	}
	if c.Threads < 0 || c.SessionPool < 0 || c.BootstrapExpect < 0 || c.MaxBatch < 0 || c.GoProcs < 0 {
		return fmt.Errorf("%w: --threads, --session-pool, --go-procs, --bootstrap-expect and --max-batch cannot be negative", errUsage)
	}
	if c.Threads == 0 {
		c.Threads = runtime.NumCPU()
	}
	return nil
}

// stringList is a flag that may be repeated or given comma-separated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// byteSize is a flag holding a byte count written as 1048576, 512MB, 64MiB or 2GiB.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(v string) error {
	n, err := parseByteSize(v)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
}

func parseByteSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)) {
			s, mult = strings.TrimSpace(s[:len(s)-len(u.suffix)]), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("bad size %q (want e.g. 512MB, 64MiB, 2GiB)", v)
	}
	return int64(f * float64(mult)), nil
}
